import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from utils import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["bottle", "cable", "metal_nut"]


def png_size(path):
    data = Path(path).read_bytes()[:24]
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def check_png(path, size_inches, folder):
    """A whole PNG of the planned size with something drawn on it (an empty or blank figure fails), and no
    temporary file left beside it."""
    path = Path(path)
    assert path.is_file()
    assert png_size(path) == plots.pixel_size(size_inches)
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    drawn = (pixels < 245).any(axis=1).mean()
    assert drawn > 0.02 and len(np.unique(pixels, axis=0)) >= 16, (drawn, len(np.unique(pixels, axis=0)))
    assert [p.name for p in Path(folder).iterdir() if p.name.startswith(".")] == []  # no temp file
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def labelled_scores(rng, offset=0.0, n=20):
    labels = np.r_[np.zeros(n // 2), np.ones(n - n // 2)]
    return rng.normal(offset, 1.0, n) + 2 * labels, labels


def test_figure_sizes_are_whole_pixels():
    for size in [plots.score_distributions_size(2, 15), plots.map_grid_size(15, 2), plots.polar_size(),
                 plots.norm_study_size(), plots.roc_curves_size(4, 15)]:
        assert all(abs(v * plots.DPI - round(v * plots.DPI)) < 1e-9 for v in size)
    assert plots.pixel_size(plots.figure_size(2, 3, 2.0, 1.5)) == (600, 300)


def test_score_distributions(tmp_path, rng):
    scores = {align: {c: labelled_scores(rng, 3 * i * (align == "none")) for i, c in enumerate(CLASSES)}
              for align in ["none", "cada"]}
    out = plots.score_distributions(tmp_path / "scores.png", scores, title="scores")
    assert out == tmp_path / "scores.png"
    check_png(out, plots.score_distributions_size(2, 3), tmp_path)


def test_pixel_distributions(tmp_path, rng):
    pixels = {align: {c: labelled_scores(rng, i * (align == "none"), n=4000) for i, c in enumerate(CLASSES)}
              for align in ["none", "cada"]}
    out = plots.pixel_distributions(tmp_path / "pixels.png", pixels, title="pixels")
    check_png(out, plots.score_distributions_size(2, 3), tmp_path)


def test_score_distributions_takes_torch_tensors(tmp_path, rng):
    torch = pytest.importorskip("torch")
    s, y = labelled_scores(rng)
    scores = {"none": {"a": (torch.tensor(s), torch.tensor(y).long())}}
    check_png(plots.score_distributions(tmp_path / "t.png", scores), plots.score_distributions_size(1, 1),
              tmp_path)


def grid_data(rng, n, hw=32, empty=False):
    images = rng.uniform(0, 1, (n, 3, hw, hw))
    masks = np.zeros((n, hw, hw), bool)
    if not empty:
        masks[::2, 8:20, 10:22] = True
    maps = {"none": rng.random((n, hw, hw)) + np.arange(n)[:, None, None], "cada": rng.random((n, hw, hw))}
    return images, maps, masks


SCALES = {"none": (0.5, 3.0), "cada": (0.0, 1.0)}


def test_unit_scale_maps_the_dataset_average_mean_to_0_and_max_to_1():
    assert plots.unit_scale([0.5, 3.0, 1.75, 4.25], 0.5, 3.0).tolist() == [0.0, 1.0, 0.5, 1.5]
    assert plots.unit_scale([2.0], 2.0, 2.0).tolist() == [0.0]  # a degenerate scale stays finite


def test_map_grid(tmp_path, rng):
    images, maps, masks = grid_data(rng, 6)
    names = [CLASSES[i % 3] for i in range(6)]
    out = plots.map_grid(tmp_path / "maps.png", images, maps, masks, names, SCALES, title="maps")
    check_png(out, plots.map_grid_size(6, 2), tmp_path)


def test_map_grid_accepts_channels_last(tmp_path, rng):
    images, maps, masks = grid_data(rng, 2)
    out = plots.map_grid(tmp_path / "m.png", images.transpose(0, 2, 3, 1), {"cada": maps["cada"][:2]},
                         masks, ["a", "b"], SCALES)
    check_png(out, plots.map_grid_size(2, 1), tmp_path)


def test_map_grid_with_15_classes(tmp_path, rng):
    images, maps, masks = grid_data(rng, 15)
    out = plots.map_grid(tmp_path / "maps15.png", images, maps, masks, [f"class_{i}" for i in range(15)], SCALES)
    check_png(out, plots.map_grid_size(15, 2), tmp_path)


def test_map_grid_all_normal_draws_no_contour_and_does_not_warn(tmp_path, rng, recwarn):
    images, maps, masks = grid_data(rng, 3, empty=True)
    out = plots.map_grid(tmp_path / "normal.png", images, maps, masks, CLASSES, SCALES)
    check_png(out, plots.map_grid_size(3, 2), tmp_path)
    assert [str(w.message) for w in recwarn] == []


def test_polar_plot(tmp_path, rng):
    labels = rng.random(40) < 0.3
    norms, angles = rng.uniform(1, 9, 40), rng.uniform(0, np.pi, 40)
    out = plots.polar_plot(tmp_path / "polar.png", norms, angles, labels, title="NoCo", target_norm=8.0)
    check_png(out, plots.polar_size(), tmp_path)
    out = plots.polar_plot(tmp_path / "polar2.png", norms, angles, labels)
    check_png(out, plots.polar_size(), tmp_path)


def test_norm_study_skips_a_nan_only_class(tmp_path, rng, recwarn):
    norms = [1.0, 2.0, 4.0, 8.0]
    values = {"bottle": [90.0, 92.5, np.nan, 95.0], "cable": [80.0, 85.0, 88.0, 87.0], "empty": [np.nan] * 4}
    out = plots.norm_study(tmp_path / "norm.png", norms, values, metric="P-AUROC", title="norms")
    check_png(out, plots.norm_study_size(), tmp_path)
    out = plots.norm_study(tmp_path / "none.png", norms, {"empty": [np.nan] * 4})
    check_png(out, plots.norm_study_size(), tmp_path)
    assert [str(w.message) for w in recwarn] == []


def test_roc_curves(tmp_path, rng):
    per_class = {c: labelled_scores(rng, i) for i, c in enumerate(CLASSES)}
    mixed = {a: labelled_scores(rng, 0, 60) for a in ["none", "cada"]}
    out = plots.roc_curves(tmp_path / "roc.png", {"per class": per_class, "mixed": mixed}, title="ROC")
    check_png(out, plots.roc_curves_size(2, 3), tmp_path)
    panels = {f"p{i}": {"x": labelled_scores(rng)} for i in range(4)}  # 2 rows of up to 3
    panels["p0"]["only normal"] = (np.arange(5.0), np.zeros(5))
    out = plots.roc_curves(tmp_path / "roc4.png", panels)
    check_png(out, plots.roc_curves_size(4, 2), tmp_path)
    assert plots.roc_curves_size(4, 2)[1] > plots.roc_curves_size(3, 2)[1]


def test_write_report(tmp_path, rng):
    figures_dir = tmp_path / "figures"
    scores = {"none": {c: labelled_scores(rng) for c in CLASSES}}
    png1 = plots.score_distributions(figures_dir / "scores.png", scores)
    png2 = plots.polar_plot(tmp_path / "polar.png", [1.0, 2.0], [0.1, 2.0], [0, 1])
    table = pd.DataFrame({"setting": "separate", "class": CLASSES + ["mean"],
                          "I-AUROC": [99.123, 95.0, np.nan, 97.06], "P-AUROC": [np.nan] * 4})
    out = plots.write_report(tmp_path, table, [(png1, "Scores per class"), (png2, "Polar")], title="My run")
    assert out == tmp_path / "report.md"
    text = out.read_text()
    assert text.startswith("# My run\n")
    assert "![Scores per class](figures/scores.png)" in text and "*Scores per class*" in text
    assert "![Polar](polar.png)" in text
    for name in CLASSES:
        assert f"| {name} |" in text
    assert "| separate | bottle | 99.12 |  |" in text and "| separate | metal_nut |  |  |" in text
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 4 and len({line.count("|") for line in rows}) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures", "polar.png", "report.md"]


def test_importing_plots_does_not_import_torch():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", "import utils.plots, sys; print('torch' in sys.modules,"
                             " 'sklearn' in sys.modules, 'pandas' in sys.modules)"],
                            cwd=root, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False", "False"]


def test_identical_roc_curves_both_show(rng, tmp_path):
    scores, labels = labelled_scores(rng)
    out = plots.roc_curves(tmp_path / "roc.png", {"mixed": {"none": (scores, labels), "cada": (scores, labels)}})
    with Image.open(out) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    colours = [np.round(np.array(plots.matplotlib.colormaps["tab10"](i)[:3]) * 255) for i in range(2)]
    # each line's own colour is drawn somewhere beyond its legend swatch: the later, thinner line on the first
    counts = [(np.abs(pixels - colour).sum(axis=2) < 30).sum() for colour in colours]
    assert min(counts) > 200, counts
