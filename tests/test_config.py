import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch._utils import ExceptionWrapper

from utils import checks, config
from utils.checks import check_config, check_out_dir
from utils.config import ConfigError, config_help, parse_config, resolve_device, script_constants

REPO = Path(__file__).resolve().parents[1]
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
    (["--epochs", "3", "--lr", "1", "--epochs=4"], "--epochs is given twice (3 and 4): give it once"),
])
def test_bad_values_name_the_option(argv, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(DEFAULTS, argv)


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ConfigError) as error:
        parse_config(DEFAULTS, ["--learning_rate", "1"])
    assert "unknown option --learning_rate" in str(error.value)
    assert all(f"--{name}" in str(error.value) for name in DEFAULTS)


def test_script_constants_keeps_only_plain_public_values():
    namespace = {"lr": 0.1, "name": "x", "flag": True, "sizes": (1, 2), "_private": 1, "torch": torch,
                 "parse_config": parse_config, "__name__": "__main__", "UNIAD_LAYERS": ("features.1",), "EPS": 1e-6}
    assert script_constants(namespace) == {"lr": 0.1, "name": "x", "flag": True, "sizes": (1, 2)}


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")


# presets ----------------------------------------------------------------------------------------
METHOD_DEFAULTS = {"method": "noco", "setting": "separate", "dataset": "mvtec", "epochs": 50, "lr": 1e-4,
                   "batch_size": 16, "betas": (0.9, 0.999)}
PRESETS = [
    ({"dataset": "demo"}, {"epochs": 5, "lr": 1}),                       # int for a float constant: 1.0
    ({"method": "revdist"}, {"setting": "unified"}),
    ({"method": "revdist", "setting": "separate"}, {"epochs": 200, "lr": 5e-3, "betas": [0.5, 0.999]}),
    ({"setting": "unified"}, {"epochs": 7}),                              # sees the setting a preset set
    ({"dataset": "demo"}, {"batch_size": 4, "epochs": 3}),                # a later preset wins
]


@pytest.mark.parametrize("argv, changed", [
    ([], {}),
    (["--dataset", "demo"], {"dataset": "demo", "epochs": 3, "lr": 1.0, "batch_size": 4}),
    (["--method", "revdist"], {"method": "revdist", "setting": "unified", "epochs": 7}),
    (["--method", "revdist", "--setting", "separate"],
     {"method": "revdist", "setting": "separate", "epochs": 200, "lr": 5e-3, "betas": (0.5, 0.999)}),
    (["--method", "revdist", "--epochs", "9", "--lr=0.5"],
     {"method": "revdist", "setting": "unified", "epochs": 9, "lr": 0.5}),
    (["--dataset", "demo", "--setting", "unified", "--batch_size", "2"],
     {"dataset": "demo", "setting": "unified", "epochs": 3, "lr": 1.0, "batch_size": 2}),
])
def test_presets_apply_in_order_and_never_replace_the_command_line(argv, changed):
    cfg, given = parse_config(METHOD_DEFAULTS, argv, PRESETS, return_given=True)
    assert vars(cfg) == {**METHOD_DEFAULTS, **changed}
    assert all(type(v) is type(METHOD_DEFAULTS[k]) for k, v in vars(cfg).items())  # 1 -> 1.0, list -> tuple
    assert given == {token[2:].partition("=")[0] for token in argv if token.startswith("--")}
    assert vars(parse_config(METHOD_DEFAULTS, argv, PRESETS)) == vars(cfg)  # return_given only adds `given`


def test_a_preset_with_an_unknown_option_or_a_wrong_type_is_a_programming_error():
    with pytest.raises(KeyError, match="unknown option 'epoch'"):  # raised even where the preset does not apply
        parse_config(METHOD_DEFAULTS, [], [({"dataset": "visa"}, {"epoch": 3})])
    with pytest.raises(KeyError, match="unknown option 'task'"):
        parse_config(METHOD_DEFAULTS, [], [({"task": "x"}, {"epochs": 3})])
    for values in ({"epochs": 2.5}, {"batch_size": True}, {"lr": "fast"}, {"betas": (0.9, "x")}):
        with pytest.raises(TypeError, match=f"preset --dataset visa: {next(iter(values))} = "):
            parse_config(METHOD_DEFAULTS, [], [({"dataset": "visa"}, values)])


# --help -----------------------------------------------------------------------------------------
SCRIPT = '''"""Trains the tiny thing on
the small data set, quickly.

More detail that --help leaves out.
"""
from utils.config import parse_config, script_constants

lr = 3e-4                    # the learning rate of the
epochs = 12                  # passes over the training images (0 = untrained)
dataset = "mvtec"            # mvtec | demo
layers = ("layer1", "layer2")
download = False             # fetch the public archive and verify its checksum
PRESETS = [
    ({"dataset": "demo"}, {"epochs": 2, "layers": ("layer3",)}),  # a quick first run
]
cfg = parse_config(script_constants(globals()), presets=PRESETS, script=__file__)
print("ran with", cfg.epochs)
'''


def _run(script_path, *args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TRACEBACK", None)
    return subprocess.run([sys.executable, str(script_path), *args], capture_output=True, text=True, env=env,
                          cwd=script_path.parent, timeout=60, **kwargs)


def test_help_prints_usage_purpose_defaults_comments_and_presets_to_stdout(tmp_path):
    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT.replace("the learning rate of the", "the learning rate of the " + "very " * 30 + "end"))
    done = _run(script, "--epochs", "3", "--help")
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == "usage: python train_tiny.py [--name value ...]"
    assert "Trains the tiny thing on the small data set, quickly." in done.stdout
    assert "More detail" not in done.stdout and "ran with" not in done.stdout
    assert max(map(len, lines)) <= 100
    entry = next(i for i, line in enumerate(lines) if line.startswith("  --epochs "))
    assert lines[entry].split() == "--epochs 12 passes over the training images (0 = untrained)".split()
    column = lines[entry].index("passes")
    lr = next(i for i, line in enumerate(lines) if line.startswith("  --lr "))
    assert lines[lr].startswith("  --lr 0.0003") and lines[lr].index("the learning") == column
    assert lines[lr + 1].startswith(" " * column + "very") and lines[lr + 2].rstrip().endswith("end")  # wrapped
    assert "  --dataset mvtec" in done.stdout and "mvtec | demo" in done.stdout
    assert "  --layers layer1,layer2\n" in done.stdout and "  --download false " in done.stdout
    assert "  if --dataset demo:  # a quick first run\n      --epochs 2 --layers layer3\n" in done.stdout
    assert _run(script, "-h").stdout == done.stdout


def test_help_without_a_script_lists_the_options():
    text = config_help(METHOD_DEFAULTS, PRESETS)
    assert text.startswith("usage: python ")
    assert "  --betas 0.9,0.999\n" in text and "  --lr 0.0001\n" in text
    assert "  if --method revdist --setting separate:\n      --epochs 200 --lr 0.005 --betas 0.5,0.999\n" in text
    assert "  if --dataset demo:\n      --epochs 5 --lr 1.0\n" in text


# checks before any work ------------------------------------------------------------------------
CHECKED = {"epochs": 50, "lr": 1e-4, "batch_size": 16, "setting": "separate", "target_norm": (1.0, 2.0),
           "layers": ("layer1",), "top_fraction": 0.01, "crop_size": 224}
RULES = dict(positive=("lr", "batch_size", "target_norm", "top_fraction"), non_negative=("epochs", "crop_size"),
             choices={"setting": ("separate", "unified"), "layers": ("layer1", "layer2", "layer3")},
             at_most={"top_fraction": 1}, non_empty=("target_norm",))


@pytest.mark.parametrize("change, message", [
    ({"epochs": -3}, "--epochs: expected a non-negative int, got -3"),
    ({"lr": 0.0}, "--lr: expected a positive number, got 0.0"),
    ({"lr": float("nan")}, "--lr: expected a positive number, got nan"),
    ({"lr": float("inf")}, "--lr: expected a positive number, got inf"),
    ({"batch_size": 0}, "--batch_size: expected a positive int, got 0"),
    ({"setting": "both"}, "--setting: expected one of separate, unified, got 'both'"),
    ({"target_norm": (1.0, -2.0)}, "--target_norm: expected positive numbers, got 1.0,-2.0"),
    ({"target_norm": ()}, '--target_norm: expected at least one value, got ""'),
    ({"layers": ("layer1", "layer9")},
     "--layers: expected each one of layer1, layer2, layer3, got 'layer9' (in layer1,layer9)"),
    ({"top_fraction": 2.0}, "--top_fraction: expected a value at most 1, got 2.0"),
    ({"crop_size": -1}, "--crop_size: expected a non-negative int, got -1"),
])
def test_check_config_names_the_option_and_what_was_expected(change, message):
    check_config(parse_config(CHECKED, []), **RULES)  # the defaults pass
    check_config(parse_config(CHECKED, ["--epochs", "0", "--crop_size", "0"]), **RULES)  # zero is non-negative
    with pytest.raises(ConfigError) as error:
        check_config(parse_config(CHECKED, []).__class__(**{**CHECKED, **change}), **RULES)
    assert str(error.value) == message


def test_check_config_reads_command_line_values():
    cfg = parse_config(CHECKED, ["--target_norm", "1,-2"])
    with pytest.raises(ConfigError, match=r"^--target_norm: expected positive numbers, got 1.0,-2.0$"):
        check_config(cfg, **RULES)


def test_check_out_dir_refuses_a_file_or_an_unwritable_folder_and_creates_nothing(tmp_path, monkeypatch):
    check_out_dir(tmp_path)
    check_out_dir(tmp_path / "new" / "deeper")
    assert list(tmp_path.iterdir()) == []
    a_file = tmp_path / "results"
    a_file.write_text("")
    with pytest.raises(ConfigError, match=r"^--out_dir .*results: it is a file, not a folder$"):
        check_out_dir(a_file)
    with pytest.raises(ConfigError, match=r"^--out_dir .*results/run: cannot create it: .*results is a file"):
        check_out_dir(a_file / "run")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(checks.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    with pytest.raises(ConfigError, match=r"^--out_dir .*locked: the folder is not writable$"):
        check_out_dir(locked)
    with pytest.raises(ConfigError, match=rf"^--out_dir .*locked/a/b: cannot create it: {locked} is not writable$"):
        check_out_dir(locked / "a" / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked", "results"] and not any(locked.iterdir())


def test_check_out_dir_refuses_an_empty_path_which_would_be_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for empty in ("", None):
        with pytest.raises(ConfigError) as error:
            check_out_dir(empty)
        assert str(error.value) == '--out_dir: expected a folder, got ""'
    check_out_dir(".")  # the current folder, named, is a folder like any other
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backbone, layers, message", [
    ("wide_resnet50_2", ("layer1", "layer9"), "--layers: expected each one of layer1, layer2, layer3, layer4, avgpool "
                                              "(the taps of wide_resnet50_2), got 'layer9' (in layer1,layer9)"),
    ("resnet18", ("layer0",), "--layers: expected each one of layer1, layer2, layer3, layer4, avgpool "
                              "(the taps of resnet18), got 'layer0' (in layer0)"),
    ("efficientnet_lite0", ("layer0", "layer5"), "--layers: expected each one of layer0, layer1, layer2, layer3, "
                                                 "layer4, avgpool (the taps of efficientnet_lite0), got 'layer5' "
                                                 "(in layer0,layer5)"),
])
def test_check_backbone_refuses_a_layer_the_backbone_has_not(backbone, layers, message):
    from types import SimpleNamespace
    checks.check_backbone(SimpleNamespace(backbone=backbone, layers=("layer1", "avgpool")))
    checks.check_backbone(SimpleNamespace(backbone=backbone))  # a script without --layers
    with pytest.raises(ConfigError) as error:
        checks.check_backbone(SimpleNamespace(backbone=backbone, layers=layers))
    assert str(error.value) == message


def test_run_metadata_records_the_intra_op_threads_and_omp_num_threads(monkeypatch):
    from utils.results import run_metadata
    threads = torch.get_num_threads()
    try:
        for count, environment in ((1, "1"), (2, None)):
            torch.set_num_threads(count)
            if environment is None:
                monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
            else:
                monkeypatch.setenv("OMP_NUM_THREADS", environment)
            meta = run_metadata("cpu", started=0.0)
            assert (meta["torch_num_threads"], meta["OMP_NUM_THREADS"]) == (count, environment)
    finally:
        torch.set_num_threads(threads)


# one line for bad input ------------------------------------------------------------------------
def _wrapped(error):
    """The exception a DataLoader worker's `error` becomes in the main process."""
    try:
        raise error
    except Exception:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    try:
        wrapper.reraise()
    except Exception as reraised:
        return reraised


def test_one_line_message_keeps_the_original_message_of_a_worker_error():
    message = config._one_line_message
    assert message(ValueError, ValueError("no images in x/\nlook in y/")) == "no images in x/ look in y/"
    assert message(ConfigError, ConfigError("--lr: expected float")) == "--lr: expected float"
    assert message(RuntimeError, RuntimeError("CUDA out of memory")) is None
    assert message(KeyError, KeyError("k")) is None
    error = _wrapped(ValueError("cannot read image x.png: truncated"))
    assert type(error) is ValueError and "Original Traceback" in str(error)
    assert message(type(error), error) == "cannot read image x.png: truncated"
    error = _wrapped(FileNotFoundError(2, "No such file or directory", "x.png"))
    assert type(error) is FileNotFoundError
    assert message(type(error), error) == "[Errno 2] No such file or directory: 'x.png'"
    error = _wrapped(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"))  # cannot be rebuilt
    assert type(error) is RuntimeError
    assert message(type(error), error) == "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"
    error = _wrapped(ZeroDivisionError("division by zero"))
    assert message(type(error), error) is None  # a bug in a worker keeps its traceback
    error = _wrapped(ValueError())
    assert message(type(error), error) == "ValueError"


WORKER_SCRIPT = '''
import torch
from torch.utils.data import DataLoader, Dataset
from utils.config import parse_config

cfg = parse_config({"workers": 1})


class Broken(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        raise ValueError(f"cannot read image x{i}.png: truncated file")


for batch in DataLoader(Broken(), num_workers=cfg.workers):
    pass
'''


def test_an_error_raised_in_a_dataloader_worker_is_one_line(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text(WORKER_SCRIPT)
    done = _run(script)
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["error: cannot read image x0.png: truncated file",
                                        "(set TRACEBACK=1 for the traceback)"]


INTERRUPT_SCRIPT = '''
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from utils.config import parse_config

cfg = parse_config({"marker": "", "workers": 1})


class Slow(Dataset):
    def __len__(self):
        return 100000

    def __getitem__(self, i):
        time.sleep(0.01)
        return i


try:
    for i, batch in enumerate(tqdm(DataLoader(Slow(), num_workers=cfg.workers), leave=False, mininterval=0)):
        if i == 3:
            print("ready", flush=True)
        time.sleep(0.01)
finally:
    Path(cfg.marker).write_text("cleaned up")
'''


def test_ctrl_c_prints_interrupted_once_runs_finally_and_exits_130(tmp_path):
    script, marker = tmp_path / "slow.py", tmp_path / "marker"
    script.write_text(INTERRUPT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, str(script), "--marker", str(marker)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env, cwd=tmp_path, start_new_session=True)
    try:
        assert process.stdout.readline() == b"ready\n"
        time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C does: the script and its DataLoader worker
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    stderr = stderr.decode()
    assert "\r" in stderr and stderr.endswith("\ninterrupted\n")  # after the progress bar, on a line of its own
    assert stderr.count("interrupted") == 1 and "Traceback" not in stderr  # once (not from the worker)
    assert marker.read_text() == "cleaned up"


def test_parse_config_with_argv_installs_no_handlers():
    hook, handler = sys.excepthook, signal.getsignal(signal.SIGINT)
    parse_config(DEFAULTS, [])
    assert sys.excepthook is hook and signal.getsignal(signal.SIGINT) is handler


# train_mvtec.py's option table (utils.options, utils.mvtec_options) -------------------------------------------
OLD_NOT_TRAINING = {"out_dir", "resume", "checkpoint", "device", "num_workers", "image_score", "top_fraction",
                    "blur_sigma", "blur_kernel", "cache_features", "cache_memory_gb", "cache_dir", "save_checkpoints",
                    "download", "data_path", "plots", "checkpoint_every", "recompute", "keep_freed_memory",
                    "false_alarm_rate", "eval_size"}  # the script's literal sets before the table
OLD_HEAD_ONLY = {"align", "align_input", "cada_iters", "cada_lr", "cada_momentum", "cada_weight_decay", "cada_beta",
                 "cada_batch_size", "cada_convs", "cada_linears", "cada_dropout", "cada_dropout_at"}


def test_the_option_table_gives_what_the_scripts_literal_sets_said():
    import train_mvtec
    from models import METHODS
    from utils.options import added_options, head_only, not_training
    added = set(added_options(train_mvtec.OPTIONS))  # options added since (all of the heads)
    assert not_training(train_mvtec.OPTIONS) == OLD_NOT_TRAINING
    assert head_only(train_mvtec.OPTIONS) == OLD_HEAD_ONLY | added and not added & OLD_HEAD_ONLY
    for name, option in train_mvtec.OPTIONS.items():  # the owner column is the registry's
        assert set(option.owners) == {m.name for m in METHODS.values() if name in m.own_options}, name


@pytest.mark.parametrize("change, message", [
    ({"batch_size": 0}, "--batch_size: expected a positive int, got 0"),
    ({"top_fraction": 1.5}, "--top_fraction: expected a value at most 1.0, got 1.5"),
    ({"seed": 2 ** 32}, "--seed: expected a value below 4294967296, got 4294967296"),
    ({"lr_drop_at": -0.1}, "--lr_drop_at: expected a non-negative number, got -0.1"),
    ({"target_norm": ()}, '--target_norm: expected at least one value, got ""'),
    ({"optimizer": "sgd"}, "--optimizer: expected one of adam, adamw, stable_adamw, got 'sgd'"),
    ({"resize": "nearest"}, "--resize: expected one of cv2, pil, got 'nearest'"),
    ({"cache_dtype": "int8"}, "--cache_dtype: expected one of float32, float16, bfloat16, got 'int8'"),
    ({"blur_kernel": 3}, "--blur_kernel: expected one of 0, 5, got 3"),
    ({"val_fraction": 1.0}, "--val_fraction: expected a value below 1.0, got 1.0"),
])
def test_the_table_checks_each_option(change, message):
    import train_mvtec
    from utils.options import check_options
    cfg = SimpleNamespace(**{**{n: o.default for n, o in train_mvtec.OPTIONS.items()}, **change})
    with pytest.raises(ConfigError) as error:
        check_options(cfg, train_mvtec.OPTIONS)
    assert str(error.value) == message
    check_options(SimpleNamespace(**{n: o.default for n, o in train_mvtec.OPTIONS.items()}), train_mvtec.OPTIONS)


def test_a_rule_for_an_option_the_script_lacks_is_a_programming_error():
    from utils.options import option_table
    with pytest.raises(KeyError, match="lrr"):
        option_table({"lr": 0.1}, {"lrr": {"check": {"positive": True}}})
    with pytest.raises(ValueError, match="unknown checks"):
        option_table({"lr": 0.1}, {"lr": {"check": {"postive": True}}})
    assert option_table({"lr": 0.1}, {"lr": {"trains": ""}})["lr"].trains == ""


def test_a_presets_note_is_shown_by_help_and_changes_nothing(capsys):
    presets = [({"lr": 0.1}, {"epochs": 3}, "the paper's schedule"), ({"epochs": 3}, {"lr": 0.5})]
    assert vars(parse_config({"lr": 0.1, "epochs": 1}, [], presets=presets)) == {"lr": 0.5, "epochs": 3}
    with pytest.raises(SystemExit):
        parse_config({"lr": 0.1, "epochs": 1}, ["--help"], presets=presets)
    shown = capsys.readouterr().out
    assert "  if --lr 0.1:  # the paper's schedule\n      --epochs 3\n  if --epochs 3:\n      --lr 0.5" in shown
