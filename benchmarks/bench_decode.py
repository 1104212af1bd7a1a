"""Decoding speed and pixel identity: PIL (`Image.open(path).convert("RGB")`) against OpenCV
(`cv2.imread` + BGR->RGB) on generated files of the kinds the datasets hold.

    python benchmarks/bench_decode.py                      # generated 1024x1024 files
    python benchmarks/bench_decode.py --repeats 30 --threads 1
    python benchmarks/bench_decode.py --data_path /data/magnetic_tile   # also real files (first 200)

For every kind it prints the median time per image of each decoder and whether the two give the
same RGB pixels (max absolute difference). OpenCV runs with IMREAD_IGNORE_ORIENTATION: without it,
IMREAD_COLOR applies a JPEG's EXIF rotation, which PIL does not. Then it times the two resizes of
datasets.common.ImageTransform on a decoded image ("pil": antialiased, "cv2": INTER_LINEAR).
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=-1, help="cv2.setNumThreads (-1: OpenCV's default)")
    parser.add_argument("--data_path", default="", help="also decode real .png/.jpg/.bmp files under this folder")
    parser.add_argument("--max_files", type=int, default=200)
    args = parser.parse_args()
    if args.threads >= 0:
        cv2.setNumThreads(args.threads)
    print(f"Pillow {Image.__version__}, OpenCV {cv2.__version__}, numpy {np.__version__}, "
          f"cv2 threads {cv2.getNumThreads()}, python {sys.version.split()[0]}")
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
