"""The one-class semantic AD run shared by train_cifar10.py and train_mnist.py (they differ only in
their constants): checks, data, frozen features once, NoCo per normal class (and per target norm) built
by models.METHODS["noco"] and trained by utils.training.Trainer (fingerprinted checkpoints that
--checkpoint and --resume reuse, training snapshots, torchrun), evaluation of the last checkpoint, the
table after every class (see utils.results.RunFolder)."""
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from datasets.oneclass import OneClassDataset, SemanticDataset
from models import method_of
from utils.checks import check_backbone, check_out_dir
from utils.config import ConfigError, parse_config, resolve_device, seed_everything
from utils.features import CachedBatches, EncodedBatches, extract_features
from utils import distributed, report
from utils.metrics import compute_metrics
from utils.options import check_options, not_in_recipe, not_training
from utils.results import RunFolder, metrics_row, new_run_path, resumed_config
from utils.training import Trainer, check_batches, check_saved_files, iterations

_DEFAULT_ROOTS = {"cats_vs_dogs": "data/cats_vs_dogs"}  # --data_path "": torchvision's sets share data/


def help_epilog(options):
    """--help's last paragraph: the options of the table that never retrain a saved model."""
    return (f"Options that never retrain a saved model (--checkpoint, --resume reuse it across them): "
            f"{', '.join(sorted(not_training(options)))}.")


def ignored_options(options, method):
    """What a model's fingerprint leaves out: the options that never change it, and those that cannot change the
    model this method trains (utils.options.not_in_recipe: another method's, the shared ones it does not read)."""
    return lambda config: not_training(options) | not_in_recipe(options, method, config)


def checked_config(cfg, given, options):
    """The configuration to run: cfg itself, or with --resume the interrupted run's; checked against the script's
    option table (utils.semantic_options) before any work."""
    cfg = resumed_config(cfg, given)
    check_options(cfg, options)
    check_backbone(cfg)
    method_of(cfg, given)
    check_saved_files(cfg.resume, cfg.checkpoint, vars(cfg))  # damaged or foreign files: refused before any work
    if not cfg.resume:
        check_out_dir(cfg.out_dir)
    return cfg


def main(script_file, options, presets=None):
    """A semantic script's run: its command line read against its option table and checked, NoCo trained and
    evaluated per normal class; the last line printed is `results: <csv>`."""
    cfg, given = parse_config({name: option.default for name, option in options.items()}, presets=presets,
                              script=script_file, return_given=True, epilog=help_epilog(options))
    cfg = checked_config(cfg, given, options)
    csv_path = run_semantic_noco(cfg, given, Path(script_file).stem, options)
    print(f"results: {csv_path}")


def _digest(*parts):
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else json.dumps(part).encode())
    return digest.hexdigest()[:12]


def _content(base, rows):
    """The bytes of the images at `rows` of a SemanticDataset: a torchvision set's uint8 array rows, or the
    names and sizes of image files (Cats-vs-Dogs), as data_fingerprint reads MVTec's."""
    if base.files is not None:
        return [(base.files[i].name, base.files[i].stat().st_size) for i in rows.tolist()]
    return np.ascontiguousarray(np.asarray(base.torchvision_set.data)[rows.numpy()]).tobytes()


def one_class_fingerprint(train_set):
    """A short hash of one normal class's training images by what they are: the set's name, the split,
    the normal class, the count and the images' content (a checkpoint's `training_data`)."""
    base = train_set.base
    return _digest([base.name, base.split, train_set.normal_class, len(train_set)],
                   _content(base, train_set.indices))


def split_fingerprint(test_base):
    """A short hash of the test split: its images' content and their classes (the labels of every row)."""
    return _digest([test_base.name, test_base.split, len(test_base)], test_base.targets.numpy().tobytes(),
                   _content(test_base, torch.arange(len(test_base))))


def run_semantic_noco(cfg, given, script, options):
    """Run NoCo on every normal class of cfg.dataset (`options`: the script's option table); return the CSV path."""
    started = time.time()
    method = method_of(cfg, given)
    rank, world, device = distributed.setup(cfg.device)  # torchrun: one of `world` processes
    device = device or resolve_device(cfg.device)
    if cfg.batch_size % world:
        raise ConfigError(f"--batch_size {cfg.batch_size}: it must split evenly over the {world} processes")
    seed_everything(cfg.seed)  # also fixes a random-init (--weights none) encoder

    # data ---------------------------------------------------------------------
    root = Path(cfg.data_path or _DEFAULT_ROOTS.get(cfg.dataset, "data"))
    with distributed.rank0_first(rank, world):  # one process downloads, the others then read its files
        train_base, test_base = (SemanticDataset(cfg.dataset, root, split, cfg.image_size, cfg.crop_size,
                                                 cfg.download, resize=cfg.resize) for split in ("train", "test"))
    train_sets = [OneClassDataset(train_base, c) for c in (cfg.classes or train_base.class_names)]  # checks every name
    cfg.data_path, cfg.classes = str(root), tuple(s.normal_class for s in train_sets)  # config.json records what ran
    if cfg.epochs:  # refused now, not mid-run after a long training
        check_batches({s.normal_class: len(s) for s in train_sets}, cfg.batch_size, "batch_size", False, world)
    several = len(cfg.target_norm) > 1
    model_name = {(s.normal_class, norm): f"class{s.normal_index}" + (f"_norm{norm:g}" if several else "")
                  for s in train_sets for norm in cfg.target_norm}
    if cfg.checkpoint and not Path(cfg.checkpoint).is_file():  # reuse was asked for: every model must be there
        if missing := [name for name in model_name.values()
                       if not (Path(cfg.checkpoint) / "checkpoints" / f"{name}.pt").is_file()]:
            raise ConfigError(f"--checkpoint {cfg.checkpoint}: expected a run folder with "
                              f"checkpoints/{{{','.join(missing)}}}.pt")
    run = RunFolder(distributed.agreed(cfg.resume or new_run_path(cfg.out_dir, script, cfg.dataset, cfg.method),
                                       world), vars(cfg), device, started, resume=bool(cfg.resume),
                    writer=rank == 0, processes=world)
    tested_on = split_fingerprint(test_base)
    training_data = {s.normal_class: one_class_fingerprint(s) for s in train_sets}
    class_data = {c: _digest(fingerprint, tested_on) for c, fingerprint in training_data.items()}
    run.check_finished_data(class_data)  # --resume: a finished class whose images changed is refused
    train_sets = [s for s in train_sets
                  if not all(run.finished(model_name[s.normal_class, n]) for n in cfg.target_norm)]
    train = Trainer(run, cfg.resume, cfg.checkpoint, cfg.seed, device, rank, world, cfg.checkpoint_every,
                    cfg.save_checkpoints)
    ignore = ignored_options(options, method)

    # frozen features, once: every class and every target norm reuses them -----------
    encoder = method.build_encoder(cfg).to(device)
    extract = dict(device=device, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                   dtype=getattr(torch, cfg.cache_dtype), memory_budget_gb=cfg.cache_memory_gb,
                   cache_dir=cfg.cache_dir or None)
    offsets = np.cumsum([0] + [len(s) for s in train_sets])
    cached = {}

    def training_batches(position):
        """The batches of train_sets[position]; with cache_features, every class still to run is encoded at
        the first call (made only when a model is trained, not when one is reused)."""
        train_set = train_sets[position]
        if not cfg.cache_features:
            return EncodedBatches(encoder, train_base, cfg.batch_size, cfg.num_workers, indices=train_set.indices)
        if "train" not in cached:  # the still-to-run classes' train images, class after class
            rows = torch.cat([s.indices for s in train_sets]).tolist()
            cached["train"] = extract_features(encoder, Subset(train_base, rows), desc="train features", **extract)
        return CachedBatches(cached["train"], cfg.batch_size,
                             indices=range(offsets[position], offsets[position + 1]))

    test_features = extract_features(encoder, test_base, desc="test features", **extract) if train_sets else {}

    for position, train_set in enumerate(train_sets):
        class_name = train_set.normal_class
        test_labels = OneClassDataset(test_base, train_set.normal_index).labels
        total_iters = iterations("separate", cfg.epochs, 0, len(train_set), cfg.batch_size, drop_last=False)

        for norm in cfg.target_norm:
            name = model_name[class_name, norm]
            if run.finished(name):
                continue
            # train (or reuse the model trained exactly so) ----------------------
            seed_everything(cfg.seed)
            target_generator = torch.Generator().manual_seed(cfg.seed)
            model = method.build_model(cfg, encoder, norm, target_generator).to(device)

            def before_training(model, batches, generator, device):
                # the batch order continues the generator that drew the target, as this script always has
                generator.set_state(target_generator.get_state())
                method.before_training(model, batches, generator, device)  # the "mean" target

            training_config = {**vars(cfg), "classes": (class_name,), "target_norm": norm,
                               "training_data": training_data[class_name]}
            model = train(model, name, training_config, ignore, lambda: training_batches(position), total_iters,
                          cfg, before_training=before_training)

            # evaluate the last checkpoint (every process scores the whole test set; rank 0 writes) --------
            scores = torch.cat([model.anomaly_map(f).flatten()
                                for f in CachedBatches(test_features, 1024).ordered(device)])
            metrics = compute_metrics(scores, test_labels)
            if cfg.plots and rank == 0:  # what the figures need: the scores, and each test image's projected feature
                with torch.no_grad():
                    polar = torch.cat([report.polar_coordinates(model.project(f).flatten(1), model.target)
                                       for f in CachedBatches(test_features, 1024).ordered(device)])
                report.save_record(run.path, name, {"target_norm": norm, "unified": False,
                                                    "scores": {"none": {class_name: (scores.cpu(), test_labels)}},
                                                    "polar": {class_name: (polar, test_labels)}})
            run.add_rows([metrics_row(class_name, metrics, model=name, target_norm=norm)], class_data)
            print(f"{class_name} target_norm={norm:g}: I-AUROC {100 * metrics['I-AUROC']:.1f} "
                  f"I-AP {100 * metrics['I-AP']:.1f}")

    csv_path = run.finish(norms=cfg.target_norm, study_metrics=("I-AUROC",))
    if cfg.plots and rank == 0:
        report.write_report(run.path, csv_path, f"{script}.py: {cfg.dataset}, {cfg.method}",
                            norm_study_path=csv_path if len(cfg.target_norm) > 1 else None)
    return csv_path
