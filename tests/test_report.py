"""--plots end to end: every figure is a valid PNG of the size utils.plots promises, report.md shows
the table and every figure, and without --plots nothing is drawn or imported."""
import re
import subprocess
import sys

import pytest

from tests.test_scripts import REPO, SMALL, results_path, run_script, write_pattern_mnist
from utils import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    data = path.read_bytes()[:24]
    assert data[:8] == PNG_SIGNATURE, path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def check_report(run_dir, expected_sizes):
    """Every PNG has its expected size, report.md embeds each one and holds the table's classes."""
    pngs = sorted(p.name for p in run_dir.glob("*.png"))
    assert pngs == sorted(expected_sizes)
    for name, size in expected_sizes.items():
        assert png_size(run_dir / name) == plots.pixel_size(size), name
    text = (run_dir / "report.md").read_text()
    assert sorted(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)) == pngs
    return text


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return tmp_path_factory.mktemp("demo")


def test_unified_run_draws_scores_rocs_and_maps_per_alignment(demo_root, tmp_path):
    done = run_script("train_mvtec.py", "--method", "revdist", "--dataset", "demo", "--data_path", str(demo_root),
                      "--image_size", "64", "--iters", "2", "--batch_size", "8", "--align", "none,class_aware",
                      "--plots", "true", "--out_dir", str(tmp_path), *SMALL)
    run_dir = results_path(done).parent
    text = check_report(run_dir, {
        "scores.png": plots.score_distributions_size(2, 3),
        "roc.png": plots.roc_curves_size(3, 3),                 # two per-class panels and the pooled one
        "maps.png": plots.map_grid_size(3 * 2, 2),              # two test images per class, two alignments
    })
    for name in ("brick", "grass", "gravel", "mixed", "class_aware"):
        assert name in text
    assert sorted(p.name for p in (run_dir / "plot_data").iterdir()) == ["unified.pt"]


def test_noco_norm_study_draws_polar_plots_and_the_norm_curves(demo_root, tmp_path):
    done = run_script("train_mvtec.py", "--dataset", "demo", "--data_path", str(demo_root), "--classes", "brick",
                      "--image_size", "64", "--crop_size", "0", "--epochs", "1", "--target_norm", "1,8",
                      "--plots", "true", "--out_dir", str(tmp_path), *SMALL)
    run_dir = results_path(done).parent
    sizes = {f"{kind}_norm{n}.png": size for n in (1, 8) for kind, size in (
        ("scores", plots.score_distributions_size(1, 1)), ("roc", plots.roc_curves_size(1, 1)),
        ("maps", plots.map_grid_size(2, 1)), ("polar_brick", plots.polar_size()))}
    sizes.update({"norm_study_I-AUROC.png": plots.norm_study_size(), "norm_study_P-AUROC.png": plots.norm_study_size()})
    check_report(run_dir, sizes)


def test_semantic_run_draws_scores_rocs_and_polar_plots(tmp_path):
    root = tmp_path / "data"
    write_pattern_mnist(root)
    done = run_script("train_mnist.py", "--data_path", str(root), "--classes", "0,1", "--image_size", "32",
                      "--crop_size", "0", "--epochs", "1", "--batch_size", "8", "--plots", "true",
                      "--out_dir", str(tmp_path / "results"), *SMALL)
    run_dir = results_path(done).parent
    check_report(run_dir, {"scores.png": plots.score_distributions_size(1, 2), "roc.png": plots.roc_curves_size(1, 2),
                           "polar_0.png": plots.polar_size(), "polar_1.png": plots.polar_size()})


def test_the_report_modules_do_not_import_matplotlib():
    """Without --plots a run never imports it (the test_scripts runs check that no figure appears)."""
    imported = subprocess.run([sys.executable, "-c", "import utils.report, utils.evaluation, sys; "
                               "print('matplotlib' in sys.modules)"], cwd=REPO, capture_output=True, text=True)
    assert imported.stdout.strip() == "False", imported.stderr
