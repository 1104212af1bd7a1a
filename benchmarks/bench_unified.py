"""Training-step speed and peak memory of the unified base models (RevDist, ReContrast, UniAD, Dinomaly).

    python benchmarks/bench_unified.py                     # paper size and CPU size, every base
    python benchmarks/bench_unified.py --sizes paper --steps 3
    python benchmarks/bench_unified.py --bases revdist --sizes paper --backbones efficientnet_lite0,wide_resnet50_2
    python benchmarks/bench_unified.py --bases dinomaly,revdist --sizes paper --steps 1   # ViT-B/14, 392 px
    python benchmarks/bench_unified.py --device cuda

For each base and size, a fresh process builds the model as train_mvtec.py does (the registry, models.METHODS,
with the script's configuration for that method and size: its presets, read by benchmarks/script_config.py;
`--weights none`, random init, by default: the timing does not depend on the weights), runs `--warmup` untimed
steps (1) and then `--steps` timed training steps (forward, loss, backward, optimiser step) on a fixed random
batch, and reports seconds per step, images per second and peak memory: the process's peak RSS on a CPU,
torch.cuda.max_memory_allocated on CUDA. The frozen encoder's own forward time (after as many warm-up forwards)
is measured separately, so that the gain of the feature cache
(RevDist trains on cached layer 1-3 features and never runs the encoder while training) is visible:
`revdist` is the step with the cache, `revdist-nocache` the step that runs the encoder too; the
same for `uniad` (cached 272-channel tokens) and `uniad-nocache` (EfficientNet-B4 in every step).
RevDist's decoder is the multi-class GELU one; `revdist-relu` is RD4AD's ReLU decoder (cached), the
one the official RD4AD figure below was measured with. `revdist-recompute` and `recontrast-recompute`
keep only convolution outputs for the backward pass (train_mvtec.py --recompute). `dinomaly` runs its frozen
DINOv2 ViT (B/14 at 392 px, as its paper; S/14 at 112 px for the CPU size) inside every step, as the script does,
with its preset's StableAdamW and warm-up cosine schedule; its `encoder s` is that ViT's forward.
`--backbones` gives a row per train_mvtec.py --backbone (efficientnet_lite0 too) for every base but Dinomaly.
The training step is the scripts' own (utils.training.fit); on CUDA it runs with train_mvtec.py's speed
options `--amp --channels_last` (bf16 autocast, channels-last; the script's default is float32); on a
CPU, malloc keeps freed memory for reuse (utils/cpu.py; `--plain_malloc` measures without it).
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from utils.config import ConfigError  # noqa: E402

# each base's training configuration is train_mvtec.py's (benchmarks/script_config.py) for these options:
# "paper" gives none (its presets: wide_resnet50_2 at 256 px, EfficientNet-B4 at 224 px with batch 64 for UniAD,
# ViT-B/14 at 448 -> 392 px for Dinomaly), "cpu" a size a 2-core CPU trains in seconds per step (the registry's
# cpu_training; the methods without one are not bases here)
SIZES = ("paper", "cpu")
VARIANTS = {"": {}, "relu": {"decoder_activation": "relu"}, "recompute": {"recompute": True}, "nocache": {}}
RELU_DECODERS = ("revdist",)  # RD4AD's ReLU decoder as a row of its own: the one OFFICIAL["revdist"] was measured with


def method_bases(method):
    """A method's rows: itself, its ReLU decoder (RELU_DECODERS), the step that runs its frozen encoder too (a method
    that trains on cached features) and the one that keeps only convolution outputs (a method with --recompute)."""
    return [method.name] + [f"{method.name}-{variant}" for variant, applies in (
        ("relu", method.name in RELU_DECODERS), ("nocache", method.trains_on == "features"),
        ("recompute", "recompute" in method.own_options)) if applies]


def bases():
    """Every row's base, in registry order. The registry is imported here and in measure(), not at the top, so that a
    measuring process imports it after utils.cpu.keep_freed_memory, as the script does."""
    from models import METHODS
    return tuple(base for method in METHODS.values() if method.cpu_training for base in method_bases(method))


def size_options(size, method):
    """The options a size gives a method: none for "paper", its cpu_training for "cpu"."""
    return {} if size == "paper" else method.cpu_training
# the official code's training step on the latest and the first 2-core development CPU, plain malloc
# (wide_resnet50_2, 256 px, batch 16; benchmarks/README.md)
OFFICIAL = {"revdist": "RD4AD main.py: 46.5 s, 8.3 GiB (first CPU: 23.7 s, 8.2 GiB)",
            "recontrast": "ReContrast multi-class: 96.4 s, 14.4 GiB (first CPU: 53.6 s, 14.7 GiB)"}


def base_options(base, size, backbone="", weights="none", device_name="cpu"):
    """train_mvtec.py's command-line options of one benchmark row (its presets fill in the rest)."""
    from models import METHODS
    name, _, variant = base.partition("-")
    method = METHODS[name]
    options = {"method": name, "weights": weights, **VARIANTS[variant], **size_options(size, method)}
    if backbone and "backbone" not in method.unused:  # Dinomaly's encoder is its ViT (--vit)
        options["backbone"] = backbone
    if device_name.startswith("cuda"):  # the script's speed options on a GPU
        options.update(device=device_name, amp=True, channels_last=True)
    return [item for name, value in options.items() for item in (f"--{name}", value)]


def measure(base, size, steps, device_name, plain_malloc=False, backbone="", weights="none", warmup=1):
    if device_name == "cpu" and not plain_malloc:
        from utils.cpu import keep_freed_memory
        keep_freed_memory()
    import torch
    from models import METHODS
    from script_config import train_config
    from utils.training import fit

    cfg = train_config(base_options(base, size, backbone, weights, device_name))
    method = METHODS[cfg.method]
    if method.check is not None:
        method.check(cfg)  # e.g. a backbone the method cannot read: refused as the script refuses it
    side = cfg.crop_size or cfg.image_size
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if cuda and cfg.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    images = torch.randn(cfg.batch_size, 3, side, side, device=device).contiguous(memory_format=memory_format)
    # built as the script builds them: the registry's encoder (the frozen one, or the backbone ReContrast copies,
    # or Dinomaly's ViT) and model, with --weights (none: random init; the timing does not depend on them)
    encoder = method.build_encoder(cfg).to(device, memory_format=memory_format)
    model = method.build_model(cfg, encoder, cfg.target_norm[0], torch.Generator().manual_seed(cfg.seed))
    model = model.to(device, memory_format=memory_format).train()
    encode = method.frozen_part(model, encoder)  # the frozen encoder, whose forward alone is timed too

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def timed(function, repeats):
        for _ in range(warmup):
            function()
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        sync()
        return (time.perf_counter() - start) / repeats

    with torch.no_grad():
        encoder_s = timed(lambda: encode(images), steps)
    if method.trains_on == "features":  # the cached features (the script's default), or the encoder every step
        with torch.no_grad():
            features = encoder(images)
        batch = (lambda: encoder(images)) if base.endswith("-nocache") else (lambda: features)
    else:  # ReContrast trains its encoder copy; Dinomaly runs its frozen ViT inside every step
        batch = lambda: {"image": images}  # noqa: E731
    optimizer, scheduler = model.configure_optimizers(cfg, cfg.iters)  # the run's schedule (unified: --iters)

    def step():  # one iteration of the scripts' own loop
        fit(model, iter([batch()]), optimizer, scheduler, 1, grad_clip=method.grad_clip,
            autocast=device.type if cfg.amp and cuda else None, show=False)

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    step_s = timed(step, steps)
    peak = (torch.cuda.max_memory_allocated(device) if cuda else
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # kilobytes on Linux
    return {"base": base, "size": size, "backbone": method.encoder_name(cfg),
            "weights": cfg.weights, "image_size": side, "batch_size": cfg.batch_size, "step_s": step_s,
            "images_per_s": cfg.batch_size / step_s, "encoder_s": encoder_s, "peak_gib": peak / 2 ** 30,
            "device": str(device), "threads": torch.get_num_threads()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", default="")
    parser.add_argument("--sizes", default="paper,cpu")
    parser.add_argument("--backbones", default="",
                        help="comma list: a row per --backbone for every base but dinomaly (whose encoder is its "
                             "ViT), e.g. wide_resnet50_2,resnet18,efficientnet_lite0; empty: each size's own")
    parser.add_argument("--weights", default="none", help="train_mvtec.py's --weights (none: random init)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (and encoder forwards) per row")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps (and encoder forwards) before them")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--plain_malloc", action="store_true", help="on a CPU, let malloc return freed memory")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # base:size:backbone, run in this process
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    if args.one:
        base, size, backbone = args.one.split(":")
        try:
            print(json.dumps(measure(base, size, args.steps, args.device, args.plain_malloc, backbone, args.weights,
                                     args.warmup)))
        except ConfigError as error:
            sys.exit(f"error: {error}")
        return
    args.bases = args.bases or ",".join(bases())  # every base (the registry is read after --one: see bases())
    unknown = [base for base in args.bases.split(",") if base not in bases()]
    unknown += [size for size in args.sizes.split(",") if size not in SIZES]
    if unknown:
        parser.error(f"unknown base or size {', '.join(unknown)}: bases {', '.join(bases())}; sizes {', '.join(SIZES)}")
    from models import METHODS
    print(f"{'base':<20} {'size':<6} {'backbone':<18} {'px':>4} {'batch':>5} {'s/step':>8} {'img/s':>7} "
          f"{'encoder s':>9} {'peak GiB':>8}  official")
    for size in args.sizes.split(","):
        for base in args.bases.split(","):
            backbones = [""] if "backbone" in METHODS[base.partition("-")[0]].unused else args.backbones.split(",")
            for backbone in backbones:
                done = subprocess.run([sys.executable, __file__, "--one", f"{base}:{size}:{backbone}",
                                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--device",
                                       args.device, "--weights", args.weights] + ["--plain_malloc"] * args.plain_malloc,
                                      capture_output=True, text=True, cwd=ROOT)
                if done.returncode:
                    print(f"{base} {size} {backbone}: failed\n{done.stderr[-2000:]}", flush=True)
                    continue
                r = json.loads(done.stdout.strip().splitlines()[-1])
                official = (OFFICIAL.get(base, "") if size == "paper" and args.device == "cpu"
                            and r["backbone"] == "wide_resnet50_2" else "")
                print(f"{r['base']:<20} {r['size']:<6} {r['backbone']:<18} {r['image_size']:>4} {r['batch_size']:>5} "
                      f"{r['step_s']:>8.2f} {r['images_per_s']:>7.2f} {r['encoder_s']:>9.2f} {r['peak_gib']:>8.2f}  "
                      f"{official}", flush=True)


if __name__ == "__main__":
    main()
