"""Anomaly-detection metrics: image and pixel AUROC and AP, AUPRO, and the perfect-alignment reference of a
pooled (absolute-unified) test set. Pure functions.

AUROC and AP equal scikit-learn's `roc_auc_score` and `average_precision_score`, ties included, but
are computed without sorting all scores together: the negatives and the (few) positives are sorted
separately, and for each distinct positive score v a binary search in the sorted negatives counts
the negatives >= v and > v. Those counts give the exact ROC polyline and precision at every
threshold where recall changes. Inputs may be numpy arrays or torch tensors; CUDA tensors are
processed on their GPU with the same code (only the masks cross to the CPU, to label AUPRO's regions).
"""
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Optional

import numpy as np
import torch
from scipy import ndimage

AUPRO_FPR_LIMIT = 0.3
METRIC_KEYS = ("I-AUROC", "I-AP", "P-AUROC", "P-AP", "AUPRO")
# 8-connectivity within each map (no links between maps), as the MVTec AD reference evaluation
# (Bergmann et al.), which labels regions with scipy.ndimage.label and a 3x3 structure of ones.
_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_REGION_STRUCTURE[1] = True
_MAPS_PER_LABELING = 64
_MAX_SORT_THREADS = 8  # more chunks cost more binary searches than they save in sorting


def compute_metrics(image_scores, image_labels, pixel_scores=None, pixel_masks=None):
    """Image and pixel metrics of one test set, as fractions in [0, 1].

    image_scores, image_labels: shape (N,), label 1 = anomalous. pixel_scores, pixel_masks: shape
    (N, H, W) or (N, 1, H, W), mask 1 = anomalous pixel; when they are not given, P-AUROC, P-AP and
    AUPRO are None. AUPRO is dataset-level (see `aupro`). Raises ValueError for invalid inputs and for a
    test set lacking normal or anomalous images (or pixels), on which AUROC is undefined.
    """
    image_scores, image_labels = _as_tensor(image_scores), _as_tensor(image_labels)
    if image_scores.ndim != 1 or image_scores.shape != image_labels.shape:
        raise ValueError(f"image_scores and image_labels must both have shape (N,), got "
                         f"{tuple(image_scores.shape)} and {tuple(image_labels.shape)}")
    image = _threshold_counts(*_split_sorted(image_scores, image_labels, "image_scores", "image_labels", "image"))
    metrics = dict.fromkeys(METRIC_KEYS)
    metrics.update({"I-AUROC": _area_under(*_roc_curve(image)), "I-AP": _average_precision(image)})
    if pixel_scores is None and pixel_masks is None:
        return metrics
    pixel_scores, pixel_masks = _pixel_maps(pixel_scores, pixel_masks)
    if len(pixel_scores) != len(image_scores):
        raise ValueError(f"pixel maps are given for {len(pixel_scores)} images "
                         f"but image_scores has {len(image_scores)}")
    pixel = _pixel_counts(pixel_scores, pixel_masks)
    metrics.update({"P-AUROC": _area_under(*_roc_curve(pixel)), "P-AP": _average_precision(pixel),
                    "AUPRO": _aupro(pixel)})
    return metrics


# The perfect-alignment reference weighs each class's AUROC by these counts (utils.evaluation.evaluate adds them
# to each class's metrics): its anomalous test images, and its anomalous mask pixels at the evaluation size.
REFERENCE_WEIGHTS = {"I-AUROC": "anomalous images", "P-AUROC": "anomalous pixels"}


def perfect_alignment_reference(per_class):
    """The pooled AUROCs of an alignment that made every class's normal scores follow one distribution F (the
    table's `ideal` row): each class's AUROC weighted by its count in REFERENCE_WEIGHTS. The pooled AUROC is
    P(s_a > s_n) for a random anomalous a and a random normal n of the pool, which is sum_c (A_c / A)
    P(s_a > s_n | a from class c) with A_c the anomalies of class c; if every class's normal scores follow F,
    s_n follows F whatever its class, so each term is class c's own AUROC (ties count half on both sides).

    per_class: {class: metrics dict (fractions) with the REFERENCE_WEIGHTS counts}. Returns a metrics dict in
    which I-AP, P-AP and AUPRO are None (no such reference is derived for them), and a metric any class
    lacks is None too."""
    reference = dict.fromkeys(METRIC_KEYS)
    for metric, weight_key in REFERENCE_WEIGHTS.items():
        values = [metrics.get(metric) for metrics in per_class.values()]
        missing = [name for name, metrics in per_class.items() if weight_key not in metrics]
        if missing:
            raise ValueError(f"the metrics of {', '.join(missing)} lack the count {weight_key!r} "
                             "that weighs them in the perfect-alignment reference")
        if not values or any(value is None for value in values):
            continue
        weights = [metrics[weight_key] for metrics in per_class.values()]
        reference[metric] = sum(w * v for w, v in zip(weights, values)) / sum(weights)
    return reference


def auroc_ap(scores, labels):
    """(AUROC, AP) of scores against binary labels of the same shape (any shape; flattened)."""
    scores, labels = _as_tensor(scores), _as_tensor(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"scores shape {tuple(scores.shape)} does not match labels shape {tuple(labels.shape)}")
    counts = _threshold_counts(*_split_sorted(scores, labels, "scores", "labels", "sample"))
    return _area_under(*_roc_curve(counts)), _average_precision(counts)


def aupro(pixel_scores, pixel_masks):
    """Normalised area under the per-region-overlap curve up to FPR 0.3 (dataset level).

    Regions are the 8-connected components of every ground-truth mask, pooled over the test set.
    PRO(t) is the mean over regions of the fraction of the region's pixels with score >= t; FPR(t)
    is the fraction of normal pixels (all images) with score >= t. PRO is integrated over FPR from
    0 to 0.3 with the trapezoid rule (interpolating at FPR = 0.3) and divided by 0.3, so a perfect
    map scores 1. This is a ROC curve in which each anomalous pixel weighs 1 / (|region| * n_regions).
    """
    return _aupro(_pixel_counts(*_pixel_maps(pixel_scores, pixel_masks)))


class _ThresholdCounts(NamedTuple):
    """Counts at each distinct positive score v, in descending order; "anomalous" means score >= v."""
    tp: torch.Tensor  # positives with score >= v (int64)
    fp: torch.Tensor  # negatives with score >= v
    fp_strictly_above: torch.Tensor  # negatives with score > v
    n_negatives: int
    region_weighted_tp: Optional[torch.Tensor]  # sum of the AUPRO weights of the positives with score >= v


def _as_tensor(x):
    if isinstance(x, torch.Tensor):
        return x.detach()
    x = np.asarray(x)
    return torch.from_numpy(x if x.flags.writeable else x.copy())  # torch warns on read-only arrays


def _pixel_maps(pixel_scores, pixel_masks):
    if (pixel_scores is None) != (pixel_masks is None):
        raise ValueError("pixel_scores and pixel_masks must be given together")
    scores, masks = _as_tensor(pixel_scores), _as_tensor(pixel_masks)
    scores, masks = (x[:, 0] if x.ndim == 4 and x.shape[1] == 1 else x for x in (scores, masks))
    if scores.ndim != 3 or scores.shape != masks.shape:
        raise ValueError(f"pixel_scores shape {tuple(_as_tensor(pixel_scores).shape)} and pixel_masks shape "
                         f"{tuple(_as_tensor(pixel_masks).shape)} must be equal, (N, H, W) or (N, 1, H, W)")
    return scores, masks.to(scores.device)


def _pixel_counts(scores, masks):
    split = _split_sorted(scores, masks, "pixel_scores", "pixel_masks", "pixel")
    weights = _region_weights((masks == 1).cpu().numpy()).to(scores.device)
    return _threshold_counts(*split, positive_weights=weights)


def _split_sorted(scores, labels, score_name, label_name, unit):
    """Sorted chunks of the negatives' scores and the positives' scores, validated and flattened."""
    if not scores.is_floating_point():
        scores = scores.double()
    elif scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    scores, labels = scores.reshape(-1), labels.reshape(-1).to(scores.device)
    if scores.is_cuda:
        negatives, positives = _split_chunk(scores, labels)
        negative_chunks = [negatives]
    else:  # numpy is several times faster than torch here on CPU and releases the GIL: one chunk per thread
        n_chunks = min(torch.get_num_threads(), _MAX_SORT_THREADS)
        with ThreadPoolExecutor(n_chunks) as pool:
            parts = list(pool.map(_split_chunk, np.array_split(scores.numpy(), n_chunks),
                                  np.array_split(labels.numpy(), n_chunks)))
        negative_chunks = [torch.from_numpy(negatives) for negatives, _ in parts if len(negatives)]
        positives = torch.from_numpy(np.concatenate([positives for _, positives in parts]))
    if sum(map(len, negative_chunks)) + len(positives) != len(scores):
        raise ValueError(f"{label_name} must contain only 0 and 1")
    for kind, count in (("anomalous", len(positives)), ("normal", sum(map(len, negative_chunks)))):
        if count == 0:
            raise ValueError(f"the test set has no {kind} {unit}s: AUROC is undefined")
    # Sorting puts NaN and +-inf at the ends, so the ends of each sorted chunk reveal them.
    ends = torch.cat([c[[0, -1]] for c in negative_chunks] + [positives])
    if not bool(torch.isfinite(ends).all()):
        raise ValueError(f"{score_name} contains NaN or inf")
    return negative_chunks, positives


def _split_chunk(scores, labels):
    """(sorted scores of the negatives, scores of the positives) of flat numpy arrays or torch tensors."""
    is_bool = labels.dtype == (torch.bool if isinstance(labels, torch.Tensor) else np.bool_)
    positives = scores[labels if is_bool else labels == 1]
    negatives = scores[~labels if is_bool else labels == 0]  # labels outside {0, 1} land in neither
    if isinstance(negatives, torch.Tensor):
        return torch.sort(negatives).values, positives
    negatives.sort()
    return negatives, positives


def _region_weights(anomalous):
    """1 / (|region| * n_regions) for each anomalous pixel of the (N, H, W) masks, in row-major order."""
    region_ids, n_regions = [], 0
    for start in range(0, len(anomalous), _MAPS_PER_LABELING):
        masks = anomalous[start:start + _MAPS_PER_LABELING]
        labels, n = ndimage.label(masks, structure=_REGION_STRUCTURE)
        region_ids.append(labels[masks].astype(np.int64) + (n_regions - 1))
        n_regions += n
    region_of_pixel = np.concatenate(region_ids)
    region_sizes = np.bincount(region_of_pixel, minlength=n_regions)
    return torch.from_numpy(1.0 / (region_sizes[region_of_pixel] * float(n_regions)))


def _threshold_counts(negative_chunks, positives, positive_weights=None):
    if positive_weights is None and not positives.is_cuda:  # numpy's sort, without indices, is faster on CPU
        values = torch.from_numpy(np.sort(positives.numpy())[::-1].copy())
    else:
        values, order = torch.sort(positives, descending=True)
    last_of_value = torch.ones_like(values, dtype=torch.bool)
    last_of_value[:-1] = values[1:] != values[:-1]
    thresholds = values[last_of_value]
    tp = torch.nonzero(last_of_value)[:, 0] + 1
    fp = sum(len(chunk) - torch.searchsorted(chunk, thresholds, side="left") for chunk in negative_chunks)
    fp_strictly_above = sum(len(chunk) - torch.searchsorted(chunk, thresholds, side="right")
                            for chunk in negative_chunks)
    weighted_tp = None if positive_weights is None else positive_weights[order].double().cumsum(0)[last_of_value]
    return _ThresholdCounts(tp, fp, fp_strictly_above, sum(map(len, negative_chunks)), weighted_tp)


def _roc_curve(counts):
    """Exact ROC polyline (FPR, TPR) over all thresholds.

    Lowering the threshold from one distinct positive score to the next, v, first passes the
    negatives strictly between them (a horizontal step to fp_strictly_above(v)), then the scores
    equal to v, positives and negatives together (a diagonal to (fp(v), tp(v))), as sklearn's curve.
    """
    tp = counts.tp.double()
    tp_before = torch.cat([tp.new_zeros(1), tp[:-1]])
    fpr = torch.stack([counts.fp_strictly_above, counts.fp], 1).flatten().double() / counts.n_negatives
    tpr = torch.stack([tp_before, tp], 1).flatten() / tp[-1]
    zero, one = fpr.new_zeros(1), fpr.new_ones(1)
    return torch.cat([zero, fpr, one]), torch.cat([zero, tpr, one])


def _area_under(x, y, x_max=1.0):
    """Trapezoid area under the polyline (x, y), x non-decreasing from 0, up to x_max (y interpolated there)."""
    end = int(torch.searchsorted(x, x.new_tensor([x_max])))  # first point with x >= x_max
    if end < len(x):
        y_at_max = y[end - 1] + (y[end] - y[end - 1]) * (x_max - x[end - 1]) / (x[end] - x[end - 1])
        x, y = torch.cat([x[:end], x.new_tensor([x_max])]), torch.cat([y[:end], y_at_max.reshape(1)])
    return float(torch.trapezoid(y, x))


def _average_precision(counts):
    """sklearn's AP: sum over thresholds of (R_n - R_{n-1}) P_n; recall only changes at positive scores."""
    tp = counts.tp.double()
    new_positives = torch.diff(tp, prepend=tp.new_zeros(1))
    return float((new_positives * tp / (tp + counts.fp)).sum() / tp[-1])


def _aupro(counts):
    fpr, pro = _roc_curve(counts._replace(tp=counts.region_weighted_tp))  # PRO is the region-weighted TPR
    return _area_under(fpr, pro, AUPRO_FPR_LIMIT) / AUPRO_FPR_LIMIT
