"""Decision thresholds from normal images only (issue 19).

Training holds out a seeded part of each class's `train/good` (`hold_out`): those images train
nothing. After a model (and each alignment head) is trained, its held-out maps go through the test
set's evaluation path (alignment calibration, blur, image score), and the image threshold is the score
that a fraction `false_alarm_rate` of the held-out images exceed (`threshold_at`); the pixel threshold
the same over their pixels. An image (pixel) is called anomalous when its score is above the threshold.
The test set never enters a threshold. `thresholds.json` in the run folder keeps them per model and
alignment, each with the rank it reached (`threshold_entry`: fewer than 1 / false_alarm_rate images cannot
reach the rate, their maximum is the threshold); predict.py reads it back. `predict.py --calibrate` writes
a file of the same layout from normal images of the line (`save_calibration`), for `predict.py --thresholds`.
"""
import copy
import hashlib
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


def _ordinal(k):
    return f"{k}{'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')}"


def threshold_entry(image_scores, pixels, false_alarm_rate, noun="images"):
    """The image and pixel thresholds (threshold_at) of n normal images with what each reaches: "<kind>_rank"
    (the k-th highest), "<kind>_above" (the fraction of them above it, ties counted: at most false_alarm_rate)
    and "<kind>_quantile" in words ("maximum of 6 images" when n < 1 / false_alarm_rate)."""
    entry = {}
    for kind, scores, unit in (("image", image_scores, noun), ("pixel", pixels, "pixels")):
        flat = scores.flatten()
        threshold = threshold_at(flat, false_alarm_rate)
        rank = int(false_alarm_rate * flat.numel()) + 1
        above = (flat > threshold).double().mean().item()
        where = "maximum" if rank == 1 else f"{_ordinal(rank)} highest"
        entry.update({kind: threshold, f"{kind}_rank": rank, f"{kind}_above": above,
                      f"{kind}_quantile": f"{where} of {flat.numel()} {unit} ({100 * above:.3g} % above it)"})
    return entry


def too_few(n_images, false_alarm_rate):
    """Whether n images are too few to set a threshold at this rate: fewer than 1 / false_alarm_rate."""
    return n_images * false_alarm_rate < 1


def too_few_note(name, n_images, entry, false_alarm_rate, source, remedy):
    """The one line printed when too_few: which rank of the images the image threshold is, and a remedy."""
    where = entry["image_quantile"].split(" of ")[0]
    return (f"{name}: the image threshold is the {where} of the {n_images} {source}, fewer than 1 / false_alarm_rate "
            f"= {1 / false_alarm_rate:g}: it cannot reach a false-alarm rate of {false_alarm_rate:g} ({remedy})")


def alarm_rates(scores, labels, threshold):
    """{"FAR@thr": fraction of normal images above the threshold, "recall@thr": of anomalous ones}
    (None where a kind is absent)."""
    alarms = scores > threshold
    rates = {}
    for key, kind in (("FAR@thr", 0), ("recall@thr", 1)):
        rows = labels == kind
        rates[key] = alarms[rows].float().mean().item() if rows.any() else None
    return rates


def read_thresholds(source):
    """The thresholds of a run folder (its thresholds.json) or a file (predict.py --calibrate's) as a dict;
    a missing or damaged one is refused (ValueError)."""
    path = Path(source) / FILE_NAME if Path(source).is_dir() else Path(source)
    if not path.is_file():
        raise ValueError(f"{path}: no such file: no threshold to decide with")
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


def save_held_out_thresholds(run_dir, model, align, entry, classes, cfg, warn=True):
    """Save one model's and alignment's thresholds from its held-out images (held_out_thresholds' `entry`, with
    its `classes`) in thresholds.json with the run's false_alarm_rate, val_fraction and seed; with `warn`,
    print too_few_note first when the held-out images are too few for the rate."""
    if warn and too_few(entry["held_out_images"], cfg.false_alarm_rate):
        print(too_few_note(model, entry["held_out_images"], entry, cfg.false_alarm_rate, "held-out images",
                           "hold out more with --val_fraction, or set thresholds on normal images of the line with "
                           "predict.py --calibrate"))
    return save_thresholds(run_dir, model, align, {**entry, "classes": list(classes)},
                           {"false_alarm_rate": cfg.false_alarm_rate, "val_fraction": cfg.val_fraction,
                            "seed": cfg.seed})


def checkpoint_digest(files):
    """SHA-256 of the checkpoint files' bytes, in order: which model a calibration's thresholds belong to."""
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def save_calibration(path, model, align, entry, settings):
    """Write predict.py --calibrate's thresholds file: thresholds.json's layout (one model and alignment)
    with the calibration's settings (false_alarm_rate, run, checkpoint digest, sources), atomically."""
    text = json.dumps({**settings, "models": {model: {align: entry}}}, indent=2)
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))
