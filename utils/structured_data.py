"""train_mvtec.py's data: each class's training, held-out (utils.thresholds.hold_out) and test sets of a
structured dataset (datasets.registry), the models trained on them and their names, and the batch sizes they
can train with, refused before any work."""
from pathlib import Path
from types import SimpleNamespace

from datasets.mvtec import resolve_classes
from datasets.registry import DATASETS
from utils import distributed
from utils.thresholds import hold_out
from utils.training import check_batches


def structured_data(cfg, rank, world, alignments):
    """The dataset's folder made ready (the demo generated, an archive fetched, VisA converted: by rank 0 first
    under torchrun) and read: `name` (the run folder's), `classes`, {class: dataset} `train`, `held_out` and
    `test`, `separate`, `drop_last`, the model `groups` ([(group, classes)]: a class each, or "unified") and
    `models` ({(group, target norm): the model's name in checkpoints and tables}). cfg.data_path and cfg.classes
    become what runs (config.json records them). Batch sizes that would fail mid-run are refused now, the heads'
    (cfg.cada_batch_size) when one of cfg.align trains (`alignments`: models.cada.ALIGNMENTS)."""
    name = Path(cfg.data_path).name if cfg.data_path else cfg.dataset
    root = Path(cfg.data_path or f"data/{cfg.dataset}")
    data = DATASETS[cfg.dataset]  # its layout's Dataset class, where to get it, what makes its folder ready
    with distributed.rank0_first(rank, world):  # one process writes the files, the others then find them
        root = data.ready(cfg.dataset, root, cfg.download)
    Dataset, source_hint = data.dataset, data.source_hint
    class_names = resolve_classes(root, cfg.classes, Dataset, source_hint)  # every image and mask decoded once
    train_sets, test_sets = ({c: Dataset(root, c, split, cfg.image_size, cfg.crop_size, resize=cfg.resize,
                                         source_hint=source_hint) for c in class_names} for split in ("train", "test"))
    splits = {c: hold_out(train_sets[c], cfg.val_fraction, cfg.seed) for c in class_names}  # the thresholds' images
    train_sets, held_out = ({c: parts[i] for c, parts in splits.items()} for i in (0, 1))  # held-out ones never train
    cfg.data_path, cfg.classes = str(root), tuple(class_names)
    separate = cfg.setting == "separate"
    drop_last = not separate  # the multi-class reference drops the last short batch; NoCo and RD4AD keep it
    train_sizes = {c: len(train_sets[c]) for c in class_names} if separate else {
        "the union of the classes": sum(len(part) for part in train_sets.values())}
    if cfg.epochs if separate else cfg.iters:
        check_batches(train_sizes, cfg.batch_size, "batch_size", drop_last, world)
    if cfg.cada_iters and any(alignments[kind].trained for kind in cfg.align):  # heads drop the short batch
        check_batches(train_sizes, cfg.cada_batch_size, "cada_batch_size", True, world)
    groups = [(c, [c]) for c in class_names] if separate else [("unified", class_names)]
    models = {(group, norm): group if len(cfg.target_norm) == 1 else f"{group}_norm{norm:g}"
              for group, _ in groups for norm in cfg.target_norm}
    return SimpleNamespace(name=name, classes=class_names, train=train_sets, held_out=held_out, test=test_sets,
                           separate=separate, drop_last=drop_last, groups=groups, models=models)
