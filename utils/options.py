"""A script's option table: one row per option (its name, default, help, check, owner methods and whether it
changes the trained model), from which the script's checks, the refusal of another method's options and the
options left out of a model's fingerprint are all derived.

The defaults stay the constants at the top of the script, where the user edits them; the rules (checks, owners,
what an option trains) live in an importable module (utils.mvtec_options for train_mvtec.py), and the script
builds its table from both:

    OPTIONS = option_table(script_constants(globals()), MVTEC_RULES)

A script keeps its work under `if __name__ == "__main__":`, so `import train_mvtec` runs the constants and the
table only: predict.py, the benchmarks and the tests read `train_mvtec.OPTIONS` (and `.PRESETS`), never the
script's source.

Rules, per option name (every key optional): `check`, a dict of utils.checks.check_config's tests
({"positive": True}, {"non_negative": True}, {"choices": (...)}, {"at_most": 1.0}, {"below": 1.0},
{"non_empty": True}); `trains`, "model" (the default: it changes the trained base model), "head" (only the
alignment heads) or "" (neither: evaluation, speed, files); `used_when`, for an option that changes the model
only in some configurations, a function (config dict, method registry entry) -> bool (e.g. --epochs only in the
separate setting): where it is false the option is out of the fingerprint; `added`, True for an option added
after checkpoints were saved without it (they were trained as its default: utils.training.load_our_file);
`help`, the text --help shows (without it, the comment beside the constant). A method's own options are its
registry entry's (models.METHODS own_options): another method's, and the shared ones it does not read
(Method.unused), are out of its fingerprint.
"""
from dataclasses import dataclass, field
from typing import Callable

from utils.checks import check_config

TRAINS = ("model", "head", "")
CHECKS = ("positive", "non_negative", "choices", "at_most", "below", "non_empty")


@dataclass(frozen=True)
class Option:
    name: str
    default: object
    help: str = ""
    check: dict = field(default_factory=dict)  # check_config's tests (see the module docstring)
    owners: tuple = ()   # the methods that read it; () = shared by every method
    trains: str = "model"  # "model" | "head" | "": what a change of it can change
    used_when: Callable = None  # (config dict, method) -> whether it is read there; None: always
    added: bool = False  # added since checkpoints were saved without it: those ran its default


def option_table(defaults, rules, owners=None):
    """{name: Option} in the order of `defaults` (the script's constants). `owners` maps an option to the methods
    that own it (models.option_owners()). A rule for an option the script lacks, an unknown rule or check, is a
    programming error (KeyError, ValueError) shown on the first run."""
    if unknown := sorted(set(rules) - set(defaults)):
        raise KeyError(f"option rules for options the script does not have: {unknown}")
    table = {}
    for name, default in defaults.items():
        rule = dict(rules.get(name, {}))
        if extra := set(rule) - {"check", "trains", "help", "used_when", "added"}:
            raise ValueError(f"--{name}: unknown rule keys {sorted(extra)}")
        if extra := set(rule.get("check", {})) - set(CHECKS):
            raise ValueError(f"--{name}: unknown checks {sorted(extra)}")
        if rule.get("trains", "model") not in TRAINS:
            raise ValueError(f"--{name}: trains must be one of {TRAINS}, got {rule['trains']!r}")
        table[name] = Option(name, default, rule.get("help", ""), rule.get("check", {}),
                             tuple((owners or {}).get(name, ())), rule.get("trains", "model"), rule.get("used_when"),
                             rule.get("added", False))
    return table


def check_options(cfg, table):
    """utils.checks.check_config with every option's checks from the table (one ConfigError line on the first
    option that fails)."""
    tests = {kind: {} for kind in CHECKS}
    for option in table.values():
        for kind, value in option.check.items():
            tests[kind][option.name] = value
    check_config(cfg, positive=[n for n, on in tests["positive"].items() if on],
                 non_negative=[n for n, on in tests["non_negative"].items() if on], choices=tests["choices"],
                 at_most=tests["at_most"], below=tests["below"],
                 non_empty=[n for n, on in tests["non_empty"].items() if on])


def added_options(table):
    """{option: default} of the options added since checkpoints were saved without them."""
    return {name: option.default for name, option in table.items() if option.added}


def not_training(table):
    """The options that never change a trained model (evaluation, speed, files)."""
    return {name for name, option in table.items() if option.trains == ""}


def head_only(table):
    """The options that change the alignment heads only, never the base model."""
    return {name for name, option in table.items() if option.trains == "head"}


def not_in_recipe(table, method, config):
    """The options that cannot change the model this configuration (a dict) trains with this method (a
    models.METHODS entry): other methods' options, the shared ones it does not read, and those whose `used_when`
    is false here. The rest, with NOT_TRAINING and (for a base model) HEAD_ONLY left out by the caller, is the
    recipe its fingerprint hashes."""
    others = {name for name, option in table.items() if option.owners and method.name not in option.owners}
    unused = {name for name, option in table.items() if option.used_when and not option.used_when(config, method)}
    return others | set(method.unused) | unused
