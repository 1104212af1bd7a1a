"""Structured anomaly detection (MVTec AD, MPDD, VisA, BTAD, the demo set, or any folder in MVTec
layout) with NoCo: one model per class, image- and pixel-level metrics.

    python train_mvtec.py --dataset demo                         # generated data, a minute on a CPU
    python train_mvtec.py --dataset mvtec --data_path /data/mvtec
    python train_mvtec.py --data_path my_parts/ --classes screw  # your own folder in MVTec layout
    python train_mvtec.py --dataset demo --target_norm 0.5,1,2,4,8,16,32   # the norm study
    python train_mvtec.py --dataset demo --epochs 0              # cold start: the untrained detector

Every constant below can be overridden as --name value. The last line printed is `results: <csv>`.
"""
import time
from pathlib import Path

import torch
from tqdm import tqdm

from datasets.btad import BTADDataset
from datasets.demo import make_demo
from datasets.download import download_dataset
from datasets.mvtec import DATASET_SOURCES, MVTecDataset, list_classes
from datasets.visa import prepare_visa
from models.backbones import build_encoder
from models.noco import NoCo
from utils.config import parse_config, resolve_device, script_constants, seed_everything
from utils.features import CachedBatches, EncodedBatches, extract_features
from utils.maps import gaussian_blur, image_scores, upsample
from utils.metrics import compute_metrics
from utils.results import make_run_dir, metrics_row, save_checkpoint, write_norm_tables

# -----------------------------------------------------------------------------
method = "noco"              # the detector (NoCo, one model per class)
dataset = "mvtec"            # mvtec | mpdd | visa | btad | demo (any MVTec-layout folder works as mvtec)
data_path = ""               # the dataset folder (class folders inside); "" = data/<dataset>
classes = ()                 # comma list of classes; empty = every class found
download = False             # fetch the public archive (MVTec AD, VisA, BTAD) and verify its checksum
out_dir = "results"          # each run writes results/<script>_<dataset>_<method>_<time>/
seed = 0                     # seeds the target, the projector's init and the batch order
device = "auto"              # auto | cpu | cuda
weights = "imagenet"         # imagenet | none (random init) | <path to a state-dict file>
backbone = "wide_resnet50_2"
layers = ("layer1", "layer2", "layer3")
encoder_taps = "preact"      # preact: the reference's pre-activation + leaky-ReLU taps; standard: torchvision's
image_size = 256             # resize to a square ...
crop_size = 224              # ... then centre-crop (0 = no crop)
batch_size = 0               # 0 = the reference's: 16 for MVTec AD, 8 for MPDD and VisA
num_workers = 2
epochs = 50                  # 0 = cold start: evaluate the untrained detector
lr = 1e-4
weight_decay = 5e-4
target = "randn"             # randn | rand | ones | mean (of the projected training features)
target_norm = (1.0,)         # more than one value trains one model per norm: the norm study
target_p = 2.0               # the p-norm the target is rescaled under
nu = 1e-3
radius_init = 1e-5
blur_sigma = 4.0
cache_features = True        # run the frozen encoder once per class instead of every epoch
cache_dtype = "float16"      # float16 | float32
cache_memory_gb = 8.0        # above this, cached features go to a memory-mapped file
cache_dir = ""               # where those files go ("" = the system's temporary folder)
save_checkpoints = True      # the last checkpoint of each model (no other is ever kept or chosen)
# -----------------------------------------------------------------------------
# the demo set is a newcomer's first run: a small, quick configuration unless the command line says otherwise
DEMO_PRESET = {"backbone": "resnet18", "image_size": 128, "crop_size": 0}
cfg = parse_config(script_constants(globals()), dataset_presets={"demo": DEMO_PRESET})
started = time.time()
device = resolve_device(cfg.device)
seed_everything(cfg.seed)  # also fixes a random-init (--weights none) encoder
if cfg.method != "noco":
    raise SystemExit(f"--method: train_mvtec.py implements 'noco', got {cfg.method!r}")
if cfg.cache_dtype not in ("float16", "float32"):
    raise SystemExit(f"--cache_dtype: expected float16 or float32, got {cfg.cache_dtype!r}")

# data -------------------------------------------------------------------------
root = Path(cfg.data_path or f"data/{cfg.dataset}")
if cfg.dataset == "demo":
    make_demo(root)
elif cfg.download:
    download_dataset(cfg.dataset, root)
if cfg.dataset == "visa" and (root / "split_csv").is_dir():  # raw VisA: prepared once into MVTec layout
    root = prepare_visa(root, root / "visa_pytorch")
Dataset = BTADDataset if cfg.dataset == "btad" else MVTecDataset
source_hint = DATASET_SOURCES.get(cfg.dataset, DATASET_SOURCES["folder"])
class_names = list(cfg.classes) or list_classes(root)
if not class_names:
    Dataset(root, "?", "train", source_hint=source_hint)  # raises the error that names the layout
batch_size = cfg.batch_size or (8 if cfg.dataset in ("mpdd", "visa") else 16)
extract = dict(device=device, batch_size=batch_size, num_workers=cfg.num_workers, dtype=getattr(torch, cfg.cache_dtype),
               memory_budget_gb=cfg.cache_memory_gb, cache_dir=cfg.cache_dir or None)

# model ------------------------------------------------------------------------
encoder = build_encoder(cfg.backbone, cfg.weights, cfg.layers, cfg.encoder_taps).to(device)
run_dir = make_run_dir(cfg.out_dir, "train_mvtec", cfg.dataset, cfg.method)
rows = {norm: [] for norm in cfg.target_norm}

for class_name in class_names:
    # frozen features, once per class: every epoch and every target norm reuses them
    train_set = Dataset(root, class_name, "train", cfg.image_size, cfg.crop_size, source_hint=source_hint)
    test_set = Dataset(root, class_name, "test", cfg.image_size, cfg.crop_size, source_hint=source_hint)
    if cfg.cache_features:
        train_features = extract_features(encoder, train_set, desc=f"{class_name} train features", **extract)
        train_batches = CachedBatches(train_features, batch_size)
    else:
        train_batches = EncodedBatches(encoder, train_set, batch_size, cfg.num_workers)
    test_features, test_samples = extract_features(encoder, test_set, desc=f"{class_name} test features",
                                                   keep=("mask", "label"), **extract)
    in_channels = sum(v.shape[1] for v in test_features.values())

    for norm in cfg.target_norm:
        # train ---------------------------------------------------------------
        seed_everything(cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        model = NoCo(in_channels, structured=True, target=cfg.target, target_norm=norm, p=cfg.target_p, nu=cfg.nu,
                     radius_init=cfg.radius_init, generator=generator).to(device)
        if cfg.target == "mean":
            with torch.no_grad():
                model.set_target(torch.cat([model.project(f).mean(dim=(2, 3))
                                            for f in train_batches.epoch(generator, device)]).mean(0))
        optimizer = model.configure_optimizers(cfg.lr, cfg.weight_decay)
        model.train()
        for epoch in (progress := tqdm(range(cfg.epochs), desc=f"{class_name} norm {norm:g}", leave=False)):
            for features in train_batches.epoch(generator, device):
                loss = model.loss(features)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            progress.set_postfix(loss=f"{loss.item():.4f}", r=f"{model.radius.item():.2e}")

        # evaluate the last checkpoint ----------------------------------------
        model.eval()
        maps = torch.cat([model.anomaly_map(f) for f in CachedBatches(test_features, batch_size).ordered(device)])
        maps = gaussian_blur(upsample(maps, test_set.transform.output_size), cfg.blur_sigma)
        metrics = compute_metrics(image_scores(maps), test_samples["label"], maps, test_samples["mask"].to(device))
        rows[norm].append(metrics_row(class_name, metrics))
        print(f"{class_name} target_norm={norm:g}: " +
              " ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items() if v is not None))
        if cfg.save_checkpoints:
            save_checkpoint({"model": model.state_dict(), "config": vars(cfg), "class_name": class_name},
                            run_dir / "checkpoints" / f"{class_name}_norm{norm:g}.pt")

# write the table ----------------------------------------------------------------
csv_path = write_norm_tables(run_dir, rows, vars(cfg), device, started)
print(f"results: {csv_path}")
