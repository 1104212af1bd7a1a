"""--plots: what a run keeps for its figures, and the figures and report.md drawn from it.

As soon as a model is evaluated, its record goes to <run>/plot_data/<model>.pt: the image scores
and labels of every class under every alignment, a seeded sample of each class's final pixel scores
(utils.evaluation.PIXEL_SAMPLES normal and anomalous pixels at most), a few test images per class
with their final (aligned, blurred) maps and every test image's map mean and max (CADA Fig. 6's
colour scale), and for NoCo each test image's projected feature as (norm, angle to the target).
An interrupted and resumed run therefore draws every class. `write_report` draws the figures
(utils/plots.py, matplotlib's Agg backend, imported only here and only then) once the table is
final, beside the CSV, and writes report.md. Nothing here runs without --plots.
"""
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from datasets.common import IMAGENET_MEAN, IMAGENET_STD
from utils.results import atomic_write

EXAMPLES_PER_CLASS = 2  # map grid rows per class: the first anomalous test image(s), then the first normal one


def example_indices(labels, n=EXAMPLES_PER_CLASS):
    """Indices of the test images shown in the map grid: the first n - 1 anomalous and the first normal."""
    anomalous = (labels == 1).nonzero().flatten()[:max(1, n - 1)]
    normal = (labels == 0).nonzero().flatten()[:n - len(anomalous)]
    return torch.cat([anomalous, normal])


def displayable(images):
    """ImageNet-normalised (N, 3, H, W) images -> uint8 for the figures."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images.float().cpu() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)


def polar_coordinates(projected, target):
    """(N, 2): the norm of each (N, C) projected feature and its angle (radians) to the target (C,)."""
    projected, target = projected.float(), target.float().flatten().to(projected.device)
    cosine = F.cosine_similarity(projected, target[None], dim=1).clamp(-1, 1)
    return torch.stack([projected.norm(dim=1), cosine.acos()], dim=1).cpu()


def noco_polar(model, features):
    """(B, 2) polar coordinates of each image's projected NoCo feature at its highest-scoring patch."""
    projected = model.project(features).flatten(2)                      # (B, C, h * w)
    at_max = model.distance(features).flatten(1).argmax(dim=1)
    return polar_coordinates(projected[torch.arange(len(projected)), :, at_max], model.target)


def new_record(norm, unified, tested, test_sets, shown):
    """What the figures of one model need, filled by keep_evaluation per alignment: `tested` {class:
    ClassMaps of its test set}, `shown` {class: the indices of the example images drawn}."""
    classes = list(tested)
    return {"target_norm": norm, "unified": unified, "scores": {}, "pixels": {},
            "polar": {c: (tested[c].probe, tested[c].labels) for c in classes if tested[c].probe is not None},
            "examples": {"classes": [c for c in classes for _ in shown[c]], "maps": {}, "image_stats": {},
                         "images": displayable(torch.stack([test_sets[c][int(i)]["image"]
                                                            for c in classes for i in shown[c]])),
                         "masks": torch.cat([tested[c].masks[shown[c]] for c in classes])}}


def keep_evaluation(record, kind, kept, labels):
    """Put what the figures need of one evaluation under alignment `kind` into a run's record:
    `kept` is utils.evaluation.evaluate's third result (with keep), `labels` {class: test labels}."""
    record["scores"][kind] = {c: (kept[c]["scores"], y) for c, y in labels.items()}
    record["pixels"][kind] = {c: (kept[c]["pixel_scores"], kept[c]["pixel_labels"]) for c in labels}
    record["examples"]["image_stats"][kind] = {c: (kept[c]["image_mean"], kept[c]["image_max"]) for c in labels}
    record["examples"]["maps"][kind] = torch.cat([kept[c]["maps"] for c in labels]).half()


def merged(records, key):
    """{align: {class: value}} of record[key] over the records (a class's last value wins)."""
    out = {}
    for record in records:
        for align, per_class in (record.get(key) or {}).items():
            out.setdefault(align, {}).update(per_class)
    return out


def map_scales(image_stats):
    """{align: (low, high)} of {align: {class: (image means, image maxima)}}: CADA Fig. 6 draws maps "by
    mapping dataset-average image mean and image maximum" to 0 and 1, so low is the mean over every
    test image of every class of its map's mean and high the mean of its map's maximum."""
    return {align: tuple(torch.cat([stats[i].float() for stats in per_class.values()]).mean().item() for i in (0, 1))
            for align, per_class in image_stats.items()}


def save_record(run_path, model_name, record):
    path = Path(run_path) / "plot_data" / f"{model_name}.pt"
    return atomic_write(path, lambda tmp: torch.save(record, tmp))


def _caption_suffix(norm, several):
    return f" (target norm {norm:g})" if several else ""


def write_report(run_path, table_path, title, norm_study_path=None):
    """Draw every figure from <run>/plot_data and write <run>/report.md; return its path."""
    from utils import plots  # matplotlib only when asked for

    run_path = Path(run_path)
    records = [torch.load(p, weights_only=False) for p in sorted((run_path / "plot_data").glob("*.pt"))]
    norms = list(dict.fromkeys(r["target_norm"] for r in records))
    figures = []
    for norm in norms:
        group = [r for r in records if r["target_norm"] == norm]
        tag, note = (f"_norm{norm:g}" if len(norms) > 1 else ""), _caption_suffix(norm, len(norms) > 1)
        scores = merged(group, "scores")
        figures.append((plots.score_distributions(run_path / f"scores{tag}.png", scores, title="image scores" + note),
                        "Image scores of normal (dots) and anomalous (crosses) test images, one row per class on one "
                        "axis per alignment: one threshold serves every class only where the classes line up" + note))
        curves = {f"per class, align {align}": per_class for align, per_class in scores.items()}
        if any(r["unified"] for r in group):
            curves["all classes pooled (mixed)"] = {
                align: tuple(torch.cat([torch.as_tensor(v[i]) for v in per_class.values()]) for i in (0, 1))
                for align, per_class in scores.items()}
        figures.append((plots.roc_curves(run_path / f"roc{tag}.png", curves, title="ROC" + note),
                        "ROC curves per class and, for a unified model, of the pooled test set per alignment" + note))
        pixels = merged(group, "pixels")
        if pixels:
            figures.append((plots.pixel_distributions(run_path / f"pixels{tag}.png", pixels,
                                                      title="pixel scores" + note),
                            "A seeded sample of each class's test pixels (normal: dots, anomalous: crosses), one row "
                            "per class on one axis per alignment, as in the CADA appendix's pixel-level score "
                            "distributions" + note))
        examples = [r["examples"] for r in group if r.get("examples")]
        if examples:
            aligns = list(examples[0]["maps"])
            images = torch.cat([e["images"] for e in examples])
            maps = {a: torch.cat([e["maps"][a].float() for e in examples]) for a in aligns}
            masks = torch.cat([e["masks"] for e in examples])
            names = [name for e in examples for name in e["classes"]]
            figures.append((plots.map_grid(run_path / f"maps{tag}.png", images.float() / 255, maps, masks, names,
                                           map_scales(merged(examples, "image_stats")), title="anomaly maps" + note),
                            "Test images with their final maps and the ground-truth outline; as in CADA Fig. 6, each "
                            "column's dataset-average image mean is drawn as 0 and its image maximum as 1" + note))
        for record in group:
            for class_name, (coordinates, labels) in (record.get("polar") or {}).items():
                path = run_path / f"polar_{class_name}{tag}.png"
                figures.append((plots.polar_plot(path, coordinates[:, 0], coordinates[:, 1], labels,
                                                 title=f"{class_name}: projected test features" + note,
                                                 target_norm=record["target_norm"]),
                                f"{class_name}: each test image's projected feature, radius its norm and angle its "
                                f"angle to the target (the star)" + note))
    if norm_study_path is not None:
        study = pd.read_csv(norm_study_path, dtype={"class": str})
        study = study[~study["class"].isin(["mean", "mixed", "ideal"])]  # the plot draws its own mean line
        for metric in ("I-AUROC", "P-AUROC"):
            columns = [c for c in study.columns if c.startswith(f"{metric} norm=")]
            if columns and study[columns].notna().any().any():
                values = {row["class"]: [row[c] for c in columns] for _, row in study.iterrows()}
                figures.append((plots.norm_study(run_path / f"norm_study_{metric}.png", norms, values, metric,
                                                 title=f"{metric} against the target norm"),
                                f"{metric} against NoCo's target norm, one line per class"))
    return plots.write_report(run_path, pd.read_csv(table_path, dtype={"class": str}), figures, title=title)
