"""Structured anomaly detection (MVTec AD, MPDD, VisA, BTAD, the demo set, or any folder in MVTec
layout): NoCo, Reverse Distillation (RevDist), ReContrast, UniAD and Dinomaly, one model per class (separate) or one
model for every class (unified, with optional score alignment: CADA and its variants), image and pixel metrics.

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
from functools import cache, partial
from types import SimpleNamespace

import pandas as pd
import torch

from datasets.mvtec import MixedDataset
from models import cada, method_of, method_presets, option_owners
from utils.checks import check_out_dir, check_structured
from utils.config import parse_config, script_constants, seed_everything
from utils.features import CachedBatches
from utils import distributed, report
from utils.evaluation import alignment_statistics, evaluate_thresholded, head_training_table
from utils.frozen_maps import MapReader
from utils.mvtec_options import MVTEC_RULES
from utils.results import RunFolder, model_rows, new_run_path, resumed_config, write_table
from utils.structured_data import structured_data
from utils.thresholds import save_held_out_thresholds
from utils.options import added_options, check_options, head_only, not_in_recipe, not_training, option_table
from utils.training import (Trainer, check_reuse, check_saved_files, class_data_fingerprint, data_fingerprint,
                            iterations, place, training_batches)

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
cada_pool = "mean"           # alignment head (ours): its global pooling, mean (as we read the paper) | median
cada_standardise = False     # alignment head (ours): its input standardised per channel (training images' mean, std)
cluster_k = "silhouette"     # --align cluster (ours): k by silhouette | calibration (cross-validated (u, gamma) error)
# -----------------------------------------------------------------------------
PRESETS = [  # (condition, values, note), applied in order; an option given on the command line is never replaced
    *method_presets(),  # each method's reference settings (models/__init__.py: its registry entry)
    ({"setting": "unified"}, {"image_score": "top_mean", "blur_kernel": 5}, "the CADA paper's evaluation"),
    ({"dataset": "demo"}, {"backbone": "efficientnet_lite0", "weights": "imagenet", "image_size": 128, "crop_size": 0},
     "a quick first run, with ImageNet weights shipped by pip"),
    ({"dataset": "demo", "method": "uniad"}, {"backbone": "efficientnet_lite0", "batch_size": 16}),
    ({"dataset": "demo", "method": "dinomaly"}, {"vit": "small", "weights": "none", "image_size": 112, "crop_size": 0,
                                                 "eval_size": 0}, "CPU-sized; offline: no DINOv2"),
]
OPTIONS = option_table(script_constants(globals()), MVTEC_RULES, option_owners())  # checks, owners, what trains
NOT_TRAINING, HEAD_ONLY = not_training(OPTIONS), head_only(OPTIONS)  # (utils/mvtec_options.py)
HELP = (f"Options that never retrain a saved model (--checkpoint, --resume reuse it across them): "
        f"{', '.join(sorted(NOT_TRAINING))}; and for the base model the alignment head's: "
        f"{', '.join(sorted(HEAD_ONLY))}. A method's own options (models.METHODS) are refused for the others.")


def configure():
    """(context, start time): the options, each refused in one line before any work; where this process runs."""
    cfg, given = parse_config({name: option.default for name, option in OPTIONS.items()}, presets=PRESETS,
                              script=__file__, return_given=True, epilog=HELP)
    cfg = resumed_config(cfg, given)  # with --resume, the interrupted run's own configuration
    check_options(cfg, OPTIONS)
    method = method_of(cfg, given)  # the registry entry: an unknown method or another method's option is refused
    check_structured(cfg, cada.ALIGNMENTS)  # the options that must agree with each other
    check_saved_files(cfg.resume, cfg.checkpoint, vars(cfg), added_options(OPTIONS))  # damaged, foreign: refused now
    if not cfg.resume:
        check_out_dir(cfg.out_dir)
    started = time.time()
    rank, world, device, memory_format = place(cfg, ("batch_size", "cada_batch_size"))  # torchrun: one of `world`
    return SimpleNamespace(cfg=cfg, method=method, device=device, rank=rank, world=world, memory_format=memory_format,
                           run=None, train=None, reader=None), started


def open_run(ctx, data, started):
    """(run folder: new, or --resume's, refusing finished classes whose images changed; class data fingerprints)"""
    cfg, method = ctx.cfg, ctx.method
    path = cfg.resume or new_run_path(cfg.out_dir, "train_mvtec", data.name, cfg.method, cfg.setting)
    ctx.run = RunFolder(distributed.agreed(path, ctx.world), vars(cfg), ctx.device, started, resume=bool(cfg.resume),
                        writer=ctx.rank == 0, processes=ctx.world)
    class_data = {c: class_data_fingerprint([data.train[c], data.held_out[c], data.test[c]]) for c in data.classes}
    ctx.run.check_finished_data(class_data)
    ctx.train = Trainer(ctx.run, cfg.resume, cfg.checkpoint, cfg.seed, ctx.device, ctx.rank, ctx.world,
                        cfg.checkpoint_every, cfg.save_checkpoints, amp=cfg.amp, added=added_options(OPTIONS))
    encoder = method.build_encoder(cfg).to(ctx.device, memory_format=ctx.memory_format)
    reads_features = any(cada.ALIGNMENTS[kind].reads_features for kind in cfg.align)
    ctx.reader = MapReader(encoder, method, ctx.device, dict(batch_size=cfg.batch_size, num_workers=cfg.num_workers),
                           ctx.rank, ctx.world, ctx.memory_format, cfg.align_input if reads_features else None)
    return ctx.run, class_data


def ignored_options(method, head=False):
    """What a base model's (a head's: head=True) fingerprint leaves out: see utils.options.not_in_recipe."""
    return lambda config: NOT_TRAINING | (set() if head else HEAD_ONLY) | not_in_recipe(OPTIONS, method, config)


def train_base(ctx, *, name, norm, training_config, batches, total_iters, drop_last):
    """One base model (of a class, or of every class), trained or reused (--resume, --checkpoint), frozen."""
    seed_everything(ctx.cfg.seed)
    model = ctx.method.build_model(ctx.cfg, ctx.reader.encoder, norm, torch.Generator().manual_seed(ctx.cfg.seed))
    return ctx.train(model.to(ctx.device, memory_format=ctx.memory_format), name, training_config,
                     ignored_options(ctx.method), batches, total_iters, ctx.cfg, drop_last=drop_last,
                     grad_clip=ctx.method.grad_clip, before_training=ctx.method.before_training)


def frozen_maps(ctx, *, model, data, group, test_inputs, probe, norm):
    """The frozen base's raw maps per class: test, held-out, training (the heads' table); the figures' record."""
    cfg, maps_of = ctx.cfg, ctx.reader.maps
    tested = {c: maps_of(model, data.test[c], f"{c} test", test_inputs.get(c), probe) for c in group}
    held = {c: maps_of(model, data.held_out[c], f"{c} held-out") for c in group} if cfg.val_fraction else None
    shown = {c: report.example_indices(tested[c].labels) for c in group} if cfg.plots else None
    record = report.new_record(norm, not data.separate, tested, data.test, shown) if cfg.plots else None
    head_table = head_training_table([maps_of(model, data.train[c], f"{c} train maps") for c in group]) if any(
        cada.ALIGNMENTS[kind].calibrates for kind in cfg.align) else None
    return SimpleNamespace(tested=tested, held=held, shown=shown, record=record, head_table=head_table)


def train_alignment(ctx, *, kind, name, head_table, training_config, n_classes):
    """Alignment `kind` of a frozen base (None: none), fitted to its training maps, its head trained or reused."""
    cfg, spec = ctx.cfg, cada.ALIGNMENTS[kind]
    if not spec.calibrates:
        return None
    seed_everything(cfg.seed)
    channels = head_table["features"].shape[1] if "features" in head_table else 0
    alignment = cada.alignment_of(kind, channels, n_classes, cfg).to(ctx.device)
    started, config = time.time(), {**training_config, "align": kind}
    alignment.fit_statistics(head_table, cfg.seed)
    if spec.trained:  # its loss (CADA eq. 3, or cross-entropy), the base frozen
        alignment = ctx.train(alignment, name, config, ignored_options(ctx.method, head=True),
                              lambda: CachedBatches(head_table, cfg.cada_batch_size), cfg.cada_iters, cfg,
                              base=False, drop_last=True, batch_option="cada_batch_size")
    elif spec.saved and cfg.save_checkpoints:  # fitted, not trained: for predict.py
        ctx.run.save_checkpoint({"model": alignment.state_dict(), "fingerprint": "", "training_config": config}, name)
    alignment.record["fit_seconds"] = round(time.time() - started, 2)  # fitted and trained (or reused)
    return alignment


def evaluate_alignment(ctx, *, kind, alignment, maps, name, norm, group, separate):
    """(table rows, alignment statistics rows) of the last checkpoint; thresholds from held-out images only."""
    per_class, pooled, kept, entry = evaluate_thresholded(maps.tested, maps.held, ctx.cfg, alignment,
                                                          pooled=not separate, keep=maps.shown)
    if entry is not None and ctx.rank == 0:
        save_held_out_thresholds(ctx.run.path, name, kind, entry, group, ctx.cfg, warn=kind == ctx.cfg.align[0])
    if maps.record is not None:  # what the figures need, kept from this evaluation
        report.keep_evaluation(maps.record, kind, kept, {c: maps.tested[c].labels for c in group})
    rows = model_rows(per_class, pooled, name, norm, None if separate else kind, len(ctx.cfg.align) > 1)
    statistics = [] if alignment is None else alignment_statistics(maps.tested, alignment, maps.head_table)
    return rows, [{"model": name, "align": kind, **row} for row in statistics]


def main():
    ctx, started = configure()
    cfg, method = ctx.cfg, ctx.method
    seed_everything(cfg.seed)  # also fixes a random-init (--weights none) encoder
    data = structured_data(cfg, ctx.rank, ctx.world, cada.ALIGNMENTS)  # refuses batch sizes that would fail later
    run, class_data = open_run(ctx, data, started)
    check_reuse(cfg, run, data.models.values(), [kind for kind in cfg.align if cada.ALIGNMENTS[kind].saved])
    probe = method.probe if cfg.plots else None  # a method's own figure data (NoCo's polar plot)
    alignment_rows = []  # per class: the true normal statistics on held-out (test) normal images beside each estimate
    for group_name, group in data.groups:
        train_set = data.train[group[0]] if data.separate else MixedDataset(data.train[c] for c in group)
        total_iters = iterations(cfg.setting, cfg.epochs, cfg.iters, len(train_set), cfg.batch_size, data.drop_last)
        base_config = {**vars(cfg), "classes": group, "training_data": data_fingerprint(data.train[c] for c in group)}
        batches = cache(partial(training_batches, method.trains_on, ctx.reader.encoder, train_set, cfg, ctx.device,
                                group_name))  # made when a model of the group trains, not when one is reused
        test_inputs = {}  # the norm study: the frozen test features, made once per group
        for norm in cfg.target_norm:
            name = data.models[group_name, norm]
            if run.finished(name):
                continue  # finished before the run was interrupted
            training_config = {**base_config, "target_norm": norm}
            model = train_base(ctx, name=name, norm=norm, training_config=training_config, batches=batches,
                               total_iters=total_iters, drop_last=data.drop_last)
            if len(cfg.target_norm) > 1:
                test_inputs = test_inputs or {c: list(ctx.reader.inputs(data.test[c], f"{c} test")) for c in group}
            maps = frozen_maps(ctx, model=model, data=data, group=group, test_inputs=test_inputs, probe=probe,
                               norm=norm)
            rows = []
            for kind in cfg.align:
                alignment = train_alignment(ctx, kind=kind, name=f"{name}_{kind}", head_table=maps.head_table,
                                            training_config=training_config, n_classes=len(group))
                kind_rows, statistics = evaluate_alignment(ctx, kind=kind, alignment=alignment, maps=maps, name=name,
                                                           norm=norm, group=group, separate=data.separate)
                rows, alignment_rows = rows + kind_rows, alignment_rows + statistics
            if alignment_rows and ctx.rank == 0:
                write_table(pd.DataFrame(alignment_rows), run.path / "alignment_stats.csv", float_format="%.6g")
            if maps.record is not None and ctx.rank == 0:
                report.save_record(run.path, name, maps.record)
            run.add_rows(rows, class_data)
    csv_path = run.finish(norms=cfg.target_norm)  # the table, and with --plots the figures and report.md
    if cfg.plots and ctx.rank == 0:
        report.write_report(run.path, csv_path, f"train_mvtec.py: {data.name}, {cfg.method}, {cfg.setting}",
                            norm_study_path=csv_path if len(cfg.target_norm) > 1 else None)
    print(f"results: {csv_path}")


if __name__ == "__main__":  # imported (predict.py, benchmarks, tests): the constants, PRESETS and OPTIONS only
    main()
