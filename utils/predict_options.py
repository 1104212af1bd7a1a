"""predict.py's option rules (utils.options): each option's check, and the options that exclude each other. The
defaults are the constants at the top of predict.py. predict.py trains nothing: no option of it changes a model."""
from utils.config import ConfigError

EXPORT_FORMATS = ("", "onnx")  # "": score images; onnx: utils.inference.export_onnx

_CHECKS = {"batch_size": {"positive": True}, "false_alarm_rate": {"positive": True, "below": 1.0},
           "num_workers": {"non_negative": True}, "export": {"choices": EXPORT_FORMATS}}


def predict_rules(names):
    """The rules of predict.py's options `names`: their checks; none trains a model."""
    if unknown := sorted(set(_CHECKS) - set(names)):
        raise KeyError(f"checks for options predict.py does not have: {unknown}")
    return {name: {"check": _CHECKS.get(name, {}), "trains": ""} for name in names}


# (first, second, why): the two options are refused together
EXCLUSIVE = (("export", "images", "writes the model and scores no image: drop the images"),
             ("export", "thresholds", "writes the model, which holds no threshold"),
             ("export", "calibrate", "and --calibrate are two calls"),
             ("calibrate", "images", "scores normal images for thresholds only: score images in another call, "
                                     "with --thresholds <the file it writes>"),
             ("calibrate", "thresholds", "writes thresholds; it reads none"),
             ("calibrate", "maps", "writes thresholds and no map"))


def check_combinations(cfg, given):
    """One ConfigError line for options that cannot go together: no --run, two of EXCLUSIVE, --false_alarm_rate
    without --calibrate."""
    if not cfg.run:
        raise ConfigError("--run: give the run folder of a train_mvtec.py run (results/<run>)")
    for first, second, why in EXCLUSIVE:
        if getattr(cfg, first) and getattr(cfg, second):
            raise ConfigError(f"--{first} with --{second}: --{first} {why}")
    if "false_alarm_rate" in given and not cfg.calibrate:
        raise ConfigError("--false_alarm_rate: sets --calibrate's thresholds (the run's were set at its own rate); "
                          "give it with --calibrate <normal images>")
