"""predict.py's images per second on the CPU against train_mvtec.py's evaluation pass, each method at its paper
input size.

    python benchmarks/bench_predict_sizes.py                     # every method at its paper input size
    python benchmarks/bench_predict_sizes.py --methods revdist,dinomaly --repeats 3
    python benchmarks/bench_predict_sizes.py --quick             # small encoders at 56-128 px: a check that it runs

For each method, a run is trained (random weights) on a few classes of the demo set for a couple of iterations:

    train_mvtec.py --dataset demo --method <method> --setting unified --weights none --iters 2 --batch_size 8
                   --align none,cada --cada_iters 5 <input options>

The input options (encoder, image and crop size, resize, Dinomaly's eval_size) are the ones train_mvtec.py's
presets give the method outside the demo set (benchmarks/script_config.py reads them), given on the command line
because the demo's own presets would switch them: NoCo wide_resnet50_2 at 256 -> 224 px, RevDist and ReContrast
wide_resnet50_2 at 256 px, UniAD EfficientNet-B4 at 224 px, Dinomaly ViT-B/14 at 448 -> 392 px with its maps scored
at 256 px. bench_predict.py then times both passes on the run's test images (CADA-calibrated) in a fresh process,
and one markdown row per method is printed. The runs go to a temporary folder, removed at the end, unless
--out_dir names one (then they are kept, with each command's log beside them).
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from script_config import ROOT, train_config  # noqa: E402
from models import METHODS, not_in_fingerprint  # noqa: E402

INPUT_OPTIONS = ("backbone", "vit", "image_size", "crop_size", "resize", "eval_size")  # those the demo presets switch


def input_options(method, quick=False):
    """The options that set a method's input (encoder, sizes, resize): its paper configuration's, or --quick's."""
    paper = vars(train_config(["--method", method, "--setting", "unified"]))
    ignored = not_in_fingerprint(METHODS[method])  # the options it does not read: refused when given
    options = {name: paper[name] for name in INPUT_OPTIONS if name not in ignored}
    return {**options, **METHODS[method].cpu_quick} if quick else options


def command_options(options):
    return [item for name, value in options.items() for item in (f"--{name}", str(value))]


def run_logged(command, log):
    """Run a command from the repository root, its output to `log`; the output, or None if it failed."""
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    log.write_text(done.stdout + done.stderr)
    if done.returncode:
        print(f"failed ({log}):\n{(done.stdout + done.stderr)[-1500:]}", file=sys.stderr, flush=True)
        return None
    return done.stdout


def measure(method, args, out_dir):
    """Train the method's small run, then bench_predict.py on it: its JSON result, or None if a step failed."""
    started = time.perf_counter()
    runs = out_dir / method
    train = [sys.executable, "train_mvtec.py", "--dataset", "demo", "--method", method, "--setting", "unified",
             "--weights", "none", "--classes", args.classes, "--iters", str(args.iters), "--batch_size",
             str(args.train_batch_size), "--align", "none,cada", "--cada_iters", str(args.cada_iters), "--num_workers",
             "0", "--device", "cpu", "--checkpoint_every", "0", "--out_dir", str(runs),
             *command_options(input_options(method, args.quick))]
    print(f"{method}: {' '.join(train[1:])}", file=sys.stderr, flush=True)
    output = run_logged(train, out_dir / f"{method}_train.log")
    if output is None:
        return None
    run = Path(output.strip().splitlines()[-1].removeprefix("results: ")).parent  # the script's last line
    trained = time.perf_counter()
    output = run_logged([sys.executable, "benchmarks/bench_predict.py", "--run", str(run), "--batch_size",
                         str(args.batch_size), "--repeats", str(args.repeats), "--json"],
                        out_dir / f"{method}_bench.log")
    if output is None:
        return None
    print(f"{method}: trained in {trained - started:.0f} s, timed in {time.perf_counter() - trained:.0f} s",
          file=sys.stderr, flush=True)
    return json.loads(output.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--quick", action="store_true", help="resnet18 at 64 px, Lite0 at 128, ViT-S at 56")
    parser.add_argument("--classes", default="brick,grass", help="demo classes (20 test images each)")
    parser.add_argument("--iters", type=int, default=2, help="training iterations of each run")
    parser.add_argument("--train_batch_size", type=int, default=8)
    parser.add_argument("--cada_iters", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=16, help="bench_predict.py's batch, both passes")
    parser.add_argument("--repeats", type=int, default=2, help="bench_predict.py: the best of this many passes")
    parser.add_argument("--out_dir", default="", help="keep the runs and logs here (default: a temporary folder)")
    args = parser.parse_args()
    methods = args.methods.split(",")
    if unknown := [m for m in methods if m not in METHODS]:
        parser.error(f"unknown method {', '.join(unknown)}: expected among {', '.join(METHODS)}")
    out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="bench_predict_sizes_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for method in methods:
            result = measure(method, args, out_dir)
            if not args.out_dir:  # a paper-sized run's checkpoints take hundreds of MB: gone once it is timed
                shutil.rmtree(out_dir / method, ignore_errors=True)
            rows.append(f"| {method} | failed (see {out_dir}) | | | | |" if result is None else
                        f"| {method} | {result['encoder']} | {result['input_px']}"
                        + (f" (maps at {result['eval_size']})" if result["eval_size"] else "")
                        + f" | {result['predict_images_per_s']:.2f} | {result['evaluation_images_per_s']:.2f} | "
                        f"{result['largest_score_difference']:.2g} ({result['relative_score_difference']:.1g}) |")
    finally:
        if not args.out_dir:
            shutil.rmtree(out_dir, ignore_errors=True)
    print(f"CPU, {args.classes} demo test images, batch {args.batch_size}, best of {args.repeats} passes, "
          f"random weights, CADA")
    print("| method | encoder | input px | predict images/s | evaluation images/s | largest score difference "
          "(relative) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    if any("failed" in row for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
