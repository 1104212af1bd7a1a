"""Score new images with a trained train_mvtec.py run: each image's anomaly score, calibrated by the
run's alignment, and a decision at the threshold set on held-out normal training images
(thresholds.json) or, with --thresholds, on normal images of the line (--calibrate); optionally a
heat-map overlay and a binary mask per image, or the whole scorer as one ONNX model.

    python predict.py --run results/<run> images/ part.png              # predictions.csv in <run>/predictions/
    python predict.py --run results/<run> --maps images/                # + <stem>_overlay.png, <stem>_mask.png
    python predict.py --run results/<run> --class_name brick images/    # a separate run: that class's model
    python predict.py --run results/<run> --align none images/          # the base model's score, not CADA's
    python predict.py --run results/<run> --export onnx                 # image -> (calibrated map, image score)
    python predict.py --run results/<run> --calibrate line_normals/     # thresholds_<model>_<align>.json
    python predict.py --run results/<run> --thresholds <that file> images/  # decide at the line's thresholds

Images of any size, grey or RGB, 8 or 16 bits are resized as the run's training images were (its
image_size, crop_size, resize). A file that is not a readable image, or a folder's file without an
image's name, gets a row with an empty score and the reason in the `skipped` column, and is named in the
summary; the others are scored. The run folder, the options and the output folder are checked before any
work: a run of other code options, a method the registry lacks, a missing checkpoint or threshold (with
the reason: --val_fraction 0, an interrupted run), an earlier call's outputs in --out_dir without
--overwrite are refused in one line. The last line printed is `results: <file written>`.
"""
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.common import IMAGENET_MEAN, IMAGENET_STD, load_rgb
from utils.checks import check_out_dir
from utils.config import ConfigError, parse_config, resolve_device, script_constants
from utils.files import atomic_write
from utils.inference import (ImageFiles, build_scorer, calibration, collate, export_onnx, image_files, load_run,
                             run_transform)
from utils.options import check_options, option_table
from utils.predict_options import check_combinations, predict_rules
from utils.results import write_table
from utils.thresholds import checkpoint_digest, save_calibration, too_few, too_few_note

# -----------------------------------------------------------------------------
run = ""                     # the run folder of train_mvtec.py (config.json, checkpoints/, thresholds.json)
images = ()                  # image files or folders (also given without a name: predict.py --run r a.png b/)
align = ""                   # the run's alignment to calibrate with; "" = cada when that head was trained, else none
class_name = ""              # separate-setting runs (one model per class): the class whose model scores
maps = False                 # also write a heat-map overlay and a binary mask (pixel threshold) PNG per image
export = ""                  # onnx: write the scorer as one ONNX model instead of scoring images
calibrate = ()               # normal images of the line (files or folders): write thresholds from them, score none
false_alarm_rate = 0.01      # --calibrate: the fraction of those images (pixels) scoring above the thresholds
thresholds = ""              # a --calibrate file to decide with instead of the run's thresholds.json
out_dir = ""                 # "" = <run>/predictions
overwrite = False            # replace an earlier call's outputs in out_dir (else refused): predictions.csv, maps/...
batch_size = 16              # images per forward pass
num_workers = 0              # DataLoader processes that decode images
device = "auto"              # auto | cpu | cuda
# -----------------------------------------------------------------------------
CONSTANTS = script_constants(globals())
OPTIONS = option_table(CONSTANTS, predict_rules(CONSTANTS))  # checks (utils/predict_options.py)
HEAT_SCALE = 2.0  # overlay colours span 0 .. HEAT_SCALE x the pixel threshold: the threshold is mid-scale
SHOWN_SKIPPED = 5  # the summary names this many skipped files; the CSV's skipped column has every one


def configure():
    """The options, each refused in one line before any work."""
    cfg, given = parse_config({name: option.default for name, option in OPTIONS.items()}, script=__file__,
                              positional="images", return_given=True)
    check_options(cfg, OPTIONS)
    check_combinations(cfg, given)
    return cfg


def open_run(cfg):
    """The run, the image files (and those skipped, with why), the output folder and the files this call writes
    there; an earlier call's outputs (refused without --overwrite); every refusal before any model is built."""
    trained = load_run(cfg.run, cfg.align, cfg.class_name, cfg.thresholds,  # refusals before any work
                       need_thresholds=not (cfg.export or cfg.calibrate))
    files, skipped = ([], {}) if cfg.export else image_files(cfg.calibrate or cfg.images)
    out = Path(cfg.out_dir or trained.path / "predictions")
    check_out_dir(out)
    name = f"{trained.model_name}_{trained.align}"
    if cfg.export:
        outputs = [out / f"{name}.onnx"]
    elif cfg.calibrate:
        outputs = [out / f"thresholds_{name}.json"]
    else:  # an earlier call's maps go with its predictions.csv, never beside new ones
        outputs = [out / "predictions.csv", *sorted(p for pattern in ("*_overlay.png", "*_mask.png")
                                                    for p in (out / "maps").glob(pattern))]
    if (earlier := [path for path in outputs if path.exists()]) and not cfg.overwrite:
        raise ConfigError(f"--out_dir {out}: holds {earlier[0].name}" + (f" and {len(earlier) - 1} more files" if
                          len(earlier) > 1 else "") + " of an earlier predict.py call: give another --out_dir, or "
                          "--overwrite to replace them")
    if cfg.calibrate:  # every normal image counts in the thresholds: an unreadable one is refused now
        for index, path in enumerate(files):
            if index not in skipped:
                load_rgb(path)
    return trained, files, skipped, out, outputs, earlier


def build(cfg, trained, out, earlier):
    """(the scorer, its device); an earlier call's outputs removed once it is built."""
    device = torch.device("cpu") if cfg.export else resolve_device(cfg.device)
    scorer = build_scorer(trained, device)
    for path in earlier:
        path.unlink()
    if earlier and (out / "maps").is_dir() and not any((out / "maps").iterdir()):
        (out / "maps").rmdir()
    return scorer, device


def skipped_names(files, skipped, indices):
    """Up to SHOWN_SKIPPED of the skipped files, as 'name (why)'; the rest counted."""
    shown = [f"{files[i].name} ({skipped[i]})" for i in indices[:SHOWN_SKIPPED]]
    return "; ".join(shown) + (f"; and {len(indices) - SHOWN_SKIPPED} more" if len(indices) > SHOWN_SKIPPED else "")


def write_calibration(cfg, trained, scorer, device, loader, files, skipped, path):
    """--calibrate: thresholds from normal images of the line, written to `path`."""
    started = time.time()
    entry = calibration(scorer, (batch for _, batch, _ in tqdm(loader, desc="calibrate", unit="batch")
                                 if batch is not None), device, cfg.false_alarm_rate)
    n_images = entry["calibration_images"]
    path = save_calibration(path, trained.model_name, trained.align, entry, {
        "false_alarm_rate": cfg.false_alarm_rate, "model": trained.model_name, "align": trained.align,
        "run": str(trained.path.resolve()), "checkpoint_sha256": checkpoint_digest(trained.checkpoints),
        "calibrated_on": [str(Path(source).resolve()) for source in cfg.calibrate],
        "skipped": {str(files[i]): why for i, why in skipped.items()}})
    print(f"{n_images} normal images scored in {time.time() - started:.1f} s ({trained.model_name} "
          f"[{trained.align}]): image threshold {entry['image']:.6g} ({entry['image_quantile']}), pixel threshold "
          f"{entry['pixel']:.6g} ({entry['pixel_quantile']}) at --false_alarm_rate {cfg.false_alarm_rate:g}"
          + (f"; {len(skipped)} files skipped: {skipped_names(files, skipped, sorted(skipped))}" if skipped else ""))
    if too_few(n_images, cfg.false_alarm_rate):
        print(too_few_note(f"{trained.model_name} [{trained.align}]", n_images, entry, cfg.false_alarm_rate,
                           "normal images", "calibrate on more of them"))
    return path


def write_predictions(cfg, trained, scorer, device, loader, files, skipped, out):
    """Each image's score and decision (predictions.csv), with --maps its overlay and mask."""
    image_threshold, pixel_threshold = trained.thresholds["image"], trained.thresholds["pixel"]
    aligned = scorer.alignment is not None
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    rows, started = [None] * len(files), time.time()
    for indices, batch, reasons in tqdm(loader, desc="predict", unit="batch"):
        for index, reason in zip(indices, reasons):
            if reason:
                skipped[index] = reason
                rows[index] = {"path": str(files[index]), "skipped": reason}
        if batch is None:
            continue
        with torch.no_grad():
            final, scores, raw_scores, u, gamma = (x if x is None else x.cpu()
                                                   for x in scorer.predict(batch.to(device)))
        good = [index for index, reason in zip(indices, reasons) if not reason]
        for row, index in enumerate(good):
            rows[index] = {"path": str(files[index]), "score": raw_scores[row].item(),
                           "calibrated_score": scores[row].item() if aligned else None,
                           "u": u[row].item() if aligned else None, "gamma": gamma[row].item() if aligned else None,
                           "anomalous": bool(scores[row] > image_threshold), "skipped": ""}
            if cfg.maps:
                stem = f"{index:05d}_{files[index].stem}"
                pixels = ((batch[row:row + 1] * std + mean).clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy()
                pixels = cv2.resize(pixels, tuple(final.shape[-2:][::-1]))  # the maps' size (--eval_size) if another
                heat = cv2.applyColorMap((final[row] / (HEAT_SCALE * pixel_threshold)).clamp(0, 1).mul(255).round()
                                         .to(torch.uint8).numpy(), cv2.COLORMAP_JET)
                overlay = (0.5 * pixels[:, :, ::-1] + 0.5 * heat).round().astype(np.uint8)  # OpenCV writes BGR
                mask = ((final[row] > pixel_threshold).numpy() * 255).astype(np.uint8)
                for kind, picture in (("overlay", overlay), ("mask", mask)):
                    atomic_write(out / "maps" / f"{stem}_{kind}.png",
                                 lambda tmp, picture=picture: cv2.imencode(".png", picture)[1].tofile(tmp))
    elapsed = time.time() - started
    table = pd.DataFrame(rows, columns=["path", "score", "calibrated_score", "u", "gamma", "anomalous", "skipped"])
    csv_path = write_table(table, out / "predictions.csv", float_format="%.6g")
    scored, anomalous = len(files) - len(skipped), sum(bool(row.get("anomalous")) for row in rows)
    source = f"--thresholds {cfg.thresholds}" if cfg.thresholds else "thresholds.json"
    if scored:
        print(f"{scored} of {len(files)} files scored in {elapsed:.1f} s ({scored / max(elapsed, 1e-9):.1f} images "
              f"per second, {device.type}); {anomalous} anomalous at the threshold {image_threshold:.6g} ({source}: "
              f"{trained.thresholds.get('image_quantile', 'rank not recorded')}; {trained.model_name} "
              f"[{trained.align}])")
    if skipped:
        print(("no file scored: all " if not scored else "") + f"{len(skipped)} skipped (reasons in the skipped "
              f"column): {skipped_names(files, skipped, sorted(skipped))}")
    return csv_path


def main():
    """Check the options, load the run, then export the scorer, calibrate thresholds or score the images."""
    cfg = configure()
    trained, files, skipped, out, outputs, earlier = open_run(cfg)
    scorer, device = build(cfg, trained, out, earlier)
    if cfg.export:
        print(f"results: {export_onnx(scorer, trained.cfg.crop_size or trained.cfg.image_size, outputs[0])}")
        return
    loader = DataLoader(ImageFiles(files, run_transform(trained.cfg), skipped), batch_size=cfg.batch_size,
                        num_workers=cfg.num_workers, collate_fn=collate)
    if cfg.calibrate:
        print(f"results: {write_calibration(cfg, trained, scorer, device, loader, files, skipped, outputs[0])}")
    else:
        print(f"results: {write_predictions(cfg, trained, scorer, device, loader, files, skipped, out)}")


if __name__ == "__main__":  # imported (tests, benchmarks): the constants and OPTIONS only
    main()
