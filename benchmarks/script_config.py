"""train_mvtec.py's configuration for a command line, from its option table and presets (imported: the script's
work runs only as __main__).

    from script_config import train_config
    cfg = train_config(["--method", "dinomaly"])   # cfg.vit "base", cfg.crop_size 392, cfg.optimizer "stable_adamw"

utils.config.parse_config applies the command line and the presets exactly as the script does, so a benchmark
builds its model through the registry (models.METHODS) with the settings a run of the script would have.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import train_mvtec  # noqa: E402
from utils.config import parse_config  # noqa: E402


def script_defaults():
    """train_mvtec.py's option defaults (the constants at its top), by name."""
    return {name: option.default for name, option in train_mvtec.OPTIONS.items()}


def train_config(argv):
    """The configuration (a namespace, as the script's cfg) train_mvtec.py runs with for this command line:
    its constants, the options of `argv` (e.g. ["--method", "revdist", "--backbone", "resnet18"]), then its
    presets for the options the command line does not give."""
    return parse_config(script_defaults(), [str(arg) for arg in argv], presets=train_mvtec.PRESETS)
