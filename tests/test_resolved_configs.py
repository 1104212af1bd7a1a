"""Every method x setting x dataset of train_mvtec.py resolves to the configuration recorded in
tests/fixtures/resolved_configs.json (written before the options moved into a table and the presets into the
method and dataset registries): the refactor changed where the values live, not one value. Options added since
(declared `added` in the option table) join the recorded defaults with their own defaults, and nothing else."""
import itertools
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from script_config import train_config  # noqa: E402

RECORDED = json.loads((ROOT / "tests" / "fixtures" / "resolved_configs.json").read_text())
COMBINATIONS = [["--method", m, *(["--setting", s] if s else []), *(["--dataset", d] if d else [])]
                for m, s, d in itertools.product(("noco", "revdist", "recontrast", "uniad", "dinomaly"),
                                                 ("", "separate", "unified"),
                                                 ("", "mvtec", "mpdd", "visa", "btad", "demo"))]


def plain(config):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(config).items()}


def recorded_defaults():
    import train_mvtec
    from utils.options import added_options
    added = added_options(train_mvtec.OPTIONS)
    assert not set(added) & set(RECORDED["defaults"])  # an option recorded before cannot be declared added
    return {**RECORDED["defaults"], **added}


def test_the_defaults_are_unchanged():
    assert plain(train_config([])) == recorded_defaults()


@pytest.mark.parametrize("argv", COMBINATIONS, ids=" ".join)
def test_every_combination_resolves_as_before(argv):
    expected = {**recorded_defaults(), **RECORDED["resolved"][" ".join(argv)]}
    assert plain(train_config(argv)) == expected
