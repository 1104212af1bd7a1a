"""Epoch time of NoCo training with and without the frozen-feature cache, in one run.

    python benchmarks/bench_noco.py                                   # structured, resnet18, demo data
    python benchmarks/bench_noco.py --task semantic                   # pooled features (NoCo's semantic head)
    python benchmarks/bench_noco.py --backbone wide_resnet50_2 --image_size 256 --crop_size 224   # paper size
    python benchmarks/bench_noco.py --data_path /data/magnetic_tile --class_name magnetic_tile

Without the cache every epoch decodes the images and runs the frozen encoder; with it, the first
epoch pays for one extraction and every later epoch only trains the projector. Both paths see the
same batches (tests/test_features.py checks that they train the same projector).
Target: >= 10x faster per epoch after the first.
"""
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from datasets.demo import make_demo  # noqa: E402
from datasets.mvtec import MVTecDataset  # noqa: E402
from models.backbones import build_encoder  # noqa: E402
from models.noco import NoCo  # noqa: E402
from utils.config import parse_config, resolve_device  # noqa: E402
from utils.features import CachedBatches, EncodedBatches, extract_features  # noqa: E402
from utils.optim import optimizer_settings  # noqa: E402

cfg = parse_config({"task": "structured", "backbone": "resnet18", "weights": "none", "data_path": "",
                    "class_name": "brick", "n_train": 64, "image_size": 128, "crop_size": 0, "batch_size": 16,
                    "num_workers": 2, "epochs": 2, "device": "auto"})
device = resolve_device(cfg.device)
torch.manual_seed(0)

root = Path(cfg.data_path) if cfg.data_path else make_demo(Path(tempfile.mkdtemp()) / "demo", n_train=cfg.n_train)
dataset = MVTecDataset(root, cfg.class_name, "train", cfg.image_size, cfg.crop_size)
structured = cfg.task == "structured"
layers = ("layer1", "layer2", "layer3") if structured else ("avgpool",)
encoder = build_encoder(cfg.backbone, cfg.weights, layers, "preact").to(device)


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_epochs(batches, in_channels):
    model = NoCo(in_channels, structured=structured).to(device)
    optimizer, _ = model.configure_optimizers(optimizer_settings(lr=1e-4, weight_decay=5e-4), 1)
    generator, times = torch.Generator().manual_seed(0), []
    for _ in range(cfg.epochs):
        sync()
        start = time.perf_counter()
        for features in batches.epoch(generator, device):
            loss = model.loss(features)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


sync()
start = time.perf_counter()
cache = extract_features(encoder, dataset, device, cfg.batch_size, cfg.num_workers)
sync()
extraction = time.perf_counter() - start
in_channels = sum(v.shape[1] for v in cache.values())
with_cache = time_epochs(CachedBatches(cache, cfg.batch_size), in_channels)
without_cache = time_epochs(EncodedBatches(encoder, dataset, cfg.batch_size, cfg.num_workers), in_channels)

print(f"{cfg.task} NoCo, {cfg.backbone} {layers}, {len(dataset)} images of {root / cfg.class_name}, "
      f"{cfg.image_size}px (crop {cfg.crop_size or 'none'}), batch {cfg.batch_size}, {device}, "
      f"{torch.get_num_threads()} threads; projector {in_channels}->{in_channels}")
cache_mib = sum(v.numel() * v.element_size() for v in cache.values()) / 2 ** 20
print(f"cache: {cache_mib:.0f} MiB ({next(iter(cache.values())).dtype}), "
      f"extracted once in {extraction:.2f} s")
print(f"epoch without cache: {without_cache:.2f} s")
print(f"epoch with cache:    {with_cache:.2f} s")
print(f"speed-up per epoch after the first: {without_cache / with_cache:.1f}x")
