"""Command-line overrides for the constants at the top of each train_*.py script.

A script gathers its constants into a dict and calls `parse_config(defaults, presets=..., script=__file__)`;
every constant can then be overridden as `--name value` or `--name=value`. Values are checked against the
constant's type: bool takes true/false/1/0/yes/no (a bare `--flag` means true), tuples take a
comma-separated list of their element type. Unknown names are refused with the valid list.
`--help` (or `-h`) prints the options with their defaults and the comment written beside each constant
in the script, then the presets, and exits.

Presets are `(condition, values)` pairs (or `(condition, values, note)`, the note shown by --help) applied in
order after the command line is read: a pair
applies when every option in `condition` has that value in the configuration as it stands at that
point (so an earlier preset can set an option a later condition reads), and its `values` replace the
constants, except options given on the command line.

`utils.checks` (check_config, check_out_dir) checks the configuration before any work starts.

Scripts that call `parse_config` report bad input (a ConfigError, ValueError, FileNotFoundError or
ConnectionError: unknown option, missing dataset, wrong layout, unreadable image, failed download;
also when a DataLoader worker raised it) as one line on stderr instead of a traceback; set
TRACEBACK=1 in the environment to see the traceback. Ctrl-C prints `interrupted` and exits with
status 130 after `finally:` blocks have run.
"""
import ast
import builtins
import io
import json
import os
import random
import re
import signal
import sys
import textwrap
import threading
import time
import tokenize
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.utils.data

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_WIDTH = 100  # --help is laid out for this many columns


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


# bad input: one line ---------------------------------------------------------------------------
_REPORTED = (ConfigError, ValueError, FileNotFoundError, ConnectionError)
_WORKER_WRAPPED = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


def _is_reported_name(name):
    """Whether an exception type named in a DataLoader worker's message is one reported in one line."""
    kind = ConfigError if name == "ConfigError" else getattr(builtins, name, None)
    return isinstance(kind, type) and issubclass(kind, _REPORTED)


def _one_line_message(kind, error):
    """The one line printed for bad input, or None for anything else (a bug: keep its traceback).

    An exception re-raised by a DataLoader worker (torch's ExceptionWrapper) carries the worker's
    whole traceback as its message: only the original exception's own message is kept. When the
    original type cannot be rebuilt from a message, torch raises a RuntimeError instead; it counts
    when the original type is one of the reported kinds."""
    text = str(error)
    wrapped = _WORKER_WRAPPED.match(text)
    if not (issubclass(kind, _REPORTED) or (wrapped and kind is RuntimeError and _is_reported_name(wrapped[1]))):
        return None
    if wrapped:  # the traceback ends with "[module.]Name: message" (or just "Name" when the message is empty)
        headers = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(wrapped[1])}(?:: |$)", text, re.MULTILINE))
        text = text[headers[-1].end():] if headers else text.splitlines()[-1]
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or kind.__name__


def _say(text):
    """Print a message on a line of its own on stderr (after a progress bar's line, not on it); under
    torchrun only rank 0 speaks."""
    if os.environ.get("RANK", "0") != "0":
        return
    from tqdm import tqdm
    bars = list(getattr(tqdm, "_instances", ()))
    for bar in bars:  # on a terminal a closed bar clears its line; in a log the message needs a new one
        bar.close()
    start = "\n" if bars and not sys.stderr.isatty() else ""
    print(f"{start}{text}", file=sys.stderr, flush=True)


def _record_for_torchrun(message):
    """torchrun ends a failed run with its own report; given this file, that report's root cause is our
    line instead of a pointer to its documentation."""
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if error_file and os.environ.get("RANK", "0") == "0":
        entry = {"message": message, "extraInfo": {"py_callstack": message, "timestamp": str(int(time.time()))}}
        Path(error_file).write_text(json.dumps({"message": entry}))


def _one_line_errors(kind, error, traceback):
    message = None if os.environ.get("TRACEBACK") else _one_line_message(kind, error)
    if message is None:
        sys.__excepthook__(kind, error, traceback)
    else:
        _say(f"error: {message}\n(set TRACEBACK=1 for the traceback)")
        _record_for_torchrun(f"error: {message}")


# Ctrl-C: one word, exit status 130, `finally:` blocks run ---------------------------------------
_SIGINT_OWNER = None  # the pid of the process that installed _interrupted


def _interrupted(signum, frame):
    if os.getpid() != _SIGINT_OWNER or torch.utils.data.get_worker_info() is not None:
        # a DataLoader worker (forked with this handler): the default, a KeyboardInterrupt, which the
        # worker loop swallows quietly; the main process reports the interruption once
        return signal.default_int_handler(signum, frame)
    _say("interrupted")
    raise SystemExit(130)


def _install_script_handlers():
    global _SIGINT_OWNER
    sys.excepthook = _one_line_errors
    if threading.current_thread() is threading.main_thread():
        _SIGINT_OWNER = os.getpid()
        signal.signal(signal.SIGINT, _interrupted)


# parsing ---------------------------------------------------------------------------------------
def _preset_value(name, value, default, where):
    """A preset's value checked against its constant's type (int is fine for float, a list for a tuple)."""
    kind = type(default)
    if kind is tuple and isinstance(value, (tuple, list)):
        element = default[0] if default else ""
        return tuple(_preset_value(name, item, element, where) for item in value)
    if kind is float and type(value) is int:
        return float(value)
    if type(value) is not kind:
        raise TypeError(f"preset {where}: {name} = {value!r} does not match the type of the constant "
                        f"({kind.__name__}, default {default!r})")
    return value


def _checked_presets(defaults, presets):
    """The presets with their values converted to the constants' types; every preset is checked,
    whether it will apply or not, so a mistake in one shows on the first run."""
    checked = []
    for condition, values, *note in presets or ():
        where = _condition_text(condition)
        for name in (*condition, *values):
            if name not in defaults:
                raise KeyError(f"preset {where}: unknown option {name!r}")
        checked.append((dict(condition), {name: _preset_value(name, value, defaults[name], where)
                                          for name, value in values.items()}, " ".join(note)))
    return checked


def _apply_presets(config, defaults, presets, given):
    for condition, values, _ in _checked_presets(defaults, presets):
        if all(config[name] == value for name, value in condition.items()):
            config.update({name: value for name, value in values.items() if name not in given})


def parse_config(defaults, argv=None, presets=None, script=None, return_given=False, epilog="", positional=None):
    """Return `defaults` with the `--name value` overrides of argv (default: sys.argv[1:]) and then
    the presets applied, as a namespace (cfg.lr, ...; `vars(cfg)` is the plain dict saved in
    config.json). With `return_given=True`, return `(cfg, given)` where `given` is the set of the
    option names the command line gave.

    `presets`: a list of `(condition, values)` dicts, applied in order (see the module docstring); a third
    element, a note (where the values come from), is shown by --help.
    A preset naming an unknown option, or a value not of its constant's type, is a programming
    error (KeyError, TypeError). `script`: the script's path (`__file__`), for `--help`, which
    prints its docstring's first paragraph and the comment beside each constant.

    `positional`: the name of a tuple option that collects the arguments given without a name (predict.py's
    image files); without it such an argument is refused. A bool option then takes the next argument as its
    value only when it reads as a bool.

    Called by a script (argv None), it also makes bad input end in one line instead of a traceback,
    and Ctrl-C end in `interrupted` with exit status 130."""
    if argv is None:
        _install_script_handlers()
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(config_help(defaults, presets, script, epilog), flush=True)
        raise SystemExit(0)
    config, given, loose = dict(defaults), set(), []
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") and positional is not None:
            loose.append(token)
            i += 1
            continue
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}: options are given as --name value")
        name, has_value, value = token[2:].partition("=")
        if name not in defaults:
            raise ConfigError(f"unknown option --{name}; valid options: " + ", ".join(f"--{k}" for k in defaults))
        if not has_value:
            next_is_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            if positional is not None and isinstance(defaults[name], bool) and next_is_value:
                next_is_value = argv[i + 1].lower() in _TRUE + _FALSE
            if isinstance(defaults[name], bool) and not next_is_value:
                value = "true"
            elif next_is_value:
                i += 1
                value = argv[i]
            else:
                raise ConfigError(f"--{name} needs a value")
        if name in given:
            raise ConfigError(f"--{name} is given twice ({_format_value(config[name])} and {value}): give it once")
        config[name] = _convert(name, value, defaults[name])
        given.add(name)
        i += 1
    if loose:
        config[positional] = config[positional] + tuple(loose)
        given.add(positional)
    _apply_presets(config, defaults, presets, given)
    cfg = SimpleNamespace(**config)
    return (cfg, given) if return_given else cfg


# --help ----------------------------------------------------------------------------------------
def _format_value(value):
    """A value as it would be written on the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(map(_format_value, value)) or '""'
    return str(value) if value != "" else '""'


def _condition_text(condition):
    return " ".join(f"--{name} {_format_value(value)}" for name, value in condition.items()) or "(always)"


def _script_comments(script, presets):
    """From the script's source: its docstring, {constant: the comment beside it}, and the comment
    beside each preset of the list literal that defines `presets` (empty where there is none)."""
    try:
        source = Path(script).read_text(encoding="utf-8")
        tree = ast.parse(source)
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (OSError, SyntaxError, UnicodeDecodeError, tokenize.TokenError):
        return "", {}, []
    comments = {}  # line number -> comment text
    for token in tokens:
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()

    def beside(first, last, skip=()):
        return " ".join(comments[n] for n in range(first, last + 1) if n in comments and n not in skip)

    lines = source.splitlines()

    def continued(last):
        """The last line of a statement and the indented comment-only lines under it (a wrapped comment)."""
        while last < len(lines) and lines[last].startswith(" ") and lines[last].strip().startswith("#"):
            last += 1
        return last

    constants, preset_comments = {}, []
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            constants.setdefault(node.target.id, beside(node.lineno, continued(node.end_lineno)))
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            constants.setdefault(node.targets[0].id, beside(node.lineno, continued(node.end_lineno)))  # the first
            if not presets or preset_comments or not isinstance(node.value, (ast.List, ast.Tuple)):
                continue
            items = node.value.elts
            try:  # the literal that defines these presets: same length, same conditions in the same order
                conditions = [ast.literal_eval(item.elts[0]) for item in items]
            except (AttributeError, IndexError, ValueError, TypeError, SyntaxError):
                continue
            if conditions == [condition for condition, *_ in presets]:
                preset_comments = [beside(item.lineno, item.end_lineno, skip=(node.lineno,)) for item in items]
    return ast.get_docstring(tree) or "", constants, preset_comments


def _wrap(words, indent, width=_WIDTH):
    """Greedy wrap of words (each kept whole) into lines starting with `indent` spaces."""
    lines, line = [], ""
    for word in words:
        if line and indent + len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [" " * indent + line for line in lines + [line] if line]


def _columns(left, text, column):
    """`left` then `text` wrapped from `column` on (on the next line when `left` is too wide)."""
    words = text.split()
    lines = _wrap(words, column) if words else []
    if not lines or len(left) + 2 > column:
        return [left] + lines
    return [left.ljust(column) + lines[0][column:]] + lines[1:]


def config_help(defaults, presets=None, script=None, epilog=""):
    """The text `--help` prints: usage, the script's purpose, every option with its default and the
    comment beside its constant in the script, then the presets."""
    docstring, comments, preset_comments = _script_comments(script, presets) if script else ("", {}, [])
    name = Path(script or sys.argv[0] or "script.py").name
    lines = [f"usage: python {name} [--name value ...]", ""]
    purpose = docstring.strip().split("\n\n")[0]
    if purpose:
        lines += textwrap.wrap(" ".join(purpose.split()), _WIDTH) + [""]
    lines.append("options (each replaces the constant of that name at the top of the script; shown with its default):")
    entries = {key: f"  --{key} {_format_value(value)}" for key, value in defaults.items()}
    column = min(max(map(len, entries.values()), default=0), 34) + 2
    for key, entry in entries.items():
        lines += _columns(entry, comments.get(key, ""), column)
    lines += [""] + textwrap.wrap("bool options take true or false (a bare --name means true); tuple options take a "
                                  "comma-separated list (\"\" for an empty one).", _WIDTH)
    presets = _checked_presets(defaults, presets)
    if presets:
        lines += [""] + textwrap.wrap("presets, applied in order after the command line: where the options have "
                                      "these values, the options below are set too (never one the command line "
                                      "gives, and a later condition sees what an earlier preset set):", _WIDTH)
        for i, (condition, values, note) in enumerate(presets):
            header = f"  if {_condition_text(condition)}:"
            comment = note or (preset_comments[i] if i < len(preset_comments) else "")
            lines += _columns(header, comment and f"# {comment}", len(header) + 2 if len(header) <= 60 else 6)
            lines += _wrap([f"--{key}\u00a0{_format_value(value)}" for key, value in values.items()], 6)
    if epilog:
        lines += [""] + textwrap.wrap(epilog, _WIDTH)
    return "\n".join(line.replace("\u00a0", " ").rstrip() for line in lines)


def script_constants(namespace):
    """The hyperparameter constants of a script: its public lower-case module-level bool/int/float/
    str/tuple names (an imported UPPER_CASE constant such as a layer list is not an option)."""
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not k.isupper() and type(v) in (bool, int, float, str, tuple)}


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
