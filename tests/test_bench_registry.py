"""The benchmarks read their method facts from the registry (models.METHODS): each entry's encoder option,
encoder name, frozen encoder and CPU settings fit what the method builds; the benchmarks' method lists are the
registry's; benchmarks/method_facts.py (the torch-free copy the table scripts read) equals the registry; and no
script or utility compares a method's name."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_unified  # noqa: E402
import method_facts  # noqa: E402
import seed_table  # noqa: E402
from bench_predict_sizes import input_options  # noqa: E402
from script_config import train_config  # noqa: E402

from models import METHODS, dinomaly, not_in_fingerprint  # noqa: E402


@pytest.mark.parametrize("name", list(METHODS))
def test_encoder_option_names_the_encoder_the_method_reads(name):
    method = METHODS[name]
    cfg = train_config(["--method", name])
    assert method.encoder_option in vars(cfg) and method.encoder_option not in not_in_fingerprint(method)
    assert method.encoder_name(cfg) == method.encoder_name(vars(cfg))  # a namespace or config.json's dict
    assert method.encoder_name(cfg) == {"noco": "wide_resnet50_2", "revdist": "wide_resnet50_2",
                                        "recontrast": "wide_resnet50_2", "uniad": "efficientnet_b4",
                                        "dinomaly": "vit_base"}[name]  # the paper presets' encoders
    assert method_facts.encoder_name(vars(cfg)) == method.encoder_name(cfg)


@pytest.mark.parametrize("name", list(METHODS))
def test_cpu_settings_are_options_the_method_accepts(name):
    """Both CPU settings name options of the method's configuration that it reads, and pass its checks."""
    method = METHODS[name]
    assert method.cpu_quick  # every method has a quick setting; a bench_unified.py base has a training one too
    for settings in [s for s in (method.cpu_training, method.cpu_quick) if s is not None]:
        assert set(settings) <= set(vars(train_config(["--method", name])))
        assert not set(settings) & not_in_fingerprint(method)
        cfg = train_config(["--method", name, "--setting", "unified",
                            *[str(item) for option, value in settings.items() for item in (f"--{option}", value)]])
        assert {option: getattr(cfg, option) for option in settings} == settings
        method.check is None or method.check(cfg)
    assert input_options(name, quick=True).items() >= method.cpu_quick.items()


@pytest.mark.parametrize("name", list(METHODS))
def test_frozen_part_is_the_frozen_encoder_the_model_runs(name):
    """At its quick settings, random weights: the frozen part has parameters, none trained by the model's
    optimiser, and its deepest output is what the method's head reads from the encoder."""
    method = METHODS[name]
    cfg = train_config(["--method", name, "--setting", "unified", "--weights", "none",
                        *[str(item) for option, value in method.cpu_quick.items() for item in (f"--{option}", value)]])
    torch.manual_seed(0)
    encoder = method.build_encoder(cfg)
    model = method.build_model(cfg, encoder, cfg.target_norm[0], torch.Generator().manual_seed(0)).eval()
    frozen = method.frozen_part(model, encoder)
    parameters = {id(p) for p in frozen.parameters()}
    optimizer, _ = model.configure_optimizers(cfg, 10)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert parameters and not parameters & trained
    side = cfg.crop_size or cfg.image_size
    images = torch.rand(2, 3, side, side)
    with torch.no_grad():
        features = frozen(images)
        batch = encoder(images) if method.trains_on == "features" else {"image": images}
        read = method.head_input(model, batch, "encoder")
    if isinstance(features, tuple):  # Dinomaly's (tapped blocks' tokens (B, prefix + h*w, C), grid)
        deepest = features[0][-1][:, -read.shape[2] * read.shape[3]:].transpose(1, 2).reshape(read.shape)
    else:
        deepest = features[list(features)[-1]]
    torch.testing.assert_close(deepest, read)


def test_benchmark_method_lists_are_the_registry():
    assert {base.partition("-")[0] for base in bench_unified.bases()} == {
        name for name, method in METHODS.items() if method.cpu_training}
    assert bench_unified.bases() == ("revdist", "revdist-relu", "revdist-nocache", "revdist-recompute", "recontrast",
                                   "recontrast-recompute", "uniad", "uniad-nocache", "dinomaly")  # its rows
    assert {name: bench_unified.size_options("cpu", m) for name, m in METHODS.items() if m.cpu_training} == {
        "revdist": {"backbone": "resnet18", "image_size": 128, "crop_size": 0},
        "recontrast": {"backbone": "resnet18", "image_size": 128, "crop_size": 0},
        "uniad": {"image_size": 128, "crop_size": 0, "batch_size": 16},
        "dinomaly": {"vit": "small", "image_size": 112, "crop_size": 0, "batch_size": 16}}  # its cpu rows
    assert method_facts.METHOD_NAMES == tuple(METHODS) and seed_table.METHOD_NAMES == tuple(METHODS)
    done = subprocess.run([sys.executable, "benchmarks/bench_predict_sizes.py", "--methods", "none"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().endswith(
        f"unknown method none: expected among {', '.join(METHODS)}")


def test_method_facts_equal_the_registry():
    assert method_facts.ENCODERS == {name: (m.encoder_option, m.encoder_label) for name, m in METHODS.items()}
    assert method_facts.VIT_SIZES == {timm: size for size, timm in dinomaly.ENCODERS.items()}
    assert method_facts.encoder_option("no_such_method") == "backbone"


METHOD_NAME = "|".join(METHODS)
COMPARED = re.compile(rf"""[=!]=\s*["']({METHOD_NAME})["']|["']({METHOD_NAME})["']\s*[=!]=|"""
                      rf"""\bin\s*\(\s*["']({METHOD_NAME})["']""")


def test_no_script_or_utility_compares_a_method_name():
    sources = [*ROOT.glob("*.py"), *(ROOT / "utils").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    found = [f"{path.name}:{number}: {line.strip()}" for path in sources
             for number, line in enumerate(path.read_text().splitlines(), 1) if COMPARED.search(line)]
    assert len(sources) > 20 and not found
