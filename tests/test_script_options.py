"""The semantic scripts' and predict.py's option tables (utils.options, utils.semantic_options,
utils.predict_options): importing a script runs its constants and table only; the table's defaults are the
constants, its checks refuse a bad value in one line, and the semantic fingerprint leaves out exactly the options
that never change a model and another method's options."""
import subprocess
import sys

import pytest

from datasets.oneclass import SEMANTIC_DATASETS
from models import METHODS
from tests.test_scripts import REPO, run_script
from utils.config import ConfigError, script_constants
from utils.options import check_options, not_training
from utils.semantic import ignored_options
from utils.semantic_options import CIFAR10_DATASETS, MNIST_DATASETS

SCRIPTS = ("train_mnist", "train_cifar10", "predict")
# the semantic scripts' literal set before their table (utils/semantic.py's NOT_TRAINING)
OLD_NOT_TRAINING = {"out_dir", "resume", "checkpoint", "device", "num_workers", "cache_features", "cache_memory_gb",
                    "cache_dir", "save_checkpoints", "download", "data_path", "plots", "checkpoint_every"}
# what the fingerprint of a default semantic model hashed before the table: a checkpoint trained then is reused
OLD_HASHED = ["adam_eps", "amsgrad", "backbone", "batch_size", "betas", "cache_dtype", "classes", "crop_size",
              "dataset", "encoder_taps", "epochs", "image_size", "layers", "lr", "lr_drop_at", "lr_drop_gamma",
              "method", "nu", "optimizer", "radius_init", "radius_penalty", "resize", "seed", "target", "target_norm",
              "target_p", "training_data", "weight_decay", "weights"]


def test_importing_a_script_runs_nothing_and_gives_its_table():
    """Imported with a command line that would print --help and exit were the script run: it prints nothing."""
    code = ("import sys; sys.argv = ['script.py', '--help']; import train_mnist, train_cifar10, predict; "
            "print('imported', *(len(m.OPTIONS) for m in (train_mnist, train_cifar10, predict)))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "imported 41 41 14\n", done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_tables_defaults_are_the_constants(script):
    module = __import__(script)
    assert {name: option.default for name, option in module.OPTIONS.items()} == script_constants(vars(module))


def test_each_semantic_script_has_its_own_datasets():
    import train_cifar10
    import train_mnist
    assert train_mnist.OPTIONS["dataset"].check == {"choices": MNIST_DATASETS}
    assert train_cifar10.OPTIONS["dataset"].check == {"choices": CIFAR10_DATASETS}
    assert sorted(MNIST_DATASETS + CIFAR10_DATASETS) == sorted(SEMANTIC_DATASETS)


@pytest.mark.parametrize("script, change, message", [
    ("train_mnist", {"lr": 0.0}, "--lr: expected a positive number, got 0.0"),
    ("train_cifar10", {"dataset": "mnist"}, "--dataset: expected one of cifar10, cifar100, cats_vs_dogs, got 'mnist'"),
    ("train_mnist", {"radius_penalty": -1.0}, "--radius_penalty: expected a non-negative number, got -1.0"),
    ("train_mnist", {"optimizer": "stable_adamw"}, "--optimizer: expected one of adamw, adam, got 'stable_adamw'"),
    ("predict", {"false_alarm_rate": 1.0}, "--false_alarm_rate: expected a value below 1.0, got 1.0"),
    ("predict", {"export": "pdf"}, "--export: expected one of , onnx, got 'pdf'"),
])
def test_the_table_checks_each_option(script, change, message):
    from types import SimpleNamespace
    options = __import__(script).OPTIONS
    check_options(SimpleNamespace(**{name: option.default for name, option in options.items()}), options)
    with pytest.raises(ConfigError) as refused:
        check_options(SimpleNamespace(**{**{name: option.default for name, option in options.items()}, **change}),
                      options)
    assert str(refused.value) == message


@pytest.mark.parametrize("script, args, message", [
    ("train_mnist.py", ["--lr", "0"], "--lr: expected a positive number, got 0.0"),
    ("predict.py", ["--run", "r", "--batch_size", "0"], "--batch_size: expected a positive int, got 0"),
])
def test_a_bad_value_is_refused_in_one_line_through_the_command_line(script, args, message, tmp_path):
    done = run_script(script, *args, "--out_dir", str(tmp_path / "out"), cwd=tmp_path, expect_ok=False)
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        f"error: {message}", "(set TRACEBACK=1 for the traceback)"], done.stderr[-2000:]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("script", ["train_mnist", "train_cifar10"])
def test_the_semantic_fingerprint_leaves_out_what_never_trains_and_other_methods_options(script):
    options = __import__(script).OPTIONS
    config = {**{name: option.default for name, option in options.items()}, "training_data": "hash"}
    assert not_training(options) == OLD_NOT_TRAINING
    ignored = ignored_options(options, METHODS["noco"])(config)
    assert ignored == OLD_NOT_TRAINING  # NoCo reads every other option of the table
    assert sorted(set(config) - ignored) == OLD_HASHED
    # for another method, NoCo's own options of the table would be left out too (the owner column)
    noco_own = {name for name in options if name in METHODS["noco"].own_options}
    assert noco_own == {"target", "target_norm", "target_p", "nu", "radius_init", "layers", "encoder_taps"}
    assert ignored_options(options, METHODS["revdist"])(config) == OLD_NOT_TRAINING | noco_own


def test_no_predict_option_trains_a_model():
    import predict
    assert not_training(predict.OPTIONS) == set(predict.OPTIONS)
