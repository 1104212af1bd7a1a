"""Command-line overrides for the constants at the top of each train_*.py script.

A script gathers its constants into a dict and calls `parse_config(defaults)`; every constant
can then be overridden as `--name value` or `--name=value`. Values are checked against the
constant's type: bool takes true/false/1/0/yes/no (a bare `--flag` means true), tuples take a
comma-separated list of their element type. Unknown names are refused with the valid list.

Scripts that call `parse_config` report bad input (a ConfigError, ValueError, FileNotFoundError or
ConnectionError: unknown option, missing dataset, wrong layout, unreadable image, failed download)
as one line on stderr
instead of a traceback; set TRACEBACK=1 in the environment to see the traceback.
"""
import os
import random
import sys
from types import SimpleNamespace

import numpy as np
import torch

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class ConfigError(ValueError):
    pass


def _convert(name, text, default):
    kind = type(default)
    try:
        if kind is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError
        if kind is tuple:
            element = type(default[0]) if default else str
            return tuple(_convert(name, item.strip(), element()) for item in text.split(",") if item.strip())
        return kind(text)
    except ValueError:
        expected = f"a comma-separated list of {type(default[0]).__name__ if default else 'str'}" \
            if kind is tuple else kind.__name__
        raise ConfigError(f"--{name}: expected {expected}, got {text!r}") from None


def _one_line_errors(kind, error, traceback):
    if issubclass(kind, (ConfigError, ValueError, FileNotFoundError, ConnectionError)) and not os.environ.get("TRACEBACK"):
        print(f"error: {error}\n(set TRACEBACK=1 for the traceback)", file=sys.stderr)
    else:
        sys.__excepthook__(kind, error, traceback)


def parse_config(defaults, argv=None, dataset_presets=None):
    """Return `defaults` with the `--name value` overrides of argv applied, as a namespace
    (cfg.lr, ...; `vars(cfg)` is the plain dict saved in config.json).

    `dataset_presets` maps a value of `dataset` to constants that replace the defaults for it,
    except those given on the command line (e.g. a small, quick configuration for the demo set)."""
    if argv is None:  # called by a script: bad input ends in one line, not a traceback
        sys.excepthook = _one_line_errors
    argv = sys.argv[1:] if argv is None else list(argv)
    config, given = dict(defaults), set()
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in ("-h", "--help"):
            raise SystemExit(_usage(defaults))
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}: options are given as --name value")
        name, has_value, value = token[2:].partition("=")
        if name not in defaults:
            raise ConfigError(f"unknown option --{name}; valid options: " + ", ".join(f"--{k}" for k in defaults))
        if not has_value:
            next_is_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            if isinstance(defaults[name], bool) and not next_is_value:
                value = "true"
            elif next_is_value:
                i += 1
                value = argv[i]
            else:
                raise ConfigError(f"--{name} needs a value")
        config[name] = _convert(name, value, defaults[name])
        given.add(name)
        i += 1
    preset = (dataset_presets or {}).get(config.get("dataset"), {})
    config.update({name: value for name, value in preset.items() if name not in given})
    return SimpleNamespace(**config)


def _usage(defaults):
    width = max(len(k) for k in defaults) + 2
    lines = ["options (each overrides the constant of the same name at the top of the script):"]
    lines += [f"  --{k:<{width}} {','.join(map(str, v)) if isinstance(v, tuple) else v!s}" for k, v in defaults.items()]
    return "\n".join(lines)


def script_constants(namespace):
    """The hyperparameter constants of a script: its public module-level bool/int/float/str/tuple names."""
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and type(v) in (bool, int, float, str, tuple)}


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"--device: expected auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
