"""train_mnist.py's and train_cifar10.py's option rules (utils.options): each option's check, and what a change of
it can change. The defaults are the constants at the top of each script; NoCo's own options are its registry
entry's (models.METHODS); choice lists come from the modules that implement them. The two scripts differ only in
their datasets (MNIST_RULES, CIFAR10_RULES)."""
from datasets.common import RESIZE_MODES
from utils.features import CACHE_DTYPES

MNIST_DATASETS = ("mnist", "fmnist")  # datasets.oneclass.SEMANTIC_DATASETS, split between the scripts
CIFAR10_DATASETS = ("cifar10", "cifar100", "cats_vs_dogs")
SEMANTIC_METHODS = ("noco",)  # utils.semantic runs NoCo only
SEMANTIC_OPTIMIZERS = ("adamw", "adam")  # the reference's AdamW, and Adam (utils.optim.OPTIMIZERS)

_positive, _non_negative = {"positive": True}, {"non_negative": True}
# options that never change a trained model (where files are, how fast it runs): a checkpoint is reused across
# them. The data enter the fingerprint by content (utils.semantic.one_class_fingerprint), and a model's own class
# and target norm replace --classes and --target_norm in its training configuration.
_NOT_TRAINING = ("out_dir", "resume", "checkpoint", "device", "num_workers", "cache_features", "cache_memory_gb",
                 "cache_dir", "save_checkpoints", "download", "data_path", "plots", "checkpoint_every")
_CHECKS = {
    "batch_size": _positive, "lr": _positive, "target_norm": {"positive": True, "non_empty": True},
    "image_size": _positive, "seed": {"non_negative": True, "below": 2 ** 32}, "epochs": _non_negative,
    "crop_size": _non_negative, "num_workers": _non_negative, "weight_decay": _non_negative,
    "cache_memory_gb": _non_negative, "radius_penalty": _non_negative,
    "lr_drop_at": {"non_negative": True, "at_most": 1.0}, "checkpoint_every": _non_negative,
    "method": {"choices": SEMANTIC_METHODS}, "resize": {"choices": RESIZE_MODES},
    "optimizer": {"choices": SEMANTIC_OPTIMIZERS}, "cache_dtype": {"choices": tuple(CACHE_DTYPES)},
}


def _rules(datasets):
    checks = {**_CHECKS, "dataset": {"choices": datasets}}
    return {name: {"check": checks.get(name, {}), "trains": "" if name in _NOT_TRAINING else "model"}
            for name in {*checks, *_NOT_TRAINING}}


MNIST_RULES, CIFAR10_RULES = _rules(MNIST_DATASETS), _rules(CIFAR10_DATASETS)
