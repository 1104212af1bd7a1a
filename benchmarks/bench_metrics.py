"""Pixel-metric benchmark on an MVTec-sized synthetic test set: ours against scikit-learn.

    python benchmarks/bench_metrics.py [--n_maps 1725] [--device cpu|cuda]

Times P-AUROC + P-AP (utils.metrics.auroc_ap against sklearn's roc_auc_score and
average_precision_score on the flattened arrays), checks they agree within 1e-6, and times AUPRO.
Each measurement runs in a fresh child process that loads the test set from disk; its extra memory
is the peak resident set size during the call minus the resident set size just before it
(/proc/self/status VmHWM after resetting it, minus VmRSS), so torch and numpy allocations both count.
"""
import argparse
import concurrent.futures
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

TOLERANCE = 1e-6
MAP_SIZE = 256
NORMAL_MAP_FRACTION = 0.27
QUANTISED_MAP_FRACTION = 0.25  # these maps are rounded to 1/16 steps, so many scores tie


def synthetic_test_set(n_maps, seed):
    """(scores, masks, number of quantised maps); scores and masks are float32 (n_maps, 1, 256, 256).

    Anomalous maps hold 1-4 blobs (unions of overlapping ellipses); a score is its blob's strength plus
    standard normal noise."""
    rng = np.random.default_rng(seed)
    scores = np.empty((n_maps, 1, MAP_SIZE, MAP_SIZE), np.float32)
    quantised = 0
    masks = np.zeros_like(scores)
    rows, cols = np.ogrid[:MAP_SIZE, :MAP_SIZE]
    for i in range(n_maps):
        signal = np.zeros((MAP_SIZE, MAP_SIZE), np.float32)
        if rng.random() >= NORMAL_MAP_FRACTION:
            for _ in range(rng.integers(1, 5)):
                centre, strength = rng.uniform(0, MAP_SIZE, 2), rng.uniform(0.3, 2.5)
                for _ in range(rng.integers(1, 4)):  # a blob is a union of overlapping ellipses
                    cy, cx = centre + rng.normal(0, 8, 2)
                    ry, rx = rng.uniform(6, 28, 2)
                    blob = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 < 1
                    masks[i, 0][blob] = 1
                    signal[blob] = strength
        scores[i, 0] = signal + rng.standard_normal((MAP_SIZE, MAP_SIZE), dtype=np.float32)
        if rng.random() < QUANTISED_MAP_FRACTION:
            scores[i, 0] = np.round(scores[i, 0] * 16) / 16
            quantised += 1
    return scores, masks, quantised


def _memory_kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _measure(job, data_dir, device):
    """Run one job in this (fresh) process; return its values, seconds and peak extra bytes of the
    first call, and the seconds of a second call (ours only; sklearn's takes minutes)."""
    from sklearn.metrics import average_precision_score, roc_auc_score
    from utils import metrics

    scores, masks = np.load(Path(data_dir) / "scores.npy"), np.load(Path(data_dir) / "masks.npy")
    if job == "sklearn":
        labels, flat_scores = masks.ravel(), scores.ravel()
        run = lambda: (roc_auc_score(labels, flat_scores), average_precision_score(labels, flat_scores))
    else:
        scores, masks = torch.from_numpy(scores).to(device), torch.from_numpy(masks).to(device)
        run = {"ours": lambda: metrics.auroc_ap(scores, masks), "aupro": lambda: (metrics.aupro(scores, masks),)}[job]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    gpu_before = torch.cuda.memory_allocated() if device == "cuda" else 0
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set size
    rss_before = _memory_kb("VmRSS")
    load_before, cpu_before = os.getloadavg()[0], _cpu_seconds()
    start = time.perf_counter()
    values = run()
    seconds = time.perf_counter() - start
    cpu_seconds = _cpu_seconds() - cpu_before
    extra_bytes = (_memory_kb("VmHWM") - rss_before) * 1024
    gpu_extra = torch.cuda.max_memory_allocated() - gpu_before if device == "cuda" else None
    # A second call shows the cost of the first one's page faults on memory the process never touched.
    start = time.perf_counter()
    if job != "sklearn":
        run()
    seconds_again = time.perf_counter() - start if job != "sklearn" else None
    return {"values": [float(v) for v in values], "seconds": seconds, "seconds_again": seconds_again,
            "cpu_seconds": cpu_seconds, "load_before": load_before, "extra_bytes": extra_bytes,
            "gpu_extra_bytes": gpu_extra}


def measure_in_child(job, data_dir, device):
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_measure, job, data_dir, device).result()


def _describe(name, result):
    gpu = "" if result["gpu_extra_bytes"] is None else f", GPU peak extra {result['gpu_extra_bytes'] / 2**30:.2f} GiB"
    again = ("" if result["seconds_again"] is None
             else f" (called again in the same process: {result['seconds_again']:.2f} s)")
    return (f"{name}: {result['seconds']:.2f} s{again}, peak extra memory {result['extra_bytes'] / 2**30:.2f} GiB"
            f"{gpu} [CPU time {result['cpu_seconds']:.1f} s, load average before {result['load_before']:.2f} "
            f"on {os.cpu_count()} cores]")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_maps", type=int, default=1725)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")

    start = time.perf_counter()
    scores, masks, quantised = synthetic_test_set(args.n_maps, args.seed)
    from scipy import ndimage
    from utils.metrics import _REGION_STRUCTURE
    n_regions = ndimage.label(masks[:, 0] > 0, structure=_REGION_STRUCTURE)[1]
    print(f"synthetic test set: {args.n_maps} maps of {MAP_SIZE}x{MAP_SIZE} ({scores.size / 1e6:.1f} M pixels), "
          f"{np.mean(masks.max(axis=(1, 2, 3)) == 0):.1%} normal maps, {masks.mean():.2%} anomalous pixels, "
          f"{n_regions} regions, {quantised} maps quantised to 1/16 steps (ties) "
          f"(built in {time.perf_counter() - start:.1f} s)", flush=True)
    with tempfile.TemporaryDirectory() as data_dir:
        np.save(Path(data_dir) / "scores.npy", scores)
        np.save(Path(data_dir) / "masks.npy", masks)
        del scores, masks
        ours = measure_in_child("ours", data_dir, args.device)
        print(_describe(f"ours ({args.device}) P-AUROC + P-AP", ours), flush=True)
        reference = measure_in_child("sklearn", data_dir, "cpu")
        print(_describe("sklearn P-AUROC + P-AP", reference), flush=True)
        aupro = measure_in_child("aupro", data_dir, args.device)
        print(_describe(f"ours ({args.device}) AUPRO", aupro), flush=True)

    difference = max(abs(a - b) for a, b in zip(ours["values"], reference["values"]))
    agree = difference <= TOLERANCE
    print(f"P-AUROC ours {ours['values'][0]:.10f} sklearn {reference['values'][0]:.10f}; "
          f"P-AP ours {ours['values'][1]:.10f} sklearn {reference['values'][1]:.10f}; "
          f"max abs difference {difference:.2e} ({'agree' if agree else 'DISAGREE'} within {TOLERANCE:g})")
    print(f"AUPRO {aupro['values'][0]:.6f}")
    print(f"summary: n_maps={args.n_maps} device={args.device} | P-AUROC+P-AP ours {ours['seconds']:.2f} s / "
          f"{ours['extra_bytes'] / 2**30:.2f} GiB, sklearn {reference['seconds']:.2f} s / "
          f"{reference['extra_bytes'] / 2**30:.2f} GiB, {reference['seconds'] / ours['seconds']:.1f}x faster | "
          f"AUPRO {aupro['seconds']:.2f} s | max abs diff {difference:.1e} {'OK' if agree else 'FAIL'}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
