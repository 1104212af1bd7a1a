"""Training-step speed and peak memory of the unified base models (RevDist, ReContrast, UniAD, Dinomaly).

    python benchmarks/bench_unified.py                     # paper size and CPU size, every base
    python benchmarks/bench_unified.py --sizes paper --steps 3
    python benchmarks/bench_unified.py --device cuda

For each base and size, a fresh process builds the model (random init: the timing does not depend
on the weights), runs one warm-up step and then `--steps` timed training steps (forward, loss,
backward, optimiser step) on a fixed random batch, and reports seconds per step, images per second
and peak memory: the process's peak RSS on a CPU, torch.cuda.max_memory_allocated on CUDA. The
frozen encoder's own forward time is measured separately, so that the gain of the feature cache
(RevDist trains on cached layer 1-3 features and never runs the encoder while training) is visible:
`revdist` is the step with the cache, `revdist-nocache` the step that runs the encoder too; the
same for `uniad` (cached 272-channel tokens) and `uniad-nocache` (EfficientNet-B4 in every step).
RevDist's decoder is the multi-class GELU one; `revdist-relu` is RD4AD's ReLU decoder (cached), the
one the official RD4AD figure below was measured with. `revdist-recompute` and `recontrast-recompute`
keep only convolution outputs for the backward pass (train_mvtec.py --recompute). `dinomaly` runs its frozen
DINOv2 ViT (B/14 at 392 px, as its paper; S/14 at 112 px for the CPU size) inside every step, as the script does,
with its preset's StableAdamW and warm-up cosine schedule; its `encoder s` is that ViT's forward.
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
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZES = {"paper": ("wide_resnet50_2", 256, 16), "cpu": ("resnet18", 128, 16)}
UNIAD_SIZES = {"paper": ("efficientnet_b4", 224, 64), "cpu": ("efficientnet_b4", 128, 16)}  # UniAD's own encoder
DINOMALY_SIZES = {"paper": ("vit_base_dinov2", 392, 16), "cpu": ("vit_small_dinov2", 112, 16)}  # Dinomaly's ViT
BASES = ("revdist", "revdist-relu", "revdist-nocache", "revdist-recompute", "recontrast", "recontrast-recompute",
         "uniad", "uniad-nocache", "dinomaly")
# the official code's training step on the latest and the first 2-core development CPU, plain malloc
# (wide_resnet50_2, 256 px, batch 16; benchmarks/README.md)
OFFICIAL = {"revdist": "RD4AD main.py: 46.5 s, 8.3 GiB (first CPU: 23.7 s, 8.2 GiB)",
            "recontrast": "ReContrast multi-class: 96.4 s, 14.4 GiB (first CPU: 53.6 s, 14.7 GiB)"}


def measure(base, size, steps, device_name, plain_malloc=False):
    if device_name == "cpu" and not plain_malloc:
        from utils.cpu import keep_freed_memory
        keep_freed_memory()
    import torch
    from models.backbones import build_encoder, load_backbone
    from models.recontrast import ReContrast
    from models.revdist import RevDist
    from models.uniad import UNIAD_LAYERS, TokenEncoder, UniAD
    from models import METHODS
    from utils.training import fit

    sizes = UNIAD_SIZES if base.startswith("uniad") else DINOMALY_SIZES if base == "dinomaly" else SIZES
    backbone, image_size, batch_size = sizes[size]
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    torch.manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size, device=device).contiguous(memory_format=memory_format)
    cfg = SimpleNamespace(optimizer="adamw", lr=2e-3, encoder_lr=1e-5, betas=(0.9, 0.999), weight_decay=1e-5,
                          adam_eps=1e-10, amsgrad=True, lr_drop_at=0.8, lr_drop_gamma=0.2)
    if base == "dinomaly":  # its preset: StableAdamW, warm-up cosine; the model holds the frozen ViT
        from models.dinomaly import Dinomaly
        cfg = SimpleNamespace(optimizer="stable_adamw", lr=2e-3, betas=(0.9, 0.999), weight_decay=1e-4,
                              adam_eps=1e-10, amsgrad=True, lr_drop_at=0.0, lr_schedule="warmup_cosine",
                              warmup_iters=100, final_lr=2e-4)
        dino = Dinomaly(encoder=backbone.split("_")[1], weights="none")
        encoder = lambda images: dino.encoder(images)  # noqa: E731
    elif base.startswith("uniad"):
        encoder = TokenEncoder(build_encoder(backbone, "none", UNIAD_LAYERS)).to(device, memory_format=memory_format)
        cfg.lr, cfg.weight_decay, cfg.adam_eps, cfg.amsgrad, cfg.lr_drop_at = 3e-4, 1e-4, 1e-8, False, 0.0  # its preset
    else:
        encoder = build_encoder(backbone, "none", ("layer1", "layer2", "layer3")).to(device, memory_format=memory_format)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def timed(function, repeats):
        function()  # warm-up
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        sync()
        return (time.perf_counter() - start) / repeats

    encoder_s = timed(lambda: encoder(images), steps)
    if base.startswith(("revdist", "uniad")):
        model = (RevDist(backbone, activation="relu" if base == "revdist-relu" else "gelu",
                         recompute=base == "revdist-recompute") if base.startswith("revdist") else
                 UniAD(grid=(image_size // 16, image_size // 16), layers=("tokens",)))
        features = encoder(images)
        batch = (lambda: encoder(images)) if base.endswith("-nocache") else (lambda: features)
    elif base == "dinomaly":
        model = dino
        batch = lambda: {"image": images}  # noqa: E731
    else:
        model = ReContrast(load_backbone(backbone, "none"), backbone, activation="gelu",
                           recompute=base == "recontrast-recompute")
        batch = lambda: {"image": images}  # noqa: E731
    model = model.to(device, memory_format=memory_format).train()
    optimizer, scheduler = model.configure_optimizers(cfg, 1000)

    grad_clip = METHODS[base.split("-")[0]].grad_clip

    def step():  # one iteration of the scripts' own loop
        fit(model, iter([batch()]), optimizer, scheduler, 1, grad_clip=grad_clip, autocast="cuda" if cuda else None,
            show=False)

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    step_s = timed(step, steps)
    peak = torch.cuda.max_memory_allocated(device) if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"base": base, "size": size, "backbone": backbone, "image_size": image_size, "batch_size": batch_size,
            "step_s": step_s, "images_per_s": batch_size / step_s, "encoder_s": encoder_s, "peak_gib": peak / 2 ** 30,
            "device": str(device), "threads": torch.get_num_threads()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", default=",".join(BASES))
    parser.add_argument("--sizes", default="paper,cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--plain_malloc", action="store_true", help="on a CPU, let malloc return freed memory")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # base:size, run in this process
    args = parser.parse_args()
    if args.one:
        base, size = args.one.split(":")
        print(json.dumps(measure(base, size, args.steps, args.device, args.plain_malloc)))
        return
    print(f"{'base':<16} {'size':<6} {'backbone':<16} {'px':>4} {'batch':>5} {'s/step':>8} {'img/s':>7} "
          f"{'encoder s':>9} {'peak GiB':>8}  official")
    for size in args.sizes.split(","):
        for base in args.bases.split(","):
            done = subprocess.run([sys.executable, __file__, "--one", f"{base}:{size}", "--steps", str(args.steps),
                                   "--device", args.device] + ["--plain_malloc"] * args.plain_malloc,
                                  capture_output=True, text=True, cwd=ROOT)
            if done.returncode:
                print(f"{base} {size}: failed\n{done.stderr[-2000:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            official = OFFICIAL.get(base, "") if size == "paper" and args.device == "cpu" else ""
            print(f"{r['base']:<16} {r['size']:<6} {r['backbone']:<16} {r['image_size']:>4} {r['batch_size']:>5} "
                  f"{r['step_s']:>8.2f} {r['images_per_s']:>7.2f} {r['encoder_s']:>9.2f} {r['peak_gib']:>8.2f}  {official}")


if __name__ == "__main__":
    main()
