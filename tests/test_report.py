"""--plots end to end: every figure is a valid PNG of the size utils.plots promises, report.md shows
the table and every figure, and without --plots nothing is drawn or imported."""
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.test_scripts import REPO, SMALL, results_path, run_script, write_pattern_mnist
from utils import plots, report
from utils.evaluation import PIXEL_SAMPLES, ClassMaps, evaluate

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


@pytest.mark.slow
def test_unified_run_draws_scores_rocs_and_maps_per_alignment(demo_root, tmp_path):
    done = run_script("train_mvtec.py", "--method", "revdist", "--dataset", "demo", "--data_path", str(demo_root),
                      "--image_size", "64", "--iters", "2", "--batch_size", "8", "--align", "none,class_aware",
                      "--plots", "true", "--out_dir", str(tmp_path), *SMALL)
    run_dir = results_path(done).parent
    text = check_report(run_dir, {
        "scores.png": plots.score_distributions_size(2, 3),
        "roc.png": plots.roc_curves_size(3, 3),                 # two per-class panels and the pooled one
        "maps.png": plots.map_grid_size(3 * 2, 2),              # two test images per class, two alignments
        "pixels.png": plots.score_distributions_size(2, 3),
    })
    for name in ("brick", "grass", "gravel", "mixed", "class_aware"):
        assert name in text
    assert sorted(p.name for p in (run_dir / "plot_data").iterdir()) == ["unified.pt"]
    record = torch.load(run_dir / "plot_data" / "unified.pt", weights_only=False)
    for align in ("none", "class_aware"):
        for name in ("brick", "grass", "gravel"):
            scores, labels = record["pixels"][align][name]
            assert 0 < int(labels.sum()) <= PIXEL_SAMPLES and int((~labels).sum()) == PIXEL_SAMPLES
            assert len(scores) == len(labels)
            means, maxima = record["examples"]["image_stats"][align][name]
            assert len(means) == len(maxima) == len(record["scores"][align][name][1]) and (maxima >= means).all()


def test_figure_data_are_the_evaluations_final_maps_and_fig6_scales_the_dataset_averages():
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(4, 16, 16, dtype=torch.bool)
    masks[2:, 4:8, 4:8] = True
    labels = torch.tensor([0, 0, 1, 1])
    tested = {name: ClassMaps(level + torch.rand(4, 16, 16, generator=generator) + 2 * masks, labels, masks)
              for name, level in (("low", 0.0), ("high", 5.0))}
    cfg = SimpleNamespace(blur_sigma=1.0, blur_kernel=5, image_score="max", top_fraction=0.01)
    every = {name: torch.arange(4) for name in tested}
    _, _, kept = evaluate(tested, cfg, keep=every, pixels=20)
    record = {"scores": {}, "pixels": {}, "examples": {"maps": {}, "image_stats": {}}}
    report.keep_evaluation(record, "none", kept, {name: m.labels for name, m in tested.items()})
    final = torch.cat([kept[name]["maps"] for name in tested])  # every test image's final map, both classes
    for name in tested:
        scores, labels = record["pixels"]["none"][name]
        index = kept[name]["pixel_index"]
        assert torch.equal(scores, kept[name]["maps"].flatten()[index]) and torch.equal(labels, masks.flatten()[index])
        assert int(labels.sum()) == int((~labels).sum()) == 20
    low, high = report.map_scales(report.merged([record["examples"]], "image_stats"))["none"]
    assert low == pytest.approx(final.flatten(1).mean(dim=1).mean().item(), rel=1e-6)
    assert high == pytest.approx(final.flatten(1).amax(dim=1).mean().item(), rel=1e-6)
    assert plots.unit_scale([low, high], low, high).tolist() == pytest.approx([0.0, 1.0])


@pytest.mark.slow
def test_noco_norm_study_draws_polar_plots_and_the_norm_curves(demo_root, tmp_path):
    done = run_script("train_mvtec.py", "--dataset", "demo", "--data_path", str(demo_root), "--classes", "brick",
                      "--image_size", "64", "--crop_size", "0", "--epochs", "1", "--target_norm", "1,8",
                      "--plots", "true", "--out_dir", str(tmp_path), *SMALL)
    run_dir = results_path(done).parent
    sizes = {f"{kind}_norm{n}.png": size for n in (1, 8) for kind, size in (
        ("scores", plots.score_distributions_size(1, 1)), ("roc", plots.roc_curves_size(1, 1)),
        ("maps", plots.map_grid_size(2, 1)), ("polar_brick", plots.polar_size()),
        ("pixels", plots.score_distributions_size(1, 1)))}
    sizes.update({"norm_study_I-AUROC.png": plots.norm_study_size(), "norm_study_P-AUROC.png": plots.norm_study_size()})
    check_report(run_dir, sizes)


@pytest.mark.slow
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
