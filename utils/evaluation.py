"""The one evaluation of train_mvtec.py: a model's raw test maps per class, optionally calibrated by
an alignment, then blurred, scored and measured per class (rows and their mean) and pooled over
every class (the absolute-unified `mixed` row); each class's anomalous images and pixels are counted,
the weights of the perfect-alignment reference (utils.metrics.perfect_alignment_reference, the `ideal`
row). Pure functions of tensors; no file I/O, no printing."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.cada import calibrate, map_statistics
from utils.maps import PostProcessor
from utils.metrics import REFERENCE_WEIGHTS, compute_metrics
from utils.thresholds import alarm_rates, threshold_entry

PIXEL_SAMPLES = 2000  # per class, of its normal and of its anomalous test pixels: kept for the pixel-score figure


@dataclass
class ClassMaps:
    """One class's test set as the frozen base model sees it: raw maps (N, H, W) at the output size
    before any blur, labels (N,), masks (N, H, W) bool, and the alignment head's inputs (or None)."""
    maps: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    features: torch.Tensor = None
    probe: torch.Tensor = None  # per image, whatever collect_maps' probe returned (the figures' NoCo polar data)


def collect_maps(model, batches, head_input=None, probe=None):
    """ClassMaps of a frozen model over (model input, labels, masks) batches: its maps (anomaly_map gives
    them at the input size, before the blur), on the CPU; with head_input(model, model_input), the
    alignment head's inputs too; with probe(model, model_input), whatever it returns per image."""
    maps, labels, masks, features, probed = [], [], [], [], []
    for model_input, label, mask in batches:
        maps.append(model.anomaly_map(model_input).float().cpu())
        if maps[-1].shape[-2:] != mask.shape[-2:]:
            raise RuntimeError(f"{type(model).__name__}.anomaly_map gave {tuple(maps[-1].shape[-2:])} maps for "
                               f"{tuple(mask.shape[-2:])} inputs: every method's maps come at the input size")
        labels.append(label)
        masks.append(mask)
        with torch.no_grad():
            if head_input is not None:
                features.append(head_input(model, model_input).float().cpu())
            if probe is not None:
                probed.append(probe(model, model_input).cpu())
    return ClassMaps(torch.cat(maps), torch.cat(labels), torch.cat(masks),
                     torch.cat(features) if features else None, torch.cat(probed) if probed else None)


def head_training_table(seen):
    """What the alignment heads learn from, per training image of each class (`seen`: the classes'
    ClassMaps of their training images, in class order): its map's statistics (mean, max, std), its
    class index (label) and, where collected, the head's input (features)."""
    stats = {key: torch.cat([map_statistics(m.maps)[key] for m in seen]) for key in ("mean", "max", "std")}
    table = {**stats, "label": torch.cat([torch.full((len(m.maps),), float(i)) for i, m in enumerate(seen)])}
    if seen[0].features is not None:
        table["features"] = torch.cat([m.features for m in seen])
    return table


def correlation(a, b):
    """Pearson correlation of two (N,) tensors; NaN when either is constant (class-wide estimates)."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denominator = (a.norm() * b.norm()).item()
    return (a @ b).item() / denominator if denominator > 0 else float("nan")


def _spread(x):
    return x.std().item() if len(x) > 1 else 0.0


def _mean_error(estimated, true):
    return (estimated.double() - true.double()).abs().mean().item() if len(true) else float("nan")


def _anomaly_auroc(estimate, labels):
    """How well a per-image estimate separates a class's anomalous test images from its normal ones (0.5: not
    at all; NaN without both kinds). Above 0.5 the estimate rises with the anomaly, and eq. 5 divides it away."""
    if labels.min() == labels.max():
        return float("nan")
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(labels.numpy(), estimate.double().numpy()))


def alignment_statistics(tested, alignment, head_table=None):
    """Per class of {class: ClassMaps}: the true u and gamma of its normal test images (the means over
    those images of what the alignment estimates per image: map mean and max, or for cada_sigma map
    mean and mean + 3 std) beside the alignment's estimates for those images (their mean), the spread
    over those images of the true per-image u and of its estimate, and how well the estimate follows
    the true per-image u (their correlation). Why an estimate fails, where `head_table` (the training
    table the alignment was fitted on) is given: the mean absolute error of u per image on the class's
    training images against its normal test images (a fit of the training images that does not carry over
    to new ones), their mean true and estimated u (a class pulled towards another's level), and how well u and
    gamma estimated on all its test images separate the anomalous ones (_anomaly_auroc)."""
    rows = []
    for index, (name, class_maps) in enumerate(tested.items()):
        normal = class_maps.labels == 0
        true_u, true_gamma = alignment.spec.targets(map_statistics(class_maps.maps[normal]))
        all_u, all_gamma = alignment.statistics(class_maps.features, torch.full((len(class_maps.labels),), index))
        u, gamma = all_u[normal], all_gamma[normal]  # per image: the normal ones' estimates, not estimated twice
        row = {"class": name, "u_test_normal": true_u.mean().item(),
               "gamma_test_normal": true_gamma.mean().item(), "u_estimated": u.mean().item(),
               "gamma_estimated": gamma.mean().item(), "u_test_normal_std": _spread(true_u),
               "u_estimated_std": _spread(u), "u_correlation": correlation(true_u, u)}
        row.update(u_anomaly_auroc=_anomaly_auroc(all_u, class_maps.labels),
                   gamma_anomaly_auroc=_anomaly_auroc(all_gamma, class_maps.labels))
        if head_table is not None:
            rows_of_class = head_table["label"].long() == index
            train_u, _ = alignment.spec.targets({key: head_table[key][rows_of_class] for key in ("mean", "max", "std")})
            train_features = head_table["features"][rows_of_class] if "features" in head_table else None
            estimated_train_u, _ = alignment.statistics(train_features, torch.full((len(train_u),), index))
            row.update(u_train=train_u.mean().item(), u_estimated_train=estimated_train_u.mean().item(),
                       u_train_error=_mean_error(estimated_train_u, train_u), u_test_error=_mean_error(u, true_u))
        rows.append({**row, **alignment.record})
    return rows


def scored(maps, cfg, u=None, gamma=None):
    """(final maps, image scores) of raw (N, H, W) maps by the run's PostProcessor (utils.maps: calibrated by
    (u, gamma) if given, resized to cfg.eval_size if set, blurred, scored), on the CPU."""
    return PostProcessor.of(cfg).chunked(maps, u, gamma)


def eval_masks(masks, cfg):
    """(N, H, W) bool masks at the size scored() gives the maps: nearest-neighbour to cfg.eval_size, if set."""
    if not getattr(cfg, "eval_size", 0):
        return masks
    return F.interpolate(masks[:, None].float(), size=(cfg.eval_size,) * 2, mode="nearest")[:, 0].bool()


def estimates(class_maps, alignment, class_index):
    """The (u, gamma) per image that `alignment` (models.cada.Alignment) calibrates one class's maps by, or
    (None, None): no alignment, or one that does not calibrate. class_index is read by the kinds that need
    labels only."""
    if alignment is None or not alignment.spec.calibrates:
        return None, None
    labels = torch.full((len(class_maps.maps),), class_index, dtype=torch.long)
    return alignment.statistics(class_maps.features, labels)


def aligned_maps(class_maps, alignment, class_index):
    """The raw maps of one class calibrated by `alignment` (None = as they are)."""
    u, gamma = estimates(class_maps, alignment, class_index)
    return class_maps.maps if u is None else calibrate(class_maps.maps, u, gamma)


def sample_pixels(masks, n, seed):
    """Flat indices into (N, H, W) masks of n normal and n anomalous pixels (all of a kind that has
    fewer), each kind in ascending order, drawn without replacement by a generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    flat = masks.flatten()
    drawn = []
    for kind in (~flat, flat):
        where = kind.nonzero().flatten()
        drawn.append(where[torch.randperm(len(where), generator=generator)[:n]].sort().values)
    return torch.cat(drawn)


def figure_data(maps, masks, shown, pixels, seed):
    """What the figures keep of one class's final maps: the maps of the images `shown` names, each
    image's mean and max (CADA Fig. 6's colour scale), and the scores and labels of `pixels` sampled
    normal and anomalous pixels at the flat positions "pixel_index" (the pixel-score figure)."""
    flat = maps.flatten(1)
    index = sample_pixels(masks, pixels, seed)
    return {"maps": maps[shown].clone(), "image_mean": flat.mean(dim=1), "image_max": flat.amax(dim=1),
            "pixel_index": index, "pixel_scores": maps.flatten()[index].clone(), "pixel_labels": masks.flatten()[index]}


def anomaly_counts(labels, masks):
    """The counts utils.metrics.perfect_alignment_reference weighs a class's AUROCs by: its anomalous images
    (labels (N,), 1 = anomalous) and its anomalous pixels (masks (N, H, W) bool, at the evaluation size)."""
    return {REFERENCE_WEIGHTS["I-AUROC"]: int((labels == 1).sum()), REFERENCE_WEIGHTS["P-AUROC"]: int(masks.sum())}


def evaluate(tested, cfg, alignment=None, pooled=True, keep=None, pixels=PIXEL_SAMPLES):
    """Metrics per class of {class: ClassMaps} (in order; a class's index is its position), each with the
    class's counts of anomalous test images and of anomalous mask pixels at the evaluation size (the keys of
    utils.metrics.REFERENCE_WEIGHTS), and, with pooled, of every test image of every class in one pool (None
    otherwise). Returns
    ({class: metrics}, pooled metrics, {class: {"scores": image scores, and with keep ({class: image
    indices}) the figure_data of its final maps, its pixel sample seeded by the class's index, so
    every alignment samples the same pixels}})."""
    per_class, kept, pool = {}, {}, {"scores": [], "labels": [], "maps": [], "masks": []}
    for index, (name, class_maps) in enumerate(tested.items()):
        maps, scores = scored(class_maps.maps, cfg, *estimates(class_maps, alignment, index))
        masks = eval_masks(class_maps.masks, cfg)
        per_class[name] = {**compute_metrics(scores, class_maps.labels, maps, masks),
                           **anomaly_counts(class_maps.labels, masks)}
        kept[name] = {"scores": scores}
        if keep is not None:
            kept[name].update(figure_data(maps, masks, keep[name], pixels, index))
        if pooled:
            for key, value in zip(pool, (scores, class_maps.labels, maps, masks)):
                pool[key].append(value)
    if not pooled:
        return per_class, None, kept
    pool = {key: torch.cat(values) for key, values in pool.items()}
    return per_class, compute_metrics(pool["scores"], pool["labels"], pool["maps"], pool["masks"]), kept


def held_out_thresholds(held, cfg, alignment, false_alarm_rate):
    """thresholds.json's entry from the held-out normal images of one model's classes ({class: ClassMaps}, in
    the order of its test classes), scored exactly as the test set is (scored: the same PostProcessor): one
    image and one pixel threshold over every class of the model, each with the rank it reached
    (utils.thresholds.threshold_entry), and "held_out_images"."""
    scores, pixels = [], []
    for index, class_maps in enumerate(held.values()):
        maps, image = scored(class_maps.maps, cfg, *estimates(class_maps, alignment, index))
        scores.append(image)
        pixels.append(maps.flatten())
    scores = torch.cat(scores)
    return {**threshold_entry(scores, torch.cat(pixels), false_alarm_rate), "held_out_images": len(scores)}


def add_alarm_rates(per_class, pooled, kept, tested, threshold):
    """Each metrics dict of `evaluate` gains FAR@thr and recall@thr at the image `threshold` (None: both
    None, the table's columns stay empty); the pooled dict is measured on every class's images at once."""
    labels = {name: class_maps.labels for name, class_maps in tested.items()}
    for name, metrics in per_class.items():
        metrics.update(alarm_rates(kept[name]["scores"], labels[name], threshold) if threshold is not None
                       else {"FAR@thr": None, "recall@thr": None})
    if pooled is not None:
        pooled.update(alarm_rates(torch.cat([kept[name]["scores"] for name in per_class]),
                                  torch.cat(list(labels.values())), threshold) if threshold is not None
                      else {"FAR@thr": None, "recall@thr": None})


def evaluate_thresholded(tested, held, cfg, alignment=None, pooled=True, keep=None):
    """`evaluate` of the test maps with the alarm rates at the image threshold of the held-out normal images
    (`held`, {class: ClassMaps}; None: no threshold, the rates stay empty): (per class, pooled, kept, the
    held_out_thresholds entry or None)."""
    per_class, pooled, kept = evaluate(tested, cfg, alignment, pooled=pooled, keep=keep)
    entry = None if held is None else held_out_thresholds(held, cfg, alignment, cfg.false_alarm_rate)
    add_alarm_rates(per_class, pooled, kept, tested, None if entry is None else entry["image"])
    return per_class, pooled, kept, entry
