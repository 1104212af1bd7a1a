"""Score new images with a trained train_mvtec.py run: each image's anomaly score, calibrated by the
run's alignment, and a decision at the threshold set on held-out normal training images
(thresholds.json); optionally a heat-map overlay and a binary mask per image, or the whole scorer as
one ONNX model.

    python predict.py --run results/<run> images/ part.png              # predictions.csv in <run>/predictions/
    python predict.py --run results/<run> --maps images/                # + <stem>_overlay.png, <stem>_mask.png
    python predict.py --run results/<run> --class_name brick images/    # a separate run: that class's model
    python predict.py --run results/<run> --align none images/          # the base model's score, not CADA's
    python predict.py --run results/<run> --export onnx                 # image -> (calibrated map, image score)

Images of any size, grey or RGB, 8 or 16 bits are resized as the run's training images were (its
image_size, crop_size, resize). A file that is not a readable image gets one line in the `error`
column and the others are scored. The run folder is checked before any work: a run of other code
options, a method the registry lacks, a missing checkpoint or threshold is refused in one line. The
last line printed is `results: <predictions.csv>` (or `results: <file.onnx>`).
"""
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.common import IMAGENET_MEAN, IMAGENET_STD
from utils.checks import check_config, check_out_dir
from utils.config import ConfigError, parse_config, resolve_device, script_constants
from utils.files import atomic_write
from utils.inference import ImageFiles, build_scorer, collate, export_onnx, image_files, load_run, run_transform
from utils.maps import image_scores
from utils.results import write_table

# -----------------------------------------------------------------------------
run = ""                     # the run folder of train_mvtec.py (config.json, checkpoints/, thresholds.json)
images = ()                  # image files or folders (also given without a name: predict.py --run r a.png b/)
align = ""                   # the run's alignment to calibrate with; "" = cada when that head was trained, else none
class_name = ""              # separate-setting runs (one model per class): the class whose model scores
maps = False                 # also write a heat-map overlay and a binary mask (pixel threshold) PNG per image
export = ""                  # onnx: write the scorer as one ONNX model instead of scoring images
out_dir = ""                 # "" = <run>/predictions
batch_size = 16              # images per forward pass
num_workers = 0              # DataLoader processes that decode images
device = "auto"              # auto | cpu | cuda
# -----------------------------------------------------------------------------
HEAT_SCALE = 2.0  # overlay colours span 0 .. HEAT_SCALE x the pixel threshold: the threshold is mid-scale
cfg = parse_config(script_constants(globals()), script=__file__, positional="images")
check_config(cfg, positive=("batch_size",), non_negative=("num_workers",), choices={"export": ("", "onnx")})
if not cfg.run:
    raise ConfigError("--run: give the run folder of a train_mvtec.py run (results/<run>)")
trained = load_run(cfg.run, cfg.align, cfg.class_name)  # refusals before any work
if cfg.export and cfg.images:
    raise ConfigError("--export onnx writes the model and scores no image: drop the images")
files = [] if cfg.export else image_files(cfg.images)
out = Path(cfg.out_dir or trained.path / "predictions")
check_out_dir(out)
device = torch.device("cpu") if cfg.export else resolve_device(cfg.device)
scorer = build_scorer(trained, device)
side = trained.cfg.crop_size or trained.cfg.image_size
if cfg.export:
    print(f"results: {export_onnx(scorer, side, out / f'{trained.model_name}_{trained.align}.onnx')}")
    raise SystemExit(0)

# score ------------------------------------------------------------------------
image_threshold, pixel_threshold = trained.thresholds["image"], trained.thresholds["pixel"]
aligned = scorer.alignment is not None
loader = DataLoader(ImageFiles(files, run_transform(trained.cfg)), batch_size=cfg.batch_size,
                    num_workers=cfg.num_workers, collate_fn=collate)
mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
rows, scored, started = [None] * len(files), 0, time.time()
for indices, batch, errors in tqdm(loader, desc="predict", unit="batch"):
    for index, error in zip(indices, errors):
        if error:
            rows[index] = {"path": str(files[index]), "error": error}
    if batch is None:
        continue
    with torch.no_grad():
        raw, u, gamma, calibrated = scorer.parts(batch.to(device))
        final = scorer.finished(calibrated)
        scores = image_scores(final, trained.cfg.image_score, trained.cfg.top_fraction).cpu()
        raw_scores = (image_scores(scorer.finished(raw), trained.cfg.image_score, trained.cfg.top_fraction).cpu()
                      if aligned else scores)
    final = final.cpu()
    good = [index for index, error in zip(indices, errors) if not error]
    for row, index in enumerate(good):
        rows[index] = {"path": str(files[index]), "score": raw_scores[row].item(),
                       "calibrated_score": scores[row].item() if aligned else None,
                       "u": u[row].item() if aligned else None, "gamma": gamma[row].item() if aligned else None,
                       "anomalous": bool(scores[row] > image_threshold), "error": ""}
        if cfg.maps:
            stem = f"{index:05d}_{files[index].stem}"
            pixels = ((batch[row:row + 1] * std + mean).clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy()
            pixels = cv2.resize(pixels, tuple(final.shape[-2:][::-1]))  # the maps' size (--eval_size) if another
            heat = cv2.applyColorMap((final[row] / (HEAT_SCALE * pixel_threshold)).clamp(0, 1).mul(255).round()
                                     .to(torch.uint8).numpy(), cv2.COLORMAP_JET)
            overlay = (0.5 * pixels[:, :, ::-1] + 0.5 * heat).round().astype(np.uint8)  # OpenCV writes BGR
            mask = ((final[row] > pixel_threshold).numpy() * 255).astype(np.uint8)
            for name, picture in (("overlay", overlay), ("mask", mask)):
                atomic_write(out / "maps" / f"{stem}_{name}.png",
                             lambda tmp, picture=picture: cv2.imencode(".png", picture)[1].tofile(tmp))
    scored += len(good)
elapsed = time.time() - started
table = pd.DataFrame(rows, columns=["path", "score", "calibrated_score", "u", "gamma", "anomalous", "error"])
csv_path = write_table(table, out / "predictions.csv", float_format="%.6g")
print(f"{scored} of {len(files)} images scored in {elapsed:.1f} s ({scored / max(elapsed, 1e-9):.1f} images per "
      f"second, {device.type}); {int(table['anomalous'].fillna(False).sum())} anomalous at the threshold "
      f"{image_threshold:.6g} ({trained.model_name} [{trained.align}])")
print(f"results: {csv_path}")
