"""benchmarks/script_config.py (train_mvtec.py's configuration from its imported option table and presets) and
the configurations the speed benchmarks build from it (bench_unified.py's rows, bench_predict_sizes.py's input
sizes)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_predict_sizes import input_options  # noqa: E402
from bench_unified import base_options  # noqa: E402
from script_config import train_config  # noqa: E402


def test_presets_apply_as_in_the_script():
    revdist = train_config(["--method", "revdist"])
    assert (revdist.setting, revdist.backbone, revdist.image_size, revdist.crop_size, revdist.resize) == (
        "unified", "wide_resnet50_2", 256, 0, "pil")
    assert (revdist.lr, revdist.decoder_activation, revdist.lr_drop_at, revdist.image_score) == (
        2e-3, "gelu", 0.8, "top_mean")
    dinomaly = train_config(["--method", "dinomaly"])
    assert (dinomaly.vit, dinomaly.image_size, dinomaly.crop_size, dinomaly.eval_size, dinomaly.batch_size) == (
        "base", 448, 392, 256, 16)
    assert (dinomaly.optimizer, dinomaly.lr_schedule, dinomaly.hm_factor) == ("stable_adamw", "warmup_cosine", 0.1)
    uniad = train_config(["--method", "uniad"])
    assert (uniad.backbone, uniad.image_size, uniad.batch_size, uniad.blur_sigma) == ("efficientnet_b4", 224, 64, 0.0)
    noco = train_config([])
    assert (noco.method, noco.setting, noco.image_size, noco.crop_size, noco.resize) == ("noco", "separate", 256,
                                                                                          224, "cv2")


def test_the_command_line_beats_the_presets():
    demo = train_config(["--method", "revdist", "--dataset", "demo"])
    assert (demo.backbone, demo.weights, demo.image_size) == ("efficientnet_lite0", "imagenet", 128)
    given = train_config(["--method", "revdist", "--dataset", "demo", "--backbone", "resnet18", "--image_size", 256])
    assert (given.backbone, given.weights, given.image_size) == ("resnet18", "imagenet", 256)


def test_importing_the_script_runs_its_option_table_only():
    """`import train_mvtec` builds the constants, PRESETS and OPTIONS and stops: an option the script would
    refuse on its command line, or a missing dataset, never comes up."""
    code = ("import sys; sys.argv = ['train_mvtec.py', '--no_such_option']; import train_mvtec as t; "
            "print(len(t.OPTIONS), t.OPTIONS['lr'].default, t.OPTIONS['vit'].owners, "
            "repr(t.OPTIONS['blur_sigma'].trains), "
            "len(t.PRESETS))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["77", "0.0001", "('dinomaly',)", "''", "16"]


def test_bench_unified_rows():
    lite0 = train_config(base_options("revdist", "paper", "efficientnet_lite0"))
    assert (lite0.backbone, lite0.weights, lite0.image_size, lite0.crop_size, lite0.batch_size) == (
        "efficientnet_lite0", "none", 256, 0, 16)
    small = train_config(base_options("revdist-recompute", "cpu", "efficientnet_lite0"))
    assert (small.backbone, small.image_size, small.recompute) == ("efficientnet_lite0", 128, True)
    dinomaly = train_config(base_options("dinomaly", "paper", "efficientnet_lite0"))  # its ViT, not a --backbone
    assert (dinomaly.vit, dinomaly.crop_size, dinomaly.batch_size, dinomaly.optimizer) == (
        "base", 392, 16, "stable_adamw")
    assert train_config(base_options("dinomaly", "cpu")).vit == "small"


@pytest.mark.parametrize("method, expected", [
    ("noco", {"backbone": "wide_resnet50_2", "image_size": 256, "crop_size": 224, "resize": "cv2", "eval_size": 0}),
    ("revdist", {"backbone": "wide_resnet50_2", "image_size": 256, "crop_size": 0, "resize": "pil", "eval_size": 0}),
    ("recontrast", {"backbone": "wide_resnet50_2", "image_size": 256, "crop_size": 0, "resize": "pil",
                    "eval_size": 0}),
    ("uniad", {"backbone": "efficientnet_b4", "image_size": 224, "crop_size": 0, "resize": "pil", "eval_size": 0}),
    ("dinomaly", {"vit": "base", "image_size": 448, "crop_size": 392, "resize": "pil", "eval_size": 256}),
])
def test_bench_predict_sizes_uses_the_paper_inputs(method, expected):
    assert input_options(method) == expected
