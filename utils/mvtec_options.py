"""train_mvtec.py's option rules (utils.options): each option's check, and what a change of it can change. The
defaults are the constants at the top of train_mvtec.py; a method's own options are its registry entry's
(models.METHODS); choice lists come from the modules that implement them."""
from datasets.common import RESIZE_MODES
from datasets.registry import DATASETS
from models import cada
from models.revdist import ACTIVATIONS, LOSS_FORMS
from utils.features import CACHE_DTYPES
from utils.optim import OPTIMIZERS, SCHEDULES

SETTINGS = ("separate", "unified")
IMAGE_SCORES = ("max", "top_mean", "pooled_max")  # utils.maps.image_scores
BLUR_KERNELS = (0, 5)  # utils.maps: scipy's gaussian_filter | ReContrast's 5 x 5

_positive, _non_negative = {"positive": True}, {"non_negative": True}
# options that never change a trained model (how it is evaluated, how fast it trains, where files are): a checkpoint
# is reused across them. The data enter the fingerprint by content (utils.training.data_fingerprint), and a model's
# own classes and target norm replace --classes and --target_norm in its training configuration.
_NOT_TRAINING = ("out_dir", "resume", "checkpoint", "device", "num_workers", "image_score", "top_fraction",
                 "blur_sigma", "blur_kernel", "cache_features", "cache_memory_gb", "cache_dir", "save_checkpoints",
                 "download", "data_path", "plots", "checkpoint_every", "recompute", "keep_freed_memory",
                 "false_alarm_rate", "eval_size")
# options of the alignment heads only: the base model is reused across them
_HEAD_ONLY = ("align", "align_input", "cada_iters", "cada_lr", "cada_momentum", "cada_weight_decay", "cada_beta",
              "cada_batch_size", "cada_convs", "cada_linears", "cada_dropout", "cada_dropout_at",
              "cada_pool", "cada_standardise", "cluster_k")
_CHECKS = {
    "batch_size": _positive, "lr": _positive, "encoder_lr": _positive, "target_norm": {"positive": True,
                                                                                        "non_empty": True},
    "image_size": _positive, "top_fraction": {"positive": True, "at_most": 1.0}, "cada_lr": _positive,
    "cada_beta": _positive, "cada_batch_size": _positive, "cada_linears": _positive,
    "seed": {"non_negative": True, "below": 2 ** 32}, "epochs": _non_negative, "iters": _non_negative,
    "crop_size": _non_negative, "num_workers": _non_negative, "weight_decay": _non_negative,
    "blur_sigma": _non_negative, "cache_memory_gb": _non_negative, "lr_drop_at": {"non_negative": True,
                                                                                  "at_most": 1.0},
    "hm_factor": _non_negative, "blur_kernel": {"non_negative": True, "choices": BLUR_KERNELS},
    "cada_iters": _non_negative, "cada_momentum": _non_negative, "cada_weight_decay": _non_negative,
    "checkpoint_every": _non_negative, "cada_convs": _non_negative, "cada_dropout": {"non_negative": True,
                                                                                     "below": 1.0},
    "val_fraction": {"non_negative": True, "below": 1.0}, "false_alarm_rate": {"non_negative": True, "below": 1.0},
    "warmup_iters": _non_negative, "final_lr": _non_negative, "bottleneck_dropout": {"non_negative": True,
                                                                                     "below": 1.0},
    "eval_size": _non_negative,
    "dataset": {"choices": tuple(DATASETS)}, "setting": {"choices": SETTINGS},
    "resize": {"choices": RESIZE_MODES[::-1]},
    "optimizer": {"choices": tuple(name for name in OPTIMIZERS if name != "sgd")},  # SGD: the heads' (--cada_lr)
    "lr_schedule": {"choices": SCHEDULES}, "image_score": {"choices": IMAGE_SCORES},
    "cache_dtype": {"choices": tuple(CACHE_DTYPES)}, "loss_form": {"choices": LOSS_FORMS},
    "decoder_activation": {"choices": tuple(ACTIVATIONS)}, "align_input": {"choices": ("bottleneck", "encoder")},
    "cada_dropout_at": {"choices": cada.DROPOUT_PLACES}, "cada_pool": {"choices": cada.POOLS},
    "cluster_k": {"choices": cada.CLUSTER_CRITERIA},
    "align": {"non_empty": True}, "layers": {"non_empty": True},
}

# options read in some configurations only (utils.options.not_in_recipe: out of the fingerprint elsewhere). With the
# data and --batch_size, which stay in, the setting's length is the number of optimiser steps; features that are
# not cached are float32, as a float32 cache is; --amp and --channels_last enter as the script records them, their
# effective values (false on a CPU).
def _warmup_cosine(config, method):
    return config["lr_schedule"] == "warmup_cosine"


_USED_WHEN = {
    "epochs": lambda config, method: config["setting"] == "separate",
    "iters": lambda config, method: config["setting"] == "unified",
    "warmup_iters": _warmup_cosine, "final_lr": _warmup_cosine,
    "lr_drop_gamma": lambda config, method: not _warmup_cosine(config, method) and bool(config["lr_drop_at"]),
    "cache_dtype": lambda config, method: (method.trains_on == "features" and config["cache_features"]
                                           and config["cache_dtype"] != "float32"),
}
_ADDED = ("cada_pool", "cada_standardise", "cluster_k")  # checkpoints saved before these options ran their defaults
MVTEC_RULES = {name: {"check": _CHECKS.get(name, {}), "trains": "" if name in _NOT_TRAINING else
                      "head" if name in _HEAD_ONLY else "model", "used_when": _USED_WHEN.get(name),
                      "added": name in _ADDED}
               for name in {*_CHECKS, *_NOT_TRAINING, *_HEAD_ONLY, *_USED_WHEN, *_ADDED}}
