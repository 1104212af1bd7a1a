"""predict.py's side of a trained run: read the run folder back (config.json, checkpoints, thresholds.json),
rebuild the method through the registry, and score images exactly as train_mvtec.py's evaluation does
(maps, alignment calibration, blur, image score) in one module, `Scorer`, that also exports to ONNX and
sets thresholds on normal images of the line (`calibration`, predict.py --calibrate).

`load_run` checks everything before any model is built: a run of other code options (config.json's
options differ from train_mvtec.py's constants), a method the registry lacks, a missing checkpoint or
threshold (with its reason: --val_fraction 0, an interrupted run), a --thresholds file of another model is
refused in one line (ValueError)."""
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from datasets.common import IMAGE_EXTENSIONS, ImageTransform, list_images, load_rgb
from models import METHODS, cada
from models.cada import ALIGNMENTS, PREDICT_DEFAULT, UNCALIBRATED
from utils.config import ConfigError, seed_everything
from utils.maps import PostProcessor
from utils.results import read_run_config
from utils.thresholds import FILE_NAME as THRESHOLDS_FILE
from utils.thresholds import checkpoint_digest, read_thresholds, threshold_entry
from utils.options import added_options
from utils.training import load_our_file



def script_options():
    """train_mvtec.py's option table (`import train_mvtec` runs its constants and table only: its work is under
    `if __name__ == "__main__"`)."""
    import train_mvtec  # here, not at the top: train_mvtec imports this package's modules
    return train_mvtec.OPTIONS


def script_defaults():
    """train_mvtec.py's option defaults, from its option table (`import train_mvtec` runs its constants and
    table only: its work is under `if __name__ == "__main__"`)."""
    import train_mvtec  # here, not at the top: train_mvtec imports this package's modules
    return {name: option.default for name, option in train_mvtec.OPTIONS.items()}


@dataclass
class Run:
    """A trained run as predict.py uses it: its configuration, the model and alignment to score with,
    their checkpoints' states and the thresholds of that alignment."""
    path: Path
    cfg: SimpleNamespace
    model_name: str
    classes: list
    align: str
    model_state: dict
    head_state: dict
    thresholds: dict  # {"image", "pixel", ...} of thresholds.json or of --thresholds' file; {} when not read
    checkpoints: list  # the checkpoint files read (the model's, the alignment head's)


def _no_thresholds_reason(run_dir, cfg, status):
    """Why a run has no threshold: --val_fraction 0, an interrupted run (thresholds are saved after each
    model's evaluation), or an older version."""
    if not cfg.val_fraction:
        return "trained with --val_fraction 0 (no held-out images)"
    if status != "complete":
        return (f"the run did not finish (config.json status {status!r}): its thresholds are saved after each "
                f"model's evaluation; finish it with train_mvtec.py --resume {run_dir}")
    return "trained by an older version"


def load_run(run_dir, align="", class_name="", thresholds="", need_thresholds=True):
    """Read and check a run folder (see the module docstring). align "": cada when that head was trained,
    else none; class_name: which class's model in a separate-setting run (required there). thresholds: a
    file of predict.py --calibrate to take them from instead of the run's thresholds.json (it must be of
    this model, alignment and checkpoint); need_thresholds False: none are read (calibrating, exporting)."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir, like=script_defaults(), option="run")
    status = json.loads((run_dir / "config.json").read_text()).get("status")
    cfg = SimpleNamespace(**config)
    if cfg.method not in METHODS:
        raise ConfigError(f"--run {run_dir}: trained with --method {cfg.method}, which this version's registry "
                          f"(models.METHODS: {', '.join(METHODS)}) does not have")
    if len(cfg.target_norm) > 1:
        raise ConfigError(f"--run {run_dir}: a norm study (one model per --target_norm); predict scores with "
                          "one model: retrain with one norm")
    if cfg.setting == "separate":
        if class_name not in cfg.classes:
            raise ConfigError(f"--class_name: a separate-setting run has one model per class; give one of "
                              f"{', '.join(cfg.classes)}" + (f" (got {class_name!r})" if class_name else ""))
        model_name, classes = class_name, [class_name]
    else:
        if class_name:
            raise ConfigError("--class_name: a unified run has one model for every class; drop it")
        model_name, classes = "unified", list(cfg.classes)
    align = align or (PREDICT_DEFAULT if PREDICT_DEFAULT in cfg.align else UNCALIBRATED)
    if align not in cfg.align:
        raise ConfigError(f"--align {align}: this run trained {', '.join(cfg.align)}")
    if ALIGNMENTS[align].needs_labels:
        usable = [kind.name for kind in ALIGNMENTS.values() if not kind.needs_labels]
        raise ConfigError(f"--align {align}: it needs each image's class, which predict does not know; "
                          f"use {', '.join(usable[:-1])} or {usable[-1]}")
    files = [run_dir / "checkpoints" / f"{model_name}.pt"]
    if ALIGNMENTS[align].saved:
        files.append(run_dir / "checkpoints" / f"{model_name}_{align}.pt")
    if missing := [str(f.relative_to(run_dir)) for f in files if not f.is_file()]:
        raise ValueError(f"--run {run_dir}: no {', '.join(missing)} (" + (
            "the run was interrupted before this model was trained" if status != "complete" else
            "trained with --save_checkpoints false, or deleted") + ")")
    chosen = {}
    if thresholds:
        if not Path(thresholds).is_file():
            raise FileNotFoundError(f"--thresholds {thresholds}: no such file (predict.py --calibrate writes one)")
        chosen = read_thresholds(thresholds)
        if "checkpoint_sha256" not in chosen:
            raise ValueError(f"--thresholds {thresholds}: not a file of predict.py --calibrate (the run's own "
                             f"{THRESHOLDS_FILE} is read without --thresholds)")
        if chosen["checkpoint_sha256"] != checkpoint_digest(files):
            other = f"{chosen.get('model')} [{chosen.get('align')}]"
            raise ValueError(f"--thresholds {thresholds}: calibrated for " + (
                f"another checkpoint of {other}" if other == f"{model_name} [{align}]" else other) +
                f" (the run {chosen.get('run')}), not for {model_name} [{align}] of {run_dir}: calibrate that one "
                "with predict.py --calibrate")
        chosen = chosen["models"].get(model_name, {}).get(align)
    elif need_thresholds:
        saved = read_thresholds(run_dir) if (run_dir / THRESHOLDS_FILE).is_file() else {"models": {}}
        chosen = saved["models"].get(model_name, {}).get(align)
        if not chosen:
            raise ValueError(f"--run {run_dir}: no threshold for {model_name} [{align}] in {THRESHOLDS_FILE}: "
                             f"{_no_thresholds_reason(run_dir, cfg, status)}; or set thresholds on normal images "
                             "with predict.py --calibrate <folder> and use them with --thresholds <file>")
    if need_thresholds and not chosen:
        raise ValueError(f"--thresholds {thresholds}: no threshold for {model_name} [{align}]")
    states = [load_our_file(f, f"--run {run_dir}: {f.relative_to(run_dir)}", "checkpoint", config,
                            added_options(script_options())) for f in files]
    return Run(run_dir, cfg, model_name, classes, align, states[0]["model"],
               states[1]["model"] if len(states) > 1 else None, chosen, files)


class Scorer(nn.Module):
    """Images (B, 3, S, S), normalised as the run's transform does -> (final maps (B, S, S), image scores
    (B,)): encoder, model, the alignment's (u, gamma), then utils.maps.PostProcessor (calibration by CADA
    eq. 5, resize, blur, image score), the post-processing train_mvtec.py's evaluation scores with."""

    def __init__(self, method, encoder, model, alignment, cfg):
        super().__init__()
        self.method, self.encoder, self.model, self.alignment = method, encoder, model, alignment
        self.align_input = cfg.align_input
        self.post = PostProcessor.of(cfg)

    def model_input(self, images):
        return self.encoder(images) if self.method.trains_on == "features" else {"image": images}

    def parts(self, images, labels=None):
        """(raw maps, u, gamma): the model's maps before any post-processing and the alignment's estimates
        (None, None without an alignment); `labels`, the images' class indices, only for a kind that
        needs_labels (predict.py never has them)."""
        inputs = self.model_input(images)
        raw = self.model.anomaly_map(inputs).float()
        if self.alignment is None:
            return raw, None, None
        features = (self.method.head_input(self.model, inputs, self.align_input)
                    if self.alignment.spec.reads_features else None)
        return (raw, *self.alignment.statistics(features, labels))

    def forward(self, images, labels=None):
        return self.post(*self.parts(images, labels))

    def predict(self, images):
        """(final maps, image scores, the uncalibrated maps' image scores, u, gamma): forward's maps and
        scores, with the base model's own score beside them (the scores themselves without an alignment)."""
        raw, u, gamma = self.parts(images)
        maps, scores = self.post(raw, u, gamma)
        return maps, scores, (scores if u is None else self.post(raw)[1]), u, gamma


def build_scorer(run, device):
    """The run's method rebuilt through the registry with its checkpoint(s) loaded, as a Scorer in eval mode.
    A random-init encoder (--weights none) is rebuilt from the run's seed, as train_mvtec.py built it."""
    cfg, method = run.cfg, METHODS[run.cfg.method]
    seed_everything(cfg.seed)
    encoder = method.build_encoder(cfg).to(device).eval()
    model = method.build_model(cfg, encoder, cfg.target_norm[0], torch.Generator().manual_seed(cfg.seed))
    model.load_state_dict(run.model_state)
    model = model.to(device).eval()
    alignment = None
    if ALIGNMENTS[run.align].calibrates:
        side = cfg.crop_size or cfg.image_size
        with torch.no_grad():
            blank = torch.zeros(1, 3, side, side, device=device)
            probe = Scorer(method, encoder, model, None, cfg).model_input(blank)
            channels = method.head_input(model, probe, cfg.align_input).shape[1] if run.head_state else 0
        alignment = cada.alignment_of(run.align, channels, len(run.classes), cfg)
        alignment.load_state_dict(run.head_state)
        alignment = alignment.to(device).eval()
    return Scorer(method, encoder, model, alignment, cfg).to(device).eval()


def image_files(sources):
    """(files, skipped) of `sources` (files, and folders: their files and their subfolders', sorted), in order;
    skipped: {index into files: why} for a folder's file whose name is not an image's (it is listed, not read).
    A path that does not exist is refused, and so are sources without an image file; a file given by name is
    kept whatever its name (an unreadable one fails later, as a row of its own)."""
    files, skipped = [], {}
    for source in map(Path, sources):
        if source.is_dir():  # an MVTec-layout test/ holds its images in one folder per defect
            for folder in [source, *sorted(p for p in source.rglob("*") if p.is_dir())]:
                images = set(list_images(folder))
                for path in sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.name):
                    if path not in images:
                        skipped[len(files)] = f"not an image file name: expected {', '.join(IMAGE_EXTENSIONS)}"
                    files.append(path)
        elif source.exists():
            files.append(source)
        else:
            raise FileNotFoundError(f"{source}: no such file or folder")
    if len(skipped) == len(files):
        others = f" ({len(files)} file{'s' * (len(files) > 1)} there, none named as an image)" if files else ""
        raise ConfigError(f"no image to score in {', '.join(map(str, sources))}: give image files or folders "
                          f"holding {', '.join(IMAGE_EXTENSIONS)}{others}")
    return files, skipped


class ImageFiles(Dataset):
    """Items (index, normalised image or an empty tensor, why it was skipped or ""): an unreadable file, or one
    in `skipped` ({index: why}, not read), is reported, not raised, so the others are still scored."""

    def __init__(self, files, transform, skipped=None):
        self.files, self.transform, self.skipped = files, transform, skipped or {}

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        if index in self.skipped:
            return index, torch.empty(0), self.skipped[index]
        try:
            return index, self.transform.image(load_rgb(self.files[index])), ""
        except ValueError as error:
            return index, torch.empty(0), str(error)


def collate(items):
    indices, images, errors = zip(*items)
    good = [image for image in images if image.numel()]
    return list(indices), torch.stack(good) if good else None, list(errors)


def calibration(scorer, batches, device, false_alarm_rate):
    """The thresholds of normal images (batches: normalised image tensors, as the run's transform gives them)
    scored by `scorer` on `device` (its final maps and image scores): threshold_entry's image and pixel
    thresholds and ranks at false_alarm_rate, and "calibration_images"."""
    scores, pixels = [], []
    with torch.no_grad():
        for images in batches:
            maps, image = scorer(images.to(device))
            scores.append(image.cpu())
            pixels.append(maps.cpu().flatten())
    scores = torch.cat(scores)
    return {**threshold_entry(scores, torch.cat(pixels), false_alarm_rate), "calibration_images": len(scores)}


def run_transform(cfg):
    return ImageTransform(cfg.image_size, cfg.crop_size, cfg.resize)


def export_onnx(scorer, side, path):
    """Write `scorer` (on the CPU) as one ONNX model, input "image" (B, 3, side, side), outputs "map" (B, side,
    side) and "score" (B,), the batch dynamic; a method torch.onnx cannot export is refused in one line."""
    import warnings
    from utils.files import atomic_write
    scorer = scorer.cpu().eval()
    batch = {"image": {0: "batch"}, "map": {0: "batch"}, "score": {0: "batch"}}

    def write(tmp):
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes on shapes read as Python numbers (fixed: side)
            torch.onnx.export(scorer, (torch.zeros(2, 3, side, side),), tmp, input_names=["image"],
                              output_names=["map", "score"], dynamic_axes=batch, opset_version=17, dynamo=False)

    try:
        return atomic_write(path, write)
    except Exception as error:  # torch.onnx raises many kinds for an operator it cannot translate
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"--export onnx: method {scorer.method.name} cannot be exported "
                         f"({type(error).__name__}: {first[:200]})") from None
