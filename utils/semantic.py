"""The one-class semantic AD run shared by train_cifar10.py and train_mnist.py (they differ only in
their constants): data, frozen features once, NoCo per normal class (and per target norm),
evaluation of the last checkpoint, the table."""
import time
from pathlib import Path

import torch
from torch.utils.data import Subset
from tqdm import tqdm

from datasets.oneclass import OneClassDataset, SemanticDataset
from models.backbones import build_encoder
from models.noco import NoCo
from utils.config import resolve_device, seed_everything
from utils.features import CachedBatches, EncodedBatches, extract_features
from utils.metrics import compute_metrics
from utils.results import make_run_dir, metrics_row, save_checkpoint, write_norm_tables


def run_semantic_noco(cfg, script, datasets, default_root="data"):
    """Run NoCo on every normal class of cfg.dataset (one of `datasets`); return the CSV path."""
    started = time.time()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)  # also fixes a random-init (--weights none) encoder
    if cfg.method != "noco":
        raise SystemExit(f"--method: {script}.py implements 'noco', got {cfg.method!r}")
    if cfg.dataset not in datasets:
        raise SystemExit(f"--dataset: {script}.py takes {' | '.join(datasets)}, got {cfg.dataset!r}")
    if cfg.cache_dtype not in ("float16", "float32"):
        raise SystemExit(f"--cache_dtype: expected float16 or float32, got {cfg.cache_dtype!r}")

    # data ---------------------------------------------------------------------
    root = Path(cfg.data_path or default_root)
    train_base = SemanticDataset(cfg.dataset, root, "train", cfg.image_size, cfg.crop_size, cfg.download)
    test_base = SemanticDataset(cfg.dataset, root, "test", cfg.image_size, cfg.crop_size, cfg.download)
    train_sets = [OneClassDataset(train_base, c) for c in (cfg.classes or train_base.class_names)]

    # frozen features, once: every class and every target norm reuses them -----------
    encoder = build_encoder(cfg.backbone, cfg.weights, cfg.layers, cfg.encoder_taps).to(device)
    extract = dict(device=device, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                   dtype=getattr(torch, cfg.cache_dtype), memory_budget_gb=cfg.cache_memory_gb,
                   cache_dir=cfg.cache_dir or None)
    if cfg.cache_features:  # the chosen classes' train images, class after class
        train_rows = torch.cat([s.indices for s in train_sets]).tolist()
        train_features = extract_features(encoder, Subset(train_base, train_rows), desc="train features", **extract)
    test_features = extract_features(encoder, test_base, desc="test features", **extract)
    in_channels = sum(v.shape[1] for v in test_features.values())

    run_dir = make_run_dir(cfg.out_dir, script, cfg.dataset, cfg.method)
    rows = {norm: [] for norm in cfg.target_norm}
    offset = 0
    for train_set in train_sets:
        class_name = train_set.normal_class
        if cfg.cache_features:
            batches = CachedBatches(train_features, cfg.batch_size, indices=range(offset, offset + len(train_set)))
        else:
            batches = EncodedBatches(encoder, train_base, cfg.batch_size, cfg.num_workers, indices=train_set.indices)
        offset += len(train_set)
        test_labels = OneClassDataset(test_base, train_set.normal_index).labels

        for norm in cfg.target_norm:
            # train -----------------------------------------------------------
            seed_everything(cfg.seed)
            generator = torch.Generator().manual_seed(cfg.seed)
            model = NoCo(in_channels, structured=False, target=cfg.target, target_norm=norm, p=cfg.target_p,
                         nu=cfg.nu, radius_init=cfg.radius_init, radius_penalty=cfg.radius_penalty,
                         generator=generator).to(device)
            if cfg.target == "mean":
                with torch.no_grad():
                    model.set_target(torch.cat([model.project(f).flatten(1) for f in batches.epoch(generator, device)]).mean(0))
            optimizer = model.configure_optimizers(cfg.lr, cfg.weight_decay)
            model.train()
            for epoch in (progress := tqdm(range(cfg.epochs), desc=f"{class_name} norm {norm:g}", leave=False)):
                for features in batches.epoch(generator, device):
                    loss = model.loss(features)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                progress.set_postfix(loss=f"{loss.item():.4f}", r=f"{model.radius.item():.2e}")

            # evaluate the last checkpoint ------------------------------------
            model.eval()
            scores = torch.cat([model.anomaly_map(f).flatten()
                                for f in CachedBatches(test_features, 1024).ordered(device)])
            metrics = compute_metrics(scores, test_labels)
            rows[norm].append(metrics_row(class_name, metrics))
            print(f"{class_name} target_norm={norm:g}: I-AUROC {100 * metrics['I-AUROC']:.1f} "
                  f"I-AP {100 * metrics['I-AP']:.1f}")
            if cfg.save_checkpoints:
                save_checkpoint({"model": model.state_dict(), "config": vars(cfg), "class_name": class_name},
                                run_dir / "checkpoints" / f"class{train_set.normal_index}_norm{norm:g}.pt")

    return write_norm_tables(run_dir, rows, vars(cfg), device, started, study_metrics=("I-AUROC",))
