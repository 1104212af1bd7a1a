import pytest
import torch

from utils.config import ConfigError, parse_config, resolve_device, script_constants

DEFAULTS = {"lr": 1e-4, "epochs": 50, "dataset": "mvtec", "download": False, "classes": (),
            "target_norm": (1.0,), "layers": ("layer1", "layer2")}


def test_overrides_are_converted_to_each_constants_type():
    cfg = parse_config(DEFAULTS, ["--lr", "3e-3", "--epochs=7", "--dataset", "visa", "--classes", "bottle,screw",
                                  "--target_norm", "0.5,1,32"])
    assert cfg.lr == 3e-3 and cfg.epochs == 7 and cfg.dataset == "visa"
    assert cfg.classes == ("bottle", "screw") and cfg.target_norm == (0.5, 1.0, 32.0)
    assert cfg.layers == ("layer1", "layer2") and cfg.download is False
    assert vars(cfg).keys() == DEFAULTS.keys()


def test_float_constant_accepts_an_integer_and_bool_a_bare_flag():
    cfg = parse_config(DEFAULTS, ["--lr", "1", "--download", "--epochs", "3"])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.download is True and cfg.epochs == 3
    assert parse_config(DEFAULTS, ["--download", "false"]).download is False


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "1.5"], "--epochs: expected int, got '1.5'"),
    (["--lr", "fast"], "--lr: expected float"),
    (["--download", "maybe"], "--download: expected bool"),
    (["--target_norm", "1,x"], "--target_norm: expected a comma-separated list of float"),
    (["--epochs"], "--epochs needs a value"),
    (["epochs", "3"], "unexpected argument 'epochs'"),
])
def test_bad_values_name_the_option(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_config(DEFAULTS, argv)


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ConfigError) as error:
        parse_config(DEFAULTS, ["--learning_rate", "1"])
    assert "unknown option --learning_rate" in str(error.value)
    assert all(f"--{name}" in str(error.value) for name in DEFAULTS)


def test_script_constants_keeps_only_plain_public_values():
    namespace = {"lr": 0.1, "name": "x", "flag": True, "sizes": (1, 2), "_private": 1, "torch": torch,
                 "parse_config": parse_config, "__name__": "__main__"}
    assert script_constants(namespace) == {"lr": 0.1, "name": "x", "flag": True, "sizes": (1, 2)}


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")


def test_a_dataset_preset_replaces_defaults_but_not_what_the_command_line_gives():
    presets = {"demo": {"epochs": 5, "lr": 1e-2}}
    assert parse_config(DEFAULTS, ["--dataset", "visa"], presets).epochs == 50
    cfg = parse_config(DEFAULTS, ["--dataset", "demo", "--lr", "0.5"], presets)
    assert cfg.epochs == 5 and cfg.lr == 0.5
