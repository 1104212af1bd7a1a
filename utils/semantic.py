"""The one-class semantic AD run shared by train_cifar10.py and train_mnist.py (they differ only in
their constants): checks, data, frozen features once, NoCo per normal class (and per target norm),
evaluation of the last checkpoint, the table after every class (see utils.results.RunFolder)."""
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from datasets.oneclass import OneClassDataset, SemanticDataset
from models.backbones import build_encoder
from models.noco import NoCo
from utils.checks import check_backbone, check_config, check_out_dir
from utils.config import resolve_device, seed_everything
from utils.features import CachedBatches, EncodedBatches, extract_features
from utils import report
from utils.metrics import compute_metrics
from utils.results import RunFolder, metrics_row, new_run_path, resumed_config
from utils.training import batch_stream, fit, iterations


def checked_config(cfg, given, script, datasets):
    """The configuration to run: cfg itself, or with --resume the interrupted run's; checked before any work."""
    cfg = resumed_config(cfg, given)
    check_config(cfg, positive=("batch_size", "lr", "target_norm", "image_size"),
                 non_negative=("seed", "epochs", "crop_size", "num_workers", "weight_decay", "cache_memory_gb",
                               "radius_penalty", "lr_drop_at"),
                 choices={"method": ("noco",), "dataset": datasets, "resize": ("pil", "cv2"),
                          "optimizer": ("adamw", "adam"),
                          "cache_dtype": ("float32", "float16", "bfloat16")}, at_most={"lr_drop_at": 1.0},
                 below={"seed": 2 ** 32})
    check_backbone(cfg)
    if not cfg.resume:
        check_out_dir(cfg.out_dir)
    return cfg


def run_semantic_noco(cfg, script, default_root="data"):
    """Run NoCo on every normal class of cfg.dataset; return the CSV path."""
    started = time.time()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)  # also fixes a random-init (--weights none) encoder

    # data ---------------------------------------------------------------------
    root = Path(cfg.data_path or default_root)
    train_base = SemanticDataset(cfg.dataset, root, "train", cfg.image_size, cfg.crop_size, cfg.download,
                                 resize=cfg.resize)
    test_base = SemanticDataset(cfg.dataset, root, "test", cfg.image_size, cfg.crop_size, cfg.download,
                                resize=cfg.resize)
    train_sets = [OneClassDataset(train_base, c) for c in (cfg.classes or train_base.class_names)]  # checks every name
    cfg.data_path, cfg.classes = str(root), tuple(s.normal_class for s in train_sets)  # config.json records what ran
    run = RunFolder(cfg.resume or new_run_path(cfg.out_dir, script, cfg.dataset, cfg.method), vars(cfg), device,
                    started, resume=bool(cfg.resume))
    several = len(cfg.target_norm) > 1
    model_name = {(s.normal_class, norm): f"class{s.normal_index}" + (f"_norm{norm:g}" if several else "")
                  for s in train_sets for norm in cfg.target_norm}
    train_sets = [s for s in train_sets
                  if not all(run.finished(model_name[s.normal_class, n]) for n in cfg.target_norm)]

    # frozen features, once: every class and every target norm reuses them -----------
    encoder = build_encoder(cfg.backbone, cfg.weights, cfg.layers, cfg.encoder_taps).to(device)
    extract = dict(device=device, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                   dtype=getattr(torch, cfg.cache_dtype), memory_budget_gb=cfg.cache_memory_gb,
                   cache_dir=cfg.cache_dir or None)
    if cfg.cache_features and train_sets:  # the chosen classes' train images, class after class
        train_rows = torch.cat([s.indices for s in train_sets]).tolist()
        train_features = extract_features(encoder, Subset(train_base, train_rows), desc="train features", **extract)
    test_features = extract_features(encoder, test_base, desc="test features", **extract) if train_sets else {}
    in_channels = sum(v.shape[1] for v in test_features.values())

    offset = 0
    for train_set in train_sets:
        class_name = train_set.normal_class
        if cfg.cache_features:
            batches = CachedBatches(train_features, cfg.batch_size, indices=range(offset, offset + len(train_set)))
        else:
            batches = EncodedBatches(encoder, train_base, cfg.batch_size, cfg.num_workers, indices=train_set.indices)
        offset += len(train_set)
        test_labels = OneClassDataset(test_base, train_set.normal_index).labels
        total_iters = iterations("separate", cfg.epochs, 0, len(train_set), cfg.batch_size, drop_last=False)

        for norm in cfg.target_norm:
            name = model_name[class_name, norm]
            if run.finished(name):
                continue
            # train -----------------------------------------------------------
            seed_everything(cfg.seed)
            generator = torch.Generator().manual_seed(cfg.seed)
            model = NoCo(in_channels, structured=False, target=cfg.target, target_norm=norm, p=cfg.target_p,
                         nu=cfg.nu, radius_init=cfg.radius_init, radius_penalty=cfg.radius_penalty,
                         generator=generator).to(device)
            if cfg.target == "mean":
                with torch.no_grad():
                    model.set_target(torch.cat([model.project(f).flatten(1)
                                                for f in batches.epoch(generator, device)]).mean(0))
            optimizer, scheduler = model.configure_optimizers(cfg, total_iters)
            fit(model, batch_stream(batches, generator, device), optimizer, scheduler, total_iters,
                desc=f"{class_name} norm {norm:g}")
            if cfg.save_checkpoints:
                run.save_checkpoint({"model": model.state_dict(), "training_config": vars(cfg),
                                     "class_name": class_name}, name)

            # evaluate the last checkpoint ------------------------------------
            model.eval()
            scores = torch.cat([model.anomaly_map(f).flatten()
                                for f in CachedBatches(test_features, 1024).ordered(device)])
            metrics = compute_metrics(scores, test_labels)
            if cfg.plots:  # what the figures need: the scores, and each test image's projected feature
                with torch.no_grad():
                    polar = torch.cat([report.polar_coordinates(model.project(f).flatten(1), model.target)
                                       for f in CachedBatches(test_features, 1024).ordered(device)])
                report.save_record(run.path, name, {"target_norm": norm, "unified": False,
                                                    "scores": {"none": {class_name: (scores.cpu(), test_labels)}},
                                                    "polar": {class_name: (polar, test_labels)}})
            run.add_rows([metrics_row(class_name, metrics, model=name, target_norm=norm)])
            print(f"{class_name} target_norm={norm:g}: I-AUROC {100 * metrics['I-AUROC']:.1f} "
                  f"I-AP {100 * metrics['I-AP']:.1f}")

    csv_path = run.finish(norms=cfg.target_norm, study_metrics=("I-AUROC",))
    if cfg.plots:
        report.write_report(run.path, csv_path, f"{script}.py: {cfg.dataset}, {cfg.method}",
                            norm_study_path=csv_path if len(cfg.target_norm) > 1 else None)
    return csv_path
