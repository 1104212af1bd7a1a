"""Structured anomaly detection (MVTec AD, MPDD, VisA, BTAD, the demo set, or any folder in MVTec
layout): NoCo, Reverse Distillation (RevDist), ReContrast, UniAD and Dinomaly, one model per class (separate) or
one model for every class (unified, with optional score alignment: CADA and its variants), with
image- and pixel-level metrics.

    python train_mvtec.py --dataset demo                                  # NoCo, generated data, a minute on a CPU
    python train_mvtec.py --dataset mvtec --data_path /data/mvtec         # NoCo Table III, one model per class
    python train_mvtec.py --dataset mvtec --method revdist                # CADA Table 1, RevDist base (unified)
    python train_mvtec.py --dataset mvtec --method revdist --setting separate   # RD4AD's own per-class table
    python train_mvtec.py --dataset mvtec --method recontrast             # CADA Table 1, ReContrast base
    python train_mvtec.py --dataset mvtec --method revdist --align none,cada    # ... and +CADA
    python train_mvtec.py --dataset mvtec --method dinomaly               # Dinomaly's multi-class table (ViT-B)
    python train_mvtec.py --data_path my_parts/ --classes screw           # your own folder in MVTec layout
    python train_mvtec.py --dataset demo --target_norm 0.5,1,2,4,8,16,32  # NoCo's norm study
    python train_mvtec.py --resume results/<run folder>                   # finish an interrupted run

Settings: `separate` trains one model per class and reports a row per class and their mean;
`unified` trains one model on the union of every class's training images (no class label reaches
it) and reports the per-class rows and their mean (model-unified) and one `mixed` row in which every
test image of every class is pooled (absolute-unified). Every constant below can be overridden as
--name value; PRESETS (below them) swap in each method's reference settings (its registry entry in
models/__init__.py), the unified setting's evaluation and the demo's quick settings, unless the command line
sets them; utils/mvtec_options.py holds each option's check and whether it changes the trained model.
The last line printed is `results: <csv>`.
"""
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.mvtec import MixedDataset, resolve_classes
from datasets.registry import DATASETS
from models import cada, method_of, method_presets, option_owners
from utils.checks import check_out_dir, check_structured
from utils.config import ConfigError, parse_config, resolve_device, script_constants, seed_everything
from utils.features import CachedBatches, EncodedBatches, extract_features
from utils import cpu, distributed, report
from utils.evaluation import (add_alarm_rates, alignment_statistics, collect_maps, evaluate, head_training_table,
                              held_out_thresholds)
from utils.results import RunFolder, model_rows, new_run_path, resumed_config, write_table
from utils.thresholds import hold_out, save_thresholds, too_few, too_few_note
from utils.mvtec_options import MVTEC_RULES
from utils.options import check_options, head_only, not_in_recipe, not_training, option_table
from utils.training import (ImageBatches, Trainer, check_batches, check_saved_files, class_data_fingerprint,
                            data_fingerprint, iterations)

# -----------------------------------------------------------------------------
method = "noco"              # noco | revdist | recontrast | uniad | dinomaly
setting = "separate"         # separate: one model per class | unified: one model for all classes
dataset = "mvtec"            # mvtec | mpdd | visa | btad | demo (any MVTec-layout folder works as mvtec)
data_path = ""               # the dataset folder (class folders inside); "" = data/<dataset>
classes = ()                 # comma list of classes; empty = every class found
download = False             # fetch the public archive (MVTec AD, VisA, BTAD) and verify its checksum
out_dir = "results"          # each run writes results/<script>_<data>_<method>_<setting>_<time>/
resume = ""                  # the folder of an interrupted run: train and evaluate what it is missing
checkpoint = ""              # a run folder (or one .pt file) whose trained models are reused if their training
                             # configuration matches
seed = 0                     # seeds the model's init, NoCo's target and the batch order
val_fraction = 0.1           # of each class's train/good held out of training for the thresholds (at least 3
                             # images; 0 = none, no thresholds)
false_alarm_rate = 0.01      # the thresholds: the fraction of held-out normal images (pixels) scoring above them
device = "auto"              # auto | cpu | cuda
weights = "imagenet"         # imagenet (lite0's from its pip package, offline) | none (random init) | <state-dict file>
                             # (Dinomaly: timm's DINOv2 weights from the Hugging Face hub or its cache)
backbone = "wide_resnet50_2"  # wide_resnet50_2 | resnet18 | resnet152 | efficientnet_b4 (UniAD's) | efficientnet_lite0
                             # (not read by dinomaly, whose encoder is --vit)
vit = "base"                 # Dinomaly's frozen DINOv2-reg4 encoder: small | base | large (or timm's name,
                             # vit_base_patch14_reg4_dinov2)
layers = ("layer1", "layer2", "layer3") # NoCo's taps (layer1-4 at strides 4-32; RevDist, ReContrast always tap 1-3)
encoder_taps = "preact"      # preact: NoCo's pre-activation + leaky-ReLU taps; standard: torchvision's
image_size = 256             # resize to a square ...
crop_size = 224              # ... then centre-crop (0 = no crop)
resize = "cv2"               # cv2: OpenCV bilinear, no antialiasing (NoCo's reference) | pil: PIL bilinear
                             # (RD4AD, ReContrast)
batch_size = 16              # training and evaluation batch
num_workers = 2              # DataLoader processes that decode images
epochs = 50                  # separate setting: passes over a class's training images (0 = untrained)
iters = 5000                 # unified setting: iterations over the union of the classes (0 = untrained)
optimizer = "adamw"          # adamw | adam | stable_adamw (Dinomaly's: AdamW with update clipping)
lr = 1e-4                    # learning rate (of the bottleneck and decoder for RevDist and ReContrast)
encoder_lr = 1e-5            # ReContrast's trainable encoder copy
betas = (0.9, 0.999)         # Adam(W) betas
weight_decay = 5e-4          # Adam(W) weight decay
adam_eps = 1e-8              # Adam(W) eps
amsgrad = True               # Adam(W) amsgrad
lr_drop_at = 0.0             # fraction of the iterations after which lr is multiplied by lr_drop_gamma (0 = never)
lr_drop_gamma = 0.2          # the factor of that drop
lr_schedule = "step"         # step: the lr_drop_at drop, if any | warmup_cosine: lr rises from 0 over warmup_iters,
                             # then falls along a cosine to final_lr (Dinomaly's; needs lr_drop_at 0)
warmup_iters = 100           # lr_schedule warmup_cosine: iterations of the linear warm-up
final_lr = 2e-4              # lr_schedule warmup_cosine: the learning rate at the last iteration
target = "randn"             # NoCo: randn | rand | ones | mean (of the projected training features)
target_norm = (1.0,)         # NoCo: more than one value trains one model per norm (the norm study)
target_p = 2.0               # NoCo: the p-norm the target is rescaled under
nu = 1e-3                    # NoCo: the soft boundary's nu
radius_init = 1e-5           # NoCo: the initial radius r
decoder_activation = "relu"  # RevDist, ReContrast: relu (RD4AD) | gelu (the multi-class setting)
loss_form = "global"         # RevDist: global (RD4AD's code: flattened maps) | pixel (its paper: per-pixel cosine)
hm_factor = 0.0              # ReContrast, Dinomaly: gradient factor at easy points; ReContrast's code uses 0 (its
                             # run names say 0.1), Dinomaly's 0.1 (its preset)
bottleneck_dropout = 0.2     # Dinomaly: dropout of its noisy MLP bottleneck (on its input, hidden and output)
image_score = "max"          # max | top_mean (mean of the top_fraction highest pixels of the blurred map) |
                             # pooled_max (UniAD's: max of the 16x16 average-pooled map)
top_fraction = 0.01          # image score top_mean: the fraction of pixels averaged
blur_sigma = 4.0             # Gaussian blur of the upsampled map (0 = none)
blur_kernel = 0              # 0: scipy's gaussian_filter (33 taps, reflect) | 5: ReContrast multi-class 5x5,
                             # zero padding
eval_size = 0                # resize maps (bilinear) and masks (nearest) to this square side before the blur
                             # (0 = the input size; Dinomaly's evaluation: 256)
cache_features = True        # frozen-encoder methods: run the encoder once over the training images
cache_dtype = "float32"      # float32 | float16 | bfloat16
cache_memory_gb = 8.0        # above this, cached features go to a memory-mapped file
cache_dir = ""               # where those files go ("" = the system's temporary folder)
amp = False                  # on CUDA: bf16 autocast in the training step (losses in float32); off: float32
channels_last = False        # on CUDA: channels-last memory format (faster convolutions with --amp)
recompute = False            # RevDist, ReContrast: keep only convolution outputs for backward (less memory,
                             # 0-25 % slower, same model)
keep_freed_memory = True     # on CPU: malloc reuses freed memory instead of returning it (1.2-1.6x faster at
                             # 256 px, higher peak RSS)
save_checkpoints = True      # the last checkpoint of each model (no other is ever kept or chosen)
checkpoint_every = 1000      # iterations between training snapshots that --resume restarts from (0 = none);
                             # removed when training ends
plots = False                # also draw the figures (PNG) and report.md beside the CSV
align = ("none",)            # unified: none | cada | cada_sigma | class_aware | classifier | cluster; a comma
                             # list gives a row block each
align_input = "bottleneck"   # the CADA head's input: bottleneck (the base's, CADA sec. 4.2; NoCo has none and
                             # uses encoder) | encoder (the frozen encoder's deepest tapped layer, sec. 3.3)
cada_iters = 5000            # alignment head: training iterations (cada_batch_size images each) on the base's maps
cada_lr = 5e-2               # alignment head: SGD learning rate (CADA sec. 4.2) ...
cada_momentum = 0.9          # ... momentum ...
cada_weight_decay = 1e-4     # ... and weight decay
cada_beta = 0.1              # SmoothL1 beta of the regression (CADA: 0.1 for RevDist and ReContrast, 10 for UniAD)
cada_batch_size = 16         # alignment head: training batch, 16 for every base (CADA sec. 4.2), not --batch_size
cada_convs = 1               # alignment head (CADA Table 3): conv-BN-ReLU layers before the pooling (0, 1, 2) ...
cada_linears = 2             # ... linear layers, 256 wide between them (1, 2, 3) ...
cada_dropout = 0.25          # ... dropout rate (0, 0.25, 0.5, 0.75) ...
cada_dropout_at = "every_linear"  # ... before every linear layer (sec. 3.3: "before linear layers") | first_linear
# -----------------------------------------------------------------------------
PRESETS = [  # (condition, values, note), applied in order; an option given on the command line is never replaced
    *method_presets(),  # each method's reference settings (models/__init__.py: its registry entry)
    ({"setting": "unified"}, {"image_score": "top_mean", "blur_kernel": 5}, "the CADA paper's evaluation"),
    ({"dataset": "demo"}, {"backbone": "efficientnet_lite0", "weights": "imagenet", "image_size": 128, "crop_size": 0},
     "a quick first run, with ImageNet weights shipped by pip"),
    ({"dataset": "demo", "method": "uniad"}, {"backbone": "efficientnet_lite0", "batch_size": 16}),
    ({"dataset": "demo", "method": "dinomaly"},
     {"vit": "small", "weights": "none", "image_size": 112, "crop_size": 0, "eval_size": 0},
     "CPU-sized; offline: no DINOv2"),
]
OPTIONS = option_table(script_constants(globals()), MVTEC_RULES, option_owners())  # checks, owners, what trains
NOT_TRAINING, HEAD_ONLY = not_training(OPTIONS), head_only(OPTIONS)  # (utils/mvtec_options.py)
HELP = (f"Options that never retrain a saved model (--checkpoint, --resume reuse it across them): "
        f"{', '.join(sorted(NOT_TRAINING))}; and for the base model the alignment head's: "
        f"{', '.join(sorted(HEAD_ONLY))}. A method's own options (models.METHODS) are refused for the others.")

if __name__ == "__main__":  # imported (predict.py, benchmarks, tests): the constants, PRESETS and OPTIONS only
    cfg, given = parse_config({name: option.default for name, option in OPTIONS.items()}, presets=PRESETS,
                              script=__file__, return_given=True, epilog=HELP)
    cfg = resumed_config(cfg, given)  # with --resume, the interrupted run's own configuration
    check_options(cfg, OPTIONS)
    method = method_of(cfg, given)  # the registry entry: an unknown method or another method's option is refused
    check_structured(cfg, cada.ALIGNMENTS)  # the options that must agree with each other
    check_saved_files(cfg.resume, cfg.checkpoint, vars(cfg))  # damaged or foreign files: refused before any work
    if not cfg.resume:
        check_out_dir(cfg.out_dir)
    started = time.time()
    rank, world, device = distributed.setup(cfg.device)  # torchrun: one of `world` processes
    device = device or resolve_device(cfg.device)
    for option in ("batch_size", "cada_batch_size"):
        if getattr(cfg, option) % world:
            raise ConfigError(f"--{option} {getattr(cfg, option)}: it must split evenly over the {world} processes")
    cfg.amp, cfg.channels_last = (cfg.amp, cfg.channels_last) if device.type == "cuda" else (False, False)  # as run
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if device.type == "cpu" and cfg.keep_freed_memory:
        cpu.keep_freed_memory()
    seed_everything(cfg.seed)  # also fixes a random-init (--weights none) encoder

    # data -------------------------------------------------------------------------
    run_name = Path(cfg.data_path).name if cfg.data_path else cfg.dataset
    root = Path(cfg.data_path or f"data/{cfg.dataset}")
    data = DATASETS[cfg.dataset]  # its layout's Dataset class, where to get it, what makes its folder ready
    with distributed.rank0_first(rank, world):  # one process writes the files, the others then find them
        root = data.ready(cfg.dataset, root, cfg.download)  # the demo generated, an archive fetched, VisA converted
    Dataset, source_hint = data.dataset, data.source_hint
    class_names = resolve_classes(root, cfg.classes, Dataset, source_hint)  # every image and mask decoded once
    train_sets, test_sets = ({c: Dataset(root, c, split, cfg.image_size, cfg.crop_size, resize=cfg.resize,
                                         source_hint=source_hint) for c in class_names} for split in ("train", "test"))
    splits = {c: hold_out(train_sets[c], cfg.val_fraction, cfg.seed) for c in class_names}  # the thresholds' images
    train_sets, held_out = ({c: parts[i] for c, parts in splits.items()} for i in (0, 1))  # held-out ones never train
    cfg.data_path, cfg.classes = str(root), tuple(class_names)  # config.json records what ran
    separate = cfg.setting == "separate"
    drop_last = not separate  # the multi-class reference drops the last short batch; NoCo and RD4AD keep it
    train_sizes = {c: len(train_sets[c]) for c in class_names} if separate else {
        "the union of the classes": sum(len(part) for part in train_sets.values())}
    if cfg.epochs if separate else cfg.iters:  # refused now, not mid-run after a long training
        check_batches(train_sizes, cfg.batch_size, "batch_size", drop_last, world)
    if cfg.cada_iters and any(cada.ALIGNMENTS[kind].trained for kind in cfg.align):  # heads drop the short batch
        check_batches(train_sizes, cfg.cada_batch_size, "cada_batch_size", True, world)
    loader = dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    run = RunFolder(distributed.agreed(cfg.resume or new_run_path(cfg.out_dir, "train_mvtec", run_name, cfg.method,
                                                                  cfg.setting), world),
                    vars(cfg), device, started, resume=bool(cfg.resume), writer=rank == 0, processes=world)
    class_data = {c: class_data_fingerprint([train_sets[c], held_out[c], test_sets[c]]) for c in class_names}
    run.check_finished_data(class_data)  # --resume: a finished class whose images changed is refused
    train = Trainer(run, cfg.resume, cfg.checkpoint, cfg.seed, device, rank, world, cfg.checkpoint_every,
                    cfg.save_checkpoints, amp=cfg.amp)

    # model ------------------------------------------------------------------------
    encoder = method.build_encoder(cfg).to(device, memory_format=memory_format)
    base_ignores = lambda config: NOT_TRAINING | HEAD_ONLY | not_in_recipe(OPTIONS, method, config)  # noqa: E731
    head_ignores = lambda config: NOT_TRAINING | not_in_recipe(OPTIONS, method, config)  # noqa: E731


    def model_inputs(dataset, desc):
        """(model input, labels, masks) per batch, in order: the frozen encoder's features, or the images."""
        for batch in tqdm(DataLoader(dataset, **loader), desc=desc, leave=False, disable=rank > 0):
            images = batch["image"].to(device, memory_format=memory_format)
            with torch.no_grad():
                features = encoder(images) if method.trains_on == "features" else {"image": images}
            yield features, batch["label"], batch["mask"][:, 0].bool()


    def maps_of(model, dataset, desc, inputs=None, probe=None):
        """ClassMaps of the frozen model over a dataset (each process computes its shard; all get the whole)."""
        inputs = inputs or model_inputs(distributed.shard(dataset, rank, world), desc)
        head_input = (lambda m, batch: method.head_input(m, batch, cfg.align_input)) if needs_head_input else None
        return distributed.gathered(collect_maps(model, inputs, head_input, probe), len(dataset), world)


    def training_batches(train_set, desc):
        """The base's training batches: the frozen encoder's features once (no augmentation), or images."""
        if method.trains_on == "images":
            return ImageBatches(train_set, cfg.batch_size, cfg.num_workers)
        if not cfg.cache_features:
            return EncodedBatches(encoder, train_set, cfg.batch_size, cfg.num_workers)
        return CachedBatches(extract_features(encoder, train_set, device, dtype=getattr(torch, cfg.cache_dtype),
                                              memory_budget_gb=cfg.cache_memory_gb, cache_dir=cfg.cache_dir or None,
                                              desc=f"{desc} train features", **loader), cfg.batch_size)


    groups = [(c, [c]) for c in class_names] if separate else [("unified", class_names)]
    model_names = {(g, norm): g if len(cfg.target_norm) == 1 else f"{g}_norm{norm:g}"  # checkpoint and table names
                   for g, _ in groups for norm in cfg.target_norm}
    if cfg.checkpoint:  # reuse was asked for: every base model must be there before anything runs
        wanted = list(model_names.values())
        if not Path(cfg.checkpoint).is_file() and not all(
                (Path(cfg.checkpoint) / "checkpoints" / f"{name}.pt").is_file() for name in wanted):
            raise ConfigError(f"--checkpoint {cfg.checkpoint}: expected a .pt file or a run folder with "
                              f"checkpoints/{{{','.join(wanted)}}}.pt")
    if cfg.resume and cfg.save_checkpoints:  # a finished model whose files are gone is trained again, not skipped
        for name in model_names.values():
            files = [f"{name}.pt", *(f"{name}_{kind}.pt" for kind in cfg.align if cada.ALIGNMENTS[kind].saved)]
            if run.finished(name) and (lost := [f for f in files if not (run.path / "checkpoints" / f).is_file()]):
                print(f"{name}: checkpoints/{', '.join(lost)} missing from {run.path}: trained again where needed")
                run.rows = [row for row in run.rows if row.get("model") != name]
    needs_head_input = any(cada.ALIGNMENTS[kind].reads_features for kind in cfg.align)
    probe = report.noco_polar if cfg.plots and method.name == "noco" else None  # NoCo's polar figure
    alignment_rows = []  # per class: the true normal statistics on held-out (test) normal images beside each estimate
    for group_name, group in groups:
        train_set = train_sets[group[0]] if separate else MixedDataset(train_sets[c] for c in group)
        total_iters = iterations(cfg.setting, cfg.epochs, cfg.iters, len(train_set), cfg.batch_size, drop_last)
        base_config = {**vars(cfg), "classes": group, "training_data": data_fingerprint(train_sets[c] for c in group)}
        cached, test_inputs = {}, {}  # training batches and (the norm study) frozen test features, made once per group

        def group_batches():
            if "base" not in cached:  # made when a model of this group is trained, not when one is reused
                cached["base"] = training_batches(train_set, group_name)
            return cached["base"]

        for norm in cfg.target_norm:
            model_name = model_names[group_name, norm]
            if run.finished(model_name):
                continue  # finished before the run was interrupted
            # train the base model (or reuse it), then its raw test maps, per class ----------------
            seed_everything(cfg.seed)
            model = method.build_model(cfg, encoder, norm, torch.Generator().manual_seed(cfg.seed))
            training_config = {**base_config, "target_norm": norm}
            model = train(model.to(device, memory_format=memory_format), model_name, training_config, base_ignores,
                          group_batches, total_iters, cfg,
                          drop_last=drop_last, grad_clip=method.grad_clip, before_training=method.before_training)
            if len(cfg.target_norm) > 1:
                test_inputs = test_inputs or {c: list(model_inputs(distributed.shard(test_sets[c], rank, world),
                                                                    f"{c} test")) for c in group}
            tested = {c: maps_of(model, test_sets[c], f"{c} test", test_inputs.get(c), probe) for c in group}
            held = {c: maps_of(model, held_out[c], f"{c} held-out") for c in group} if cfg.val_fraction else None
            shown = {c: report.example_indices(tested[c].labels) for c in group} if cfg.plots else None
            record = report.new_record(norm, not separate, tested, test_sets, shown) if cfg.plots else None

            # alignments: statistics of the frozen model's maps on every training image, once; a head each ---
            if any(cada.ALIGNMENTS[kind].calibrates for kind in cfg.align):
                head_table = head_training_table([maps_of(model, train_sets[c], f"{c} train maps") for c in group])
            rows = []
            for kind in cfg.align:
                alignment = None
                if cada.ALIGNMENTS[kind].calibrates:
                    seed_everything(cfg.seed)
                    alignment = cada.Alignment(kind, head_table["features"].shape[1] if needs_head_input else 0,
                                               len(group),
                                               cfg.cada_beta, cfg.cada_convs, cfg.cada_linears, cfg.cada_dropout,
                                               cfg.cada_dropout_at).to(device)
                    alignment.fit_statistics(head_table, cfg.seed)
                    if cada.ALIGNMENTS[kind].trained:  # its loss (CADA eq. 3, or cross-entropy), the base frozen
                        alignment = train(alignment, f"{model_name}_{kind}", {**training_config, "align": kind},
                                          head_ignores,
                                          lambda: CachedBatches(head_table, cfg.cada_batch_size), cfg.cada_iters, cfg,
                                          base=False, drop_last=True, batch_option="cada_batch_size")
                    elif cada.ALIGNMENTS[kind].saved and cfg.save_checkpoints:  # fitted, not trained: for predict.py
                        run.save_checkpoint({"model": alignment.state_dict(), "fingerprint": "",
                                             "training_config": {**training_config, "align": kind}},
                                            f"{model_name}_{kind}")
                # evaluate the last checkpoint ------------------------------------------------
                per_class, pooled, kept = evaluate(tested, cfg, alignment, pooled=not separate, keep=shown)
                threshold = None  # from the held-out normal images only, through the same path as the test set
                if held is not None:
                    entry = held_out_thresholds(held, cfg, alignment, cfg.false_alarm_rate)
                    threshold = entry["image"]
                    if rank == 0:
                        if kind == cfg.align[0] and too_few(entry["held_out_images"], cfg.false_alarm_rate):
                            print(too_few_note(model_name, entry["held_out_images"], entry, cfg.false_alarm_rate,
                                               "held-out images", "hold out more with --val_fraction, or set thresholds"
                                               " on normal images of the line with predict.py --calibrate"))
                        save_thresholds(run.path, model_name, kind, {**entry, "classes": list(group)},
                                        {"false_alarm_rate": cfg.false_alarm_rate, "val_fraction": cfg.val_fraction,
                                         "seed": cfg.seed})
                add_alarm_rates(per_class, pooled, kept, tested, threshold)
                if record is not None:  # what the figures need, kept from this evaluation
                    report.keep_evaluation(record, kind, kept, {c: tested[c].labels for c in group})
                rows += model_rows(per_class, pooled, model_name, norm, None if separate else kind, len(cfg.align) > 1)
                if alignment is not None:
                    alignment_rows += [{"model": model_name, "align": kind, **row}
                                       for row in alignment_statistics(tested, alignment)]
            if alignment_rows and rank == 0:
                write_table(pd.DataFrame(alignment_rows), run.path / "alignment_stats.csv", float_format="%.6g")
            if record is not None and rank == 0:
                report.save_record(run.path, model_name, record)
            run.add_rows(rows, class_data)

    # write the table (and with --plots the figures and report.md) ---------------------------
    csv_path = run.finish(norms=cfg.target_norm)
    if cfg.plots and rank == 0:
        report.write_report(run.path, csv_path, f"train_mvtec.py: {run_name}, {cfg.method}, {cfg.setting}",
                            norm_study_path=csv_path if len(cfg.target_norm) > 1 else None)
    print(f"results: {csv_path}")
