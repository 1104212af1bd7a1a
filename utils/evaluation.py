"""The one evaluation of train_mvtec.py: a model's raw test maps per class, optionally calibrated by
an alignment, then blurred, scored and measured per class (rows and their mean) and pooled over
every class (the absolute-unified `mixed` row). Pure functions of tensors; no file I/O, no printing."""
from dataclasses import dataclass

import torch

from models.cada import calibrate, map_statistics
from utils.maps import gaussian_blur, image_scores, upsample
from utils.metrics import compute_metrics


@dataclass
class ClassMaps:
    """One class's test set as the frozen base model sees it: raw maps (N, H, W) at the output size
    before any blur, labels (N,), masks (N, H, W) bool, and the alignment head's inputs (or None)."""
    maps: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    features: torch.Tensor = None
    probe: torch.Tensor = None  # per image, whatever collect_maps' probe returned (the figures' NoCo polar data)


def collect_maps(model, batches, size, head_input=None, probe=None):
    """ClassMaps of a frozen model over (model input, labels, masks) batches: its maps upsampled to
    size x size, before the blur, on the CPU; with head_input(model, model_input), the alignment
    head's inputs too; with probe(model, model_input, raw maps), whatever it returns per image."""
    maps, labels, masks, features, probed = [], [], [], [], []
    for model_input, label, mask in batches:
        maps.append(model.anomaly_map(model_input).float())
        labels.append(label)
        masks.append(mask)
        if head_input is not None:
            features.append(head_input(model, model_input).float().cpu())
        if probe is not None:
            with torch.no_grad():
                probed.append(probe(model, model_input, maps[-1]).cpu())
    return ClassMaps(upsample(torch.cat(maps), size).cpu(), torch.cat(labels), torch.cat(masks),
                     torch.cat(features) if features else None, torch.cat(probed) if probed else None)


def correlation(a, b):
    """Pearson correlation of two (N,) tensors; NaN when either is constant (class-wide estimates)."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denominator = (a.norm() * b.norm()).item()
    return (a @ b).item() / denominator if denominator > 0 else float("nan")


def _spread(x):
    return x.std().item() if len(x) > 1 else 0.0


def alignment_statistics(tested, alignment):
    """Per class of {class: ClassMaps}: the true u (mean of the images' map means) and gamma (mean
    of their maxima) of its normal test images beside the alignment's estimates for those images
    (their mean), the spread over those images of the true per-image u and of its estimate, and
    how well the estimate follows the true per-image u (their correlation)."""
    rows = []
    for index, (name, class_maps) in enumerate(tested.items()):
        normal = class_maps.labels == 0
        true = map_statistics(class_maps.maps[normal])
        features = None if class_maps.features is None else class_maps.features[normal]
        u, gamma = alignment.statistics(features, torch.full((int(normal.sum()),), index))
        rows.append({"class": name, "u_test_normal": true["mean"].mean().item(),
                     "gamma_test_normal": true["max"].mean().item(), "u_estimated": u.mean().item(),
                     "gamma_estimated": gamma.mean().item(), "u_test_normal_std": _spread(true["mean"]),
                     "u_estimated_std": _spread(u), "u_correlation": correlation(true["mean"], u)})
    return rows


def scored(maps, cfg):
    """Blur (cfg.blur_sigma, cfg.blur_kernel) and image scores (cfg.image_score, cfg.top_fraction)."""
    maps = gaussian_blur(maps, cfg.blur_sigma, kernel_size=cfg.blur_kernel).cpu()
    return maps, image_scores(maps, cfg.image_score, cfg.top_fraction)


def aligned_maps(class_maps, alignment, class_index):
    """The raw maps of one class calibrated by `alignment` (models.cada.Alignment; None = as they are).
    class_index is read by the class-aware alignment only."""
    if alignment is None or alignment.kind == "none":
        return class_maps.maps
    labels = torch.full((len(class_maps.maps),), class_index, dtype=torch.long)
    u, gamma = alignment.statistics(class_maps.features, labels)
    return calibrate(class_maps.maps, u, gamma)


def evaluate(tested, cfg, alignment=None, pooled=True, keep=None):
    """Metrics per class of {class: ClassMaps} (in order; a class's index is its position) and, with
    pooled, of every test image of every class in one pool (None otherwise). Returns
    ({class: metrics}, pooled metrics, {class: {"scores": image scores, "maps": final maps of the
    images keep[class] names (for the figures; None without keep)}})."""
    per_class, scores_of, pool = {}, {}, {"scores": [], "labels": [], "maps": [], "masks": []}
    for index, (name, class_maps) in enumerate(tested.items()):
        maps, scores = scored(aligned_maps(class_maps, alignment, index), cfg)
        per_class[name] = compute_metrics(scores, class_maps.labels, maps, class_maps.masks)
        scores_of[name] = {"scores": scores, "maps": None if keep is None else maps[keep[name]].clone()}
        if pooled:
            for key, value in zip(pool, (scores, class_maps.labels, maps, class_maps.masks)):
                pool[key].append(value)
    if not pooled:
        return per_class, None, scores_of
    pool = {key: torch.cat(values) for key, values in pool.items()}
    return per_class, compute_metrics(pool["scores"], pool["labels"], pool["maps"], pool["masks"]), scores_of
