"""Decision thresholds from normal images only (issue 19).

Training holds out a seeded part of each class's `train/good` (`hold_out`): those images train
nothing. After a model (and each alignment head) is trained, its held-out maps go through the test
set's evaluation path (alignment calibration, blur, image score), and the image threshold is the score
that a fraction `false_alarm_rate` of the held-out images exceed (`threshold_at`); the pixel threshold
the same over their pixels. An image (pixel) is called anomalous when its score is above the threshold.
The test set never enters a threshold. `thresholds.json` in the run folder keeps them per model and
alignment; predict.py reads it back.
"""
import copy
import json
from pathlib import Path

import torch

from utils.files import atomic_write

MIN_HELD_OUT = 3  # per class, when val_fraction > 0: a quantile of one or two images says little
FILE_NAME = "thresholds.json"


def held_out_count(n_images, fraction):
    """How many of a class's n training images are held out: 0 for fraction 0, else
    max(MIN_HELD_OUT, round(fraction * n)) but never more than half of them (a class of 4 keeps 2 to train on,
    not 1; the minimum is meant for the threshold's sake, not to starve a small class)."""
    if fraction <= 0:
        return 0
    return min(n_images // 2, max(MIN_HELD_OUT, round(fraction * n_images)))


def _subset(dataset, indices):
    part = copy.copy(dataset)
    part.samples = [dataset.samples[i] for i in indices]
    part.labels = [dataset.labels[i] for i in indices]
    return part


def hold_out(dataset, fraction, seed):
    """(kept, held_out): copies of one class's training dataset (samples sorted by file name) split by a
    permutation drawn from a generator seeded with `seed`, so the split is the same on every run with
    that seed whatever the other classes are. Both keep the sorted order. A class of one image cannot
    lend one (ValueError)."""
    n = len(dataset.samples)
    count = held_out_count(n, fraction)
    if fraction > 0 and count < 1:
        raise ValueError(f"class {dataset.class_name}: {n} training image(s), none can be held out for the "
                         f"thresholds; give --val_fraction 0")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = sorted(order[:count])
    kept = sorted(order[count:])
    return _subset(dataset, kept), _subset(dataset, held)


def threshold_at(scores, false_alarm_rate):
    """The (floor(rate * n) + 1)-th highest of n scores: at most a fraction `false_alarm_rate` of them
    lies above it (fewer with ties)."""
    flat = scores.flatten().double()
    above = int(false_alarm_rate * flat.numel())
    return flat.kthvalue(flat.numel() - above).values.item()


def alarm_rates(scores, labels, threshold):
    """{"FAR@thr": fraction of normal images above the threshold, "recall@thr": of anomalous ones}
    (None where a kind is absent)."""
    alarms = scores > threshold
    rates = {}
    for key, kind in (("FAR@thr", 0), ("recall@thr", 1)):
        rows = labels == kind
        rates[key] = alarms[rows].float().mean().item() if rows.any() else None
    return rates


def read_thresholds(run_dir):
    """The thresholds.json of a run folder as a dict; a missing or damaged one is refused (ValueError)."""
    path = Path(run_dir) / FILE_NAME
    if not path.is_file():
        raise ValueError(f"{run_dir}: no {FILE_NAME} (trained with --val_fraction 0 or by an older version): "
                         "no threshold to decide with")
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: damaged (not JSON: {error})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("models"), dict):
        raise ValueError(f"{path}: not a thresholds file of this suite (no \"models\" section)")
    return saved


def save_thresholds(run_dir, model, align, entry, settings):
    """Add (or replace) one model's and alignment's entry of thresholds.json, atomically; other
    entries (earlier models, a resumed run's) are kept."""
    path = Path(run_dir) / FILE_NAME
    saved = read_thresholds(run_dir) if path.is_file() else {"models": {}}
    saved.update(settings)
    saved["models"].setdefault(model, {})[align] = entry
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(saved, indent=2)))
    return path
