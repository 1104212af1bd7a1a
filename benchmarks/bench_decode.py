"""Decoding speed and pixel identity: PIL (`Image.open(path).convert("RGB")`) against OpenCV
(`cv2.imread` + BGR->RGB) on generated files of the kinds the datasets hold.

    python benchmarks/bench_decode.py                      # generated 1024x1024 files
    python benchmarks/bench_decode.py --repeats 30 --threads 1
    python benchmarks/bench_decode.py --data_path /data/magnetic_tile   # also real files (first 200)
    python benchmarks/bench_decode.py --only_check --check_path data/demo --check_path /data/magnetic_tile

For every kind it prints the median time per image of each decoder and whether the two give the
same RGB pixels (max absolute difference). OpenCV runs with IMREAD_IGNORE_ORIENTATION: without it,
IMREAD_COLOR applies a JPEG's EXIF rotation, which PIL does not. Then it times the two resizes of
datasets.common.ImageTransform on a decoded image ("pil": antialiased, "cv2": INTER_LINEAR).

The start-up pass (datasets.common.decode_every_file, which resolve_classes runs before the first class
trains): its wall time on 1 and 2 threads over generated `--size` px RGB PNGs with a mask each (the per-image
cost, extrapolated to MVTec AD's 5354 images and 1258 masks), and over each `--check_path` (an MVTec-layout
folder: every class's train and test images and masks), beside the header-only pass it replaced.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CV2_COLOR = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def decode_pil(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def decode_cv2(path):
    image = cv2.imread(str(path), CV2_COLOR)
    if image is None:
        raise ValueError(f"cv2 cannot read {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def natural_image(size, seed):
    """Smooth structure plus fine noise: compresses like a photo, unlike pure noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (size // 64, size // 64, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    noisy = smooth + rng.normal(0, 6, (size, size, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def make_files(folder, size):
    """{kind: path} of generated test files."""
    rgb = natural_image(size, 0)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    files = {}

    def save(kind, image, name, **options):
        files[kind] = folder / name
        image.save(files[kind], **options)

    save("png rgb8", Image.fromarray(rgb), "rgb.png")
    save("png gray8", Image.fromarray(gray), "gray.png")
    save("png gray16", Image.fromarray(gray.astype(np.uint16) * 257), "gray16.png")  # full 16-bit range
    save("png gray16 low", Image.fromarray(gray.astype(np.uint16)), "gray16low.png")  # values < 256
    save("png palette", Image.fromarray(rgb).quantize(64), "palette.png")
    save("png rgba", Image.fromarray(np.dstack([rgb, gray])), "rgba.png")
    save("jpeg rgb q95", Image.fromarray(rgb), "rgb.jpg", quality=95)
    save("jpeg gray q95", Image.fromarray(gray), "gray.jpg", quality=95)
    save("bmp rgb", Image.fromarray(rgb), "rgb.bmp")
    return files


def median_seconds(decode, paths, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            decode(path)
        times.append((time.perf_counter() - start) / len(paths))
    return statistics.median(times)


def compare(kind, paths, repeats):
    decode_pil(paths[0]), decode_cv2(paths[0])  # warm-up (library loading, page cache)
    pil_s, cv2_s = median_seconds(decode_pil, paths, repeats), median_seconds(decode_cv2, paths, repeats)
    max_diff, shapes_match = 0, True
    for path in paths:
        a, b = decode_pil(path), decode_cv2(path)
        if a.shape != b.shape:
            shapes_match = False
            continue
        max_diff = max(max_diff, int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max()))
    same = "identical" if shapes_match and max_diff == 0 else (
        f"DIFFER (max |diff| = {max_diff})" if shapes_match else "DIFFER (shape)")
    print(f"| {kind} | {pil_s * 1e3:.2f} ms | {cv2_s * 1e3:.2f} ms | {pil_s / cv2_s:.2f}x | {same} |", flush=True)


def compare_resizes(size, repeats, out_size=256):
    from datasets.common import ImageTransform  # noqa: E402 (run from the repository root)

    array = natural_image(size, 1)
    image = Image.fromarray(array)
    for resize, source in (("pil", image), ("cv2", array)):
        transform = ImageTransform(out_size, resize=resize)
        seconds = median_seconds(lambda _: transform.pixels(source), [None] * 5, repeats)
        print(f"| resize {size}px RGB -> {out_size} ({resize}) | {seconds * 1e3:.2f} ms |", flush=True)


MVTEC_IMAGES, MVTEC_MASKS = 5354, 1258  # MVTec AD: 3629 training + 1725 test images, 1258 defect masks


def structured_samples(root):
    """Every (image, label, mask) triple of every class and split of an MVTec-layout folder."""
    from datasets.mvtec import MVTecDataset, list_classes

    return [sample for name in list_classes(root) for split in ("train", "test")
            for sample in MVTecDataset(root, name, split).samples]


def wall_seconds(action, repeats, cpu=False):
    """The median wall time of `action` (with cpu=True: the median CPU time of this process, which other
    processes on a busy machine do not inflate)."""
    clock = time.process_time if cpu else time.perf_counter
    times = []
    for _ in range(repeats):
        start = clock()
        action()
        times.append(clock() - start)
    return statistics.median(times)


def time_check_pass(name, samples, repeats, thread_counts=(1, 2)):
    """Seconds of the header pass and of the decoding pass on each thread count; returns {threads: seconds}."""
    from datasets.common import check_image_header, decode_every_file

    def headers():
        for image, _, mask in samples:
            check_image_header(image)
            if mask is not None:
                check_image_header(mask, "mask")

    def decode(threads):  # Magnetic Tile has 4 empty masks, which the run refuses; here they are timed too
        decode_every_file(samples, threads)

    cold = wall_seconds(lambda: decode(max(thread_counts)), 1)  # first read: the page cache fills
    masks = sum(mask is not None for _, _, mask in samples)
    pixels = 0
    for image, _, _ in samples:
        with Image.open(image) as opened:
            pixels += opened.width * opened.height
    print(f"| {name}: {len(samples)} images ({pixels / len(samples) / 1e6:.2f} Mpx each on average), {masks} masks "
          f"| headers only | {wall_seconds(headers, repeats):.2f} s | first pass, {max(thread_counts)} threads: "
          f"{cold:.2f} s |", flush=True)
    seconds = {"cpu": wall_seconds(lambda: decode(1), repeats, cpu=True)}
    print(f"| {name} | decoded, CPU time | {seconds['cpu']:.2f} s | {seconds['cpu'] / len(samples) * 1e3:.1f} ms "
          "per image |", flush=True)
    for threads in thread_counts:
        seconds[threads] = wall_seconds(lambda: decode(threads), repeats)
        print(f"| {name} | decoded, {threads} thread{'s' * (threads > 1)} | {seconds[threads]:.2f} s "
              f"| {seconds[threads] / len(samples) * 1e3:.1f} ms per image |", flush=True)
    return seconds


def generated_check_pass(size, count, repeats):
    """The decoding pass over `count` generated size x size RGB PNGs, each with a mask; extrapolated to MVTec AD."""
    with tempfile.TemporaryDirectory() as folder:
        samples = []
        for i in range(count):
            image, mask = Path(folder) / f"{i}.png", Path(folder) / f"{i}_mask.png"
            Image.fromarray(natural_image(size, 100 + i)).save(image)
            defect = np.zeros((size, size), np.uint8)
            defect[size // 3: size // 2, size // 4: size // 2] = 255
            Image.fromarray(defect).save(mask)
            samples.append((image, 1, mask))
        seconds = time_check_pass(f"generated {size}px RGB PNG + mask", samples, repeats)
    for how, total in seconds.items():
        how = "CPU time" if how == "cpu" else f"{how} thread{'s' * (how > 1)}"
        print(f"| MVTec AD extrapolated ({MVTEC_IMAGES} images as {size}px RGB, each with a mask) | {how} "
              f"| {total / count * MVTEC_IMAGES:.0f} s |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=-1, help="cv2.setNumThreads (-1: OpenCV's default)")
    parser.add_argument("--data_path", default="", help="also decode real .png/.jpg/.bmp files under this folder")
    parser.add_argument("--max_files", type=int, default=200)
    parser.add_argument("--check_path", action="append", default=[],
                        help="an MVTec-layout folder to time the start-up decoding pass on (repeatable)")
    parser.add_argument("--check_count", type=int, default=24, help="generated files for the start-up pass")
    parser.add_argument("--only_check", action="store_true", help="time only the start-up pass")
    args = parser.parse_args()
    if args.threads >= 0:
        cv2.setNumThreads(args.threads)
    print(f"Pillow {Image.__version__}, OpenCV {cv2.__version__}, numpy {np.__version__}, "
          f"cv2 threads {cv2.getNumThreads()}, python {sys.version.split()[0]}")
    if args.only_check or args.check_path:
        print("\n| start-up pass | how | wall time | |\n|---|---|---|---|")
        generated_check_pass(args.size, args.check_count, max(1, args.repeats // 5))
        for root in args.check_path:
            time_check_pass(root, structured_samples(root), max(1, args.repeats // 5))
        if args.only_check:
            return
    print("| file | PIL | cv2 | PIL / cv2 | pixels |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for kind, path in make_files(Path(folder), args.size).items():
            compare(f"{kind} {args.size}px ({path.stat().st_size / 2 ** 20:.2f} MiB)", [path], args.repeats)
    if args.data_path:
        real = sorted(p for p in Path(args.data_path).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".bmp"))
        by_suffix = {}
        for path in real:
            by_suffix.setdefault(path.suffix.lower(), []).append(path)
        for suffix, paths in sorted(by_suffix.items()):
            paths = paths[:: max(1, len(paths) // args.max_files)][: args.max_files]
            compare(f"{args.data_path} {suffix} ({len(paths)} files)", paths, max(1, args.repeats // 5))
    print("\n| step | time per image |\n|---|---|")
    compare_resizes(args.size, args.repeats)


if __name__ == "__main__":
    main()
