import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from utils.metrics import METRIC_KEYS, aupro, auroc_ap, compute_metrics

TOLERANCE = 1e-6


def _quantised(scores, tie_step):
    """Scores rounded to multiples of tie_step (None: unchanged), so that many of them tie."""
    return scores if tie_step is None else np.round(scores / tie_step) * tie_step


def _labelled_scores(rng, n, tie_step=None):
    """Scores that separate the classes clearly but not perfectly."""
    labels = rng.random(n) < 0.3
    scores = _quantised(rng.normal(size=n) + 1.2 * labels, tie_step)
    return scores.astype(np.float32), labels


def _maps_with_regions(rng, n_maps=6, size=24, tie_step=None):
    """(scores, masks) of shape (n_maps, size, size): anomalous maps hold 1-3 rectangles, some of them
    touching only diagonally, and the first map is normal."""
    masks = np.zeros((n_maps, size, size), dtype=bool)
    for mask in masks[1:]:
        for _ in range(rng.integers(1, 4)):
            top, left = rng.integers(0, size - 4, 2)
            height, width = rng.integers(1, 6, 2)
            mask[top:top + height, left:left + width] = True
        corner = rng.integers(0, size - 1, 2)
        mask[corner[0], corner[1]] = mask[corner[0] + 1, corner[1] + 1] = True
    strength = rng.uniform(0.2, 2.0, size=(n_maps, 1, 1))
    scores = _quantised(rng.normal(size=masks.shape) + strength * masks, tie_step)
    return scores.astype(np.float32), masks


def _reference_aupro(scores, masks, fpr_limit=0.3):
    """Straightforward AUPRO: PRO and FPR at every distinct threshold, trapezoid up to fpr_limit."""
    regions = []
    for index, mask in enumerate(masks):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))  # 8-connectivity
        regions += [(index, labels == region) for region in range(1, n + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(scores)[::-1]:
        above = scores >= threshold
        fprs.append((above & normal).sum() / normal.sum())
        pros.append(np.mean([above[index][region].mean() for index, region in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    end = np.searchsorted(fprs, fpr_limit, side="right")  # first point beyond the limit
    x, y = list(fprs[:end]), list(pros[:end])
    if end < len(fprs) and x[-1] < fpr_limit:
        x.append(fpr_limit)
        slope = (pros[end] - pros[end - 1]) / (fprs[end] - fprs[end - 1])
        y.append(pros[end - 1] + slope * (fpr_limit - fprs[end - 1]))
    return np.trapezoid(y, x) / fpr_limit


@pytest.mark.parametrize("tie_step", [None, 0.5, 1.5])
@pytest.mark.parametrize("as_torch", [False, True])
def test_auroc_ap_equal_sklearn(tie_step, as_torch):
    rng = np.random.default_rng(0)
    scores, labels = _labelled_scores(rng, 5000, tie_step)
    expected_auroc, expected_ap = roc_auc_score(labels, scores), average_precision_score(labels, scores)
    assert 0.6 < expected_auroc < 0.95  # far from chance and from perfect: a wrong curve cannot match by luck
    if tie_step is not None:  # a few levels, each shared by anomalous and normal samples
        assert len(np.unique(scores)) < 25 and len(np.intersect1d(scores[labels], scores[~labels])) >= 3
    if as_torch:
        scores, labels = torch.from_numpy(scores), torch.from_numpy(labels.astype(np.int64))
    auroc, ap = auroc_ap(scores, labels)
    assert auroc == pytest.approx(expected_auroc, abs=TOLERANCE)
    assert ap == pytest.approx(expected_ap, abs=TOLERANCE)


def test_auroc_ap_when_all_negatives_come_first():
    # The CPU path sorts one chunk of the flattened scores per thread; here some chunks have no negatives.
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=1000), 1)
    labels = np.arange(1000) >= 300
    scores[labels] += 0.8
    auroc, ap = auroc_ap(scores, labels)
    assert auroc == pytest.approx(roc_auc_score(labels, scores), abs=TOLERANCE)
    assert ap == pytest.approx(average_precision_score(labels, scores), abs=TOLERANCE)


@pytest.mark.parametrize("tie_step", [None, 0.5])
@pytest.mark.parametrize("with_channel", [False, True])
@pytest.mark.parametrize("as_torch", [False, True])
def test_compute_metrics_equal_sklearn_and_reference(tie_step, with_channel, as_torch):
    rng = np.random.default_rng(7)
    pixel_scores, pixel_masks = _maps_with_regions(rng, tie_step=tie_step)
    image_scores, image_labels = pixel_scores.max(axis=(1, 2)), pixel_masks.any(axis=(1, 2))
    image_scores[0] = image_scores[1:].mean()  # the normal image ranks among the anomalous ones
    expected = {"I-AUROC": roc_auc_score(image_labels, image_scores),
                "I-AP": average_precision_score(image_labels, image_scores),
                "P-AUROC": roc_auc_score(pixel_masks.ravel(), pixel_scores.ravel()),
                "P-AP": average_precision_score(pixel_masks.ravel(), pixel_scores.ravel()),
                "AUPRO": _reference_aupro(pixel_scores, pixel_masks)}
    assert 0.6 < expected["P-AUROC"] < 0.95 and 0.2 < expected["AUPRO"] < 0.9
    masks = pixel_masks.astype(np.float32)
    if with_channel:
        pixel_scores, masks = pixel_scores[:, None], masks[:, None]
    if as_torch:
        image_scores, pixel_scores, masks = map(torch.from_numpy, (image_scores, pixel_scores, masks))
    metrics = compute_metrics(image_scores, image_labels.astype(np.int64), pixel_scores, masks)
    assert tuple(metrics) == METRIC_KEYS
    for key, value in metrics.items():
        assert type(value) is float
        assert value == pytest.approx(expected[key], abs=TOLERANCE), key


def test_image_only_metrics_leave_pixel_metrics_none():
    rng = np.random.default_rng(3)
    scores, labels = _labelled_scores(rng, 200)
    metrics = compute_metrics(scores, labels)
    assert metrics["P-AUROC"] is None and metrics["P-AP"] is None and metrics["AUPRO"] is None
    assert metrics["I-AUROC"] == pytest.approx(roc_auc_score(labels, scores), abs=TOLERANCE)


def test_perfect_maps_and_ranking_score_one():
    rng = np.random.default_rng(5)
    _, masks = _maps_with_regions(rng)
    image_labels = masks.any(axis=(1, 2))
    pixel_scores = masks + rng.uniform(0, 0.5, size=masks.shape)
    metrics = compute_metrics(image_labels + rng.uniform(0, 0.5, size=len(masks)), image_labels, pixel_scores, masks)
    assert metrics == pytest.approx(dict.fromkeys(METRIC_KEYS, 1.0), abs=1e-12)


def test_aupro_weighs_regions_not_pixels():
    # A 4-pixel region above every normal pixel, a 12-pixel region below them: PRO is 1/2 from FPR 0
    # to 1 (AUPRO 1/2), while only 4 of the 16 anomalous pixels are found (pixel TPR 1/4).
    scores, masks = np.zeros((1, 10, 10)), np.zeros((1, 10, 10), dtype=bool)
    masks[0, :2, :2], scores[0, :2, :2] = True, 1.0
    masks[0, 6:, 7:], scores[0, 6:, 7:] = True, -1.0
    assert aupro(scores, masks) == pytest.approx(0.5, abs=TOLERANCE)
    assert auroc_ap(scores, masks)[0] == pytest.approx(0.25, abs=TOLERANCE)


def test_aupro_interpolates_at_the_fpr_limit_through_ties():
    # Region A is above all normal pixels, region B ties with all of them: the curve jumps to PRO 1/2
    # at FPR 0, then runs straight to (1, 1); the area up to 0.3 is 0.3 * 1/2 + 0.3**2 / 4.
    scores, masks = np.zeros((1, 8, 8)), np.zeros((1, 8, 8), dtype=bool)
    masks[0, :2, :2], scores[0, :2, :2] = True, 1.0
    masks[0, 5:, 5:] = True
    assert aupro(scores, masks) == pytest.approx((0.3 * 0.5 + 0.3 ** 2 / 4) / 0.3, abs=TOLERANCE)


def test_aupro_regions_are_8_connected():
    # Pixels (0, 0) and (1, 1) touch diagonally: one region with 8-connectivity (PRO 1/2 and 0 -> 1/4),
    # two with 4-connectivity (PRO 1, 0 and 0 -> 1/3).
    scores, masks = np.zeros((1, 6, 6)), np.zeros((1, 6, 6), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 4, 4] = True
    scores[0, 0, 0], scores[0, 1, 1], scores[0, 4, 4] = 1.0, -1.0, -1.0
    assert aupro(scores, masks) == pytest.approx(0.25, abs=TOLERANCE)


@pytest.mark.parametrize("tie_step", [None, 0.5])
def test_aupro_equals_reference(tie_step):
    rng = np.random.default_rng(21)
    scores, masks = _maps_with_regions(rng, n_maps=8, size=20, tie_step=tie_step)
    expected = _reference_aupro(scores, masks)
    assert 0.2 < expected < 0.9
    value = aupro(torch.from_numpy(scores[:, None]), torch.from_numpy(masks[:, None]))
    assert value == pytest.approx(expected, abs=TOLERANCE)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_give_the_cpu_values():
    rng = np.random.default_rng(9)
    pixel_scores, pixel_masks = _maps_with_regions(rng, tie_step=0.5)
    image_scores, image_labels = pixel_scores.mean(axis=(1, 2)), pixel_masks.any(axis=(1, 2))
    on_cpu = compute_metrics(image_scores, image_labels, pixel_scores, pixel_masks)
    on_gpu = compute_metrics(*(torch.from_numpy(np.asarray(x)).cuda()
                               for x in (image_scores, image_labels, pixel_scores, pixel_masks)))
    for key in METRIC_KEYS:
        assert on_gpu[key] == pytest.approx(on_cpu[key], abs=1e-9), key


def _inputs(**changes):
    """Valid compute_metrics arguments (4 maps of 8x8), with changes[name](value) replacing some."""
    pixel_scores, pixel_masks = _maps_with_regions(np.random.default_rng(2), n_maps=4, size=8)
    inputs = {"image_scores": pixel_scores.max(axis=(1, 2)), "image_labels": pixel_masks.any(axis=(1, 2)).astype(int),
              "pixel_scores": pixel_scores, "pixel_masks": pixel_masks}
    for name, change in changes.items():
        inputs[name] = change(inputs[name])
    return inputs


def _with_value_at_column(value, column=3):
    return lambda scores: np.where(np.arange(scores.shape[-1]) == column, value, scores)


@pytest.mark.parametrize("changes, message", [
    ({"image_labels": np.zeros_like}, "the test set has no anomalous images: AUROC is undefined"),
    ({"image_labels": np.ones_like}, "the test set has no normal images: AUROC is undefined"),
    ({"pixel_masks": np.zeros_like}, "the test set has no anomalous pixels: AUROC is undefined"),
    ({"pixel_masks": np.ones_like}, "the test set has no normal pixels: AUROC is undefined"),
    ({"image_scores": lambda s: s[:3]}, "image_scores and image_labels must both have shape (N,), got (3,) and (4,)"),
    ({"pixel_masks": lambda m: m[:, :7]}, "pixel_scores shape (4, 8, 8) and pixel_masks shape (4, 7, 8)"),
    ({"pixel_scores": lambda s: s[:, None, :, :7]}, "pixel_scores shape (4, 1, 8, 7) and pixel_masks shape (4, 8, 8)"),
    ({"pixel_scores": lambda s: s[:3], "pixel_masks": lambda m: m[:3]},
     "pixel maps are given for 3 images but image_scores has 4"),
    ({"image_scores": _with_value_at_column(np.nan, column=0)}, "image_scores contains NaN or inf"),
    ({"pixel_scores": _with_value_at_column(np.nan)}, "pixel_scores contains NaN or inf"),
    ({"pixel_scores": _with_value_at_column(np.inf)}, "pixel_scores contains NaN or inf"),
    ({"pixel_scores": _with_value_at_column(-np.inf)}, "pixel_scores contains NaN or inf"),
    ({"image_labels": lambda y: y * 2}, "image_labels must contain only 0 and 1"),
    ({"pixel_masks": lambda m: m * 0.5}, "pixel_masks must contain only 0 and 1"),
    ({"pixel_masks": lambda m: None}, "pixel_scores and pixel_masks must be given together"),
    ({"pixel_scores": lambda s: None}, "pixel_scores and pixel_masks must be given together"),
])
def test_invalid_inputs_raise_a_clear_error(changes, message):
    with pytest.raises(ValueError) as error:
        compute_metrics(**_inputs(**changes))
    assert message in str(error.value)


@pytest.mark.parametrize("anomalous", [True, False])
def test_a_single_nan_pixel_is_found(anomalous):
    inputs = _inputs()
    first_pixel = tuple(index[0] for index in np.nonzero(inputs["pixel_masks"] == anomalous))
    inputs["pixel_scores"][first_pixel] = np.nan
    with pytest.raises(ValueError, match="pixel_scores contains NaN or inf"):
        compute_metrics(**inputs)
