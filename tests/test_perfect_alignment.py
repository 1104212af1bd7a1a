"""The `ideal` row: a perfect alignment's pooled AUROCs, the per-class metrics weighted by counted anomalies."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from utils.evaluation import ClassMaps, evaluate
from utils.metrics import perfect_alignment_reference
from utils.results import model_rows

NO_BLUR = SimpleNamespace(eval_size=0, blur_sigma=0, blur_kernel=0, image_score="max", top_fraction=0.01)
SIZE = 8


def class_maps(seed, n_normal, n_anomalous, strength, level=0.0):
    """Standard normal pixel scores raised by `level` everywhere; each anomalous image has a 2 x 2 to 4 x 4 region
    raised by `strength` more (its mask)."""
    generator = torch.Generator().manual_seed(seed)
    n = n_normal + n_anomalous
    maps = torch.randn(n, SIZE, SIZE, generator=generator, dtype=torch.float64) + level
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    for i in range(n_normal, n):
        side = 2 + i % 3
        top, left = (int(v) for v in torch.randint(0, SIZE - side + 1, (2,), generator=generator))
        masks[i, top:top + side, left:left + side] = True
    maps[masks] += strength
    return ClassMaps(maps, torch.cat([torch.zeros(n_normal), torch.ones(n_anomalous)]), masks)


def table_rows(tested, cfg=NO_BLUR):
    per_class, pooled, _ = evaluate(tested, cfg)
    rows = model_rows(per_class, pooled, "unified", None, align="none")
    return per_class, {row["class"]: row for row in rows}


# Three classes whose normal scores follow one distribution, with different anomaly counts and strengths.
UNBALANCED = {"few": (0, 300, 30, 0.4), "some": (1, 300, 90, 1.0), "many": (2, 300, 270, 2.5)}


def test_mixed_equals_ideal_when_every_class_has_the_same_normal_scores():
    tested = {name: class_maps(*spec) for name, spec in UNBALANCED.items()}
    per_class, rows = table_rows(tested)
    assert rows["ideal"]["setting"] == rows["mixed"]["setting"] == "absolute-unified"
    mean_i_auroc = np.mean([m["I-AUROC"] for m in per_class.values()]) * 100
    mean_p_auroc = np.mean([m["P-AUROC"] for m in per_class.values()]) * 100
    # the plain mean is far from the pooled value, the counted weighting is within sampling error of it
    assert rows["mixed"]["I-AUROC"] - mean_i_auroc > 8 and rows["mixed"]["P-AUROC"] - mean_p_auroc > 8
    assert rows["ideal"]["I-AUROC"] == pytest.approx(rows["mixed"]["I-AUROC"], abs=1.5)
    assert rows["ideal"]["P-AUROC"] == pytest.approx(rows["mixed"]["P-AUROC"], abs=1.0)
    assert all(rows["ideal"][m] is None for m in ("I-AP", "P-AP", "AUPRO"))
    assert "FAR@thr" not in rows["ideal"]


def test_shifting_one_class_lowers_mixed_and_leaves_ideal_unchanged():
    tested = {name: class_maps(*spec) for name, spec in UNBALANCED.items()}
    _, before = table_rows(tested)
    shifted = dict(tested, few=class_maps(*UNBALANCED["few"], level=3.0))  # every score of one class raised by 3
    _, after = table_rows(shifted)
    assert before["mixed"]["I-AUROC"] - after["mixed"]["I-AUROC"] > 5
    assert before["mixed"]["P-AUROC"] - after["mixed"]["P-AUROC"] > 5
    for metric in ("I-AUROC", "P-AUROC"):
        assert after["ideal"][metric] == pytest.approx(before["ideal"][metric], abs=1e-9)


def test_the_weights_are_counted_anomalous_images_and_pixels_at_the_evaluation_size():
    tested = {"a": class_maps(3, 40, 10, 1.0), "b": class_maps(4, 40, 20, 0.5)}
    upsampled = SimpleNamespace(**{**vars(NO_BLUR), "eval_size": 2 * SIZE})
    per_class, rows = table_rows(tested, upsampled)
    assert [per_class[c]["anomalous images"] for c in "ab"] == [10, 20]
    pixels = [4 * int(tested[c].masks.sum()) for c in "ab"]  # nearest-neighbour masks at twice the side
    assert [per_class[c]["anomalous pixels"] for c in "ab"] == pixels
    a, b = per_class["a"], per_class["b"]
    assert rows["ideal"]["I-AUROC"] == pytest.approx(100 * (a["I-AUROC"] + 2 * b["I-AUROC"]) / 3, abs=1e-9)
    assert rows["ideal"]["P-AUROC"] == pytest.approx(
        100 * (pixels[0] * a["P-AUROC"] + pixels[1] * b["P-AUROC"]) / sum(pixels), abs=1e-9)
    assert rows["a"]["I-AUROC"] == pytest.approx(100 * a["I-AUROC"])  # the same numbers the table prints


def test_the_reference_weighs_by_the_counts_and_refuses_metrics_without_them():
    per_class = {"a": {"I-AUROC": 0.6, "P-AUROC": 0.5, "anomalous images": 1, "anomalous pixels": 100},
                 "b": {"I-AUROC": 0.9, "P-AUROC": 0.8, "anomalous images": 2, "anomalous pixels": 300}}
    reference = perfect_alignment_reference(per_class)
    assert reference["I-AUROC"] == pytest.approx(0.8) and reference["P-AUROC"] == pytest.approx(0.725)
    assert reference["I-AP"] is None and reference["AUPRO"] is None
    no_pixels = {c: {**m, "P-AUROC": None} for c, m in per_class.items()}
    assert perfect_alignment_reference(no_pixels)["P-AUROC"] is None
    with pytest.raises(ValueError, match="the metrics of b lack the count 'anomalous images'"):
        perfect_alignment_reference({**per_class, "b": {"I-AUROC": 0.9, "P-AUROC": 0.8, "anomalous pixels": 3}})
