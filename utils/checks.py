"""Checks of a script's configuration before any work starts: value ranges and choices
(`check_config`), a known backbone and its layers (`check_backbone`), the structured script's options that must agree
(`check_structured`) and a writable output folder (`check_out_dir`); each failure is one ConfigError line."""
import math
import os
from pathlib import Path

from models.backbones import BACKBONES, tap_channels
from utils.config import ConfigError, _format_value


def _describe(value):
    if isinstance(value, tuple):
        return ",".join(map(_format_value, value)) or '""'
    return repr(value) if isinstance(value, str) else str(value)


def _numbers(cfg, name):
    """The option's value(s) as a tuple, each checked to be a number (anything else is a programming error)."""
    value = getattr(cfg, name)
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"check_config: --{name} is not numeric ({value!r})")
    return values


def check_config(cfg, positive=(), non_negative=(), choices=None, at_most=None, below=None, non_empty=()):
    """Raise ConfigError, one line naming the option and what was expected, unless every option in
    `positive` is > 0, in `non_negative` >= 0 (both: finite too), in `at_most` ({name: bound}) <= its
    bound, in `below` < its bound, in `choices` ({name: allowed values}) one of them, and in `non_empty`
    (tuples) not empty.
    Tuple options are checked element by element, e.g. `--target_norm: expected positive numbers, got 1.0,-2.0`."""

    def fail(name, expected):
        raise ConfigError(f"--{name}: expected {expected}, got {_describe(getattr(cfg, name))}")

    for name in non_empty:
        if len(getattr(cfg, name)) == 0:
            fail(name, "at least one value")
    for names, word, ok in ((positive, "positive", lambda v: v > 0), (non_negative, "non-negative", lambda v: v >= 0)):
        for name in names:
            values = _numbers(cfg, name)
            if not all(math.isfinite(v) and ok(v) for v in values):
                noun = "int" if all(type(v) is int for v in values) else "number"
                fail(name, f"{word} {noun}s" if isinstance(getattr(cfg, name), tuple) else f"a {word} {noun}")
    for name, bound in (at_most or {}).items():
        if not all(v <= bound for v in _numbers(cfg, name)):
            fail(name, f"{'values' if isinstance(getattr(cfg, name), tuple) else 'a value'} at most {bound}")
    for name, bound in (below or {}).items():
        if not all(v < bound for v in _numbers(cfg, name)):
            fail(name, f"{'values' if isinstance(getattr(cfg, name), tuple) else 'a value'} below {bound}")
    for name, allowed in (choices or {}).items():
        value = getattr(cfg, name)
        allowed_text = ", ".join(map(str, allowed))
        if isinstance(value, tuple):
            wrong = [v for v in value if v not in allowed]
            if wrong:
                raise ConfigError(f"--{name}: expected each one of {allowed_text}, got {wrong[0]!r} "
                                  f"(in {_describe(value)})")
        elif value not in allowed:
            fail(name, f"one of {allowed_text}")


def check_out_dir(path, option="out_dir"):
    """Raise ConfigError naming --out_dir when `path` cannot be the output folder: it exists and is not
    a folder, or it (or, when it does not exist yet, its nearest existing ancestor) is not writable.
    Creates nothing. An empty path is refused: it would put the run's folder in the current folder."""
    if path is None or str(path) == "":
        raise ConfigError(f'--{option}: expected a folder, got ""')
    path = Path(path)
    try:
        _check_out_dir(path, option)
    except PermissionError as err:  # a parent folder that cannot even be searched
        raise ConfigError(f"--{option} {path}: cannot reach it ({err.strerror}: {err.filename})") from None


def _check_out_dir(path, option):
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"--{option} {path}: it is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"--{option} {path}: the folder is not writable")
        return
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"--{option} {path}: cannot create it: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"--{option} {path}: cannot create it: {ancestor} is not writable")


def check_backbone(cfg):
    """Raise ConfigError unless --backbone names one of models.backbones.BACKBONES and, where the script has
    --layers, each of its layers is a tap of that backbone (models.backbones.tap_channels)."""
    if cfg.backbone not in BACKBONES:
        raise ConfigError(f"--backbone: expected one of {', '.join(BACKBONES)}, got {cfg.backbone!r}")
    taps = tap_channels(cfg.backbone)
    if wrong := [layer for layer in getattr(cfg, "layers", ()) if layer not in taps]:
        raise ConfigError(f"--layers: expected each one of {', '.join(taps)} (the taps of {cfg.backbone}), "
                          f"got {wrong[0]!r} (in {_describe(cfg.layers)})")


def check_structured(cfg, alignments):
    """train_mvtec.py: --backbone, --lr_schedule against --lr_drop_at, and --align against --setting (a
    method's own options are checked by its registry entry, models.method_of)."""
    check_backbone(cfg)
    if "avgpool" in cfg.layers:
        raise ConfigError("--layers avgpool: the pooled vector is the semantic scripts' tap (one score per image); "
                          "structured AD needs spatial taps (layer1-layer4)")
    if cfg.lr_schedule == "warmup_cosine" and cfg.lr_drop_at:
        raise ConfigError(f"--lr_drop_at {cfg.lr_drop_at}: --lr_schedule warmup_cosine replaces the step drop; "
                          "give --lr_drop_at 0 or --lr_schedule step")
    if unknown := [a for a in cfg.align if a not in alignments]:
        raise ConfigError(f"--align: expected a comma list of {', '.join(alignments)}, got {', '.join(unknown)}")
    if cfg.setting == "separate" and any(alignments[kind].calibrates for kind in cfg.align):
        raise ConfigError("--align: alignment calibrates the classes of one unified model; "
                          "with --setting separate (one model per class) it must be none")
