"""The real-photo mixture of benchmarks/README.md: the three demo classes (brick, grass, gravel; datasets.demo, from
scikit-image's texture photos) beside Magnetic Tile, in one MVTec-layout folder, made by one command.

    python benchmarks/make_mixture.py /data/magnetic_tile/magnetic_tile /tmp/mixture                   # unbalanced
    python benchmarks/make_mixture.py /data/magnetic_tile/magnetic_tile /tmp/mixture_s0 --balanced --seed 0

Unbalanced (the default): Magnetic Tile whole, linked, not copied (762 training images; 392 of the mixture's 428
anomalous test images). Balanced: Magnetic Tile cut to a demo class's size, copied: as many training images
(train/good) and normal test images (test/good) as a demo class has, and as many anomalous test images, shared
among the defect kinds in proportion to their sizes (largest remainders, ties to the kind first by name), each
with its mask. Which images: a random draw without replacement from each folder's sorted files, seeded by
[--seed, crc32(folder)], so the same seed gives the same files. The folder is filled beside `out` and renamed to
it when complete, with mixture.json (what was asked, the counts and the files) written last; run again with the
same arguments it does nothing, with others it refuses an existing `out`.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets.demo import make_demo  # noqa: E402
from datasets.mvtec import MVTecDataset  # noqa: E402

CLASS_NAME = "magnetic_tile"
MANIFEST = "mixture.json"
VERSION = 1  # bump when the selection changes, so an old folder is not taken for a new one


def proportional_counts(sizes, total):
    """{kind: count} summing to `total`, each kind's share of `total` in proportion to sizes[kind] (Hamilton's
    largest remainders; equal remainders go to the kind first by name). Refuses a total above sum(sizes)."""
    available = sum(sizes.values())
    if not 0 <= total <= available:
        raise ValueError(f"cannot draw {total} images from {available}")
    quotas = {kind: total * size / available for kind, size in sizes.items()}
    counts = {kind: int(quota) for kind, quota in quotas.items()}
    by_remainder = sorted(sizes, key=lambda kind: (-(quotas[kind] - counts[kind]), kind))
    for kind in by_remainder[:total - sum(counts.values())]:
        counts[kind] += 1
    return counts


def drawn(files, count, seed, folder):
    """`count` of the sorted `files`, drawn without replacement by a generator seeded by [seed, crc32(folder)]."""
    rng = np.random.default_rng([seed, zlib.crc32(folder.encode())])
    return [files[i] for i in sorted(rng.choice(len(files), size=count, replace=False))]


def class_samples(source):
    """{folder ("train/good", "test/<kind>"): sorted [(image path, mask path or None)]} of one MVTec-layout class
    folder, read (and checked: layout, masks) by the project's MVTec loader."""
    folders = {}
    for split in ("train", "test"):
        for image, _, mask in MVTecDataset(source.parent, source.name, split).samples:
            folders.setdefault(f"{split}/{image.parent.name}", []).append((image, mask))
    return {folder: sorted(samples) for folder, samples in folders.items()}


def balanced_selection(samples, n_train, n_test_good, n_test_anomalous, seed):
    """{folder: the drawn [(image, mask)]}: n_train of train/good, n_test_good of test/good and n_test_anomalous
    of the other test folders, shared in proportion to their sizes (proportional_counts)."""
    anomalous = {folder: len(files) for folder, files in samples.items() if folder.startswith("test/")
                 and folder != "test/good"}
    wanted = {"train/good": n_train, "test/good": n_test_good, **proportional_counts(anomalous, n_test_anomalous)}
    for folder, count in wanted.items():
        if count > len(samples.get(folder, [])):
            raise ValueError(f"{folder} holds {len(samples.get(folder, []))} images, fewer than the {count} wanted")
    return {folder: drawn(samples[folder], count, seed, folder) for folder, count in wanted.items()}


def copy_selection(selection, source, target):
    """Copy each drawn image to target/<folder>/ and its mask to the same place under target as under source."""
    for folder, files in selection.items():
        for image, mask in files:
            (target / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy2(image, target / folder / image.name)
            if mask is not None:
                (target / mask.parent.relative_to(source)).mkdir(parents=True, exist_ok=True)
                shutil.copy2(mask, target / mask.relative_to(source))


def make_mixture(source, out, balanced=False, seed=0):
    """Write the mixture to `out` (see the module docstring) and return its manifest."""
    source, out = Path(source).resolve(), Path(out)
    request = {"version": VERSION, "source": str(source), "balanced": balanced, "seed": seed if balanced else None}
    if out.exists():
        try:
            manifest = json.loads((out / MANIFEST).read_text())
        except (OSError, ValueError):
            manifest = {}
        if manifest.get("request") == request:
            return manifest
        raise ValueError(f"{out} exists and is not this mixture (no {MANIFEST} with these arguments); "
                         "remove it or choose another folder")
    samples = class_samples(source)  # checks the source before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    partial.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the mixture follows the umask like its files
    try:
        demo = json.loads((make_demo(partial) / "demo.json").read_text())
        if balanced:
            selection = balanced_selection(samples, demo["n_train"], demo["n_test_good"], demo["n_test_defect"], seed)
            copy_selection(selection, source, partial / CLASS_NAME)
        else:
            selection = samples
            os.symlink(source, partial / CLASS_NAME, target_is_directory=True)
        manifest = {"request": request, "demo": demo,
                    "counts": {CLASS_NAME: {folder: len(files) for folder, files in selection.items()}},
                    "files": {CLASS_NAME: sorted(str(image.relative_to(source)) for files in selection.values()
                                                 for image, _ in files)}}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        (partial.parent / f".{partial.name}.lock").unlink(missing_ok=True)  # make_demo's lock beside its folder
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("magnetic_tile", help="the Magnetic Tile class folder (train/good, test/<kind>, ground_truth)")
    parser.add_argument("out", help="the mixture folder to write")
    parser.add_argument("--balanced", action="store_true", help="Magnetic Tile cut to a demo class's size")
    parser.add_argument("--seed", type=int, default=0, help="which images the balanced cut draws")
    args = parser.parse_args(argv)
    if not args.balanced and args.seed != 0:
        sys.exit("error: --seed draws the balanced cut only: add --balanced")
    try:
        manifest = make_mixture(args.magnetic_tile, args.out, args.balanced, args.seed)
    except (OSError, ValueError) as error:
        sys.exit(f"error: {error}")
    counts = manifest["counts"][CLASS_NAME]
    demo = manifest["demo"]
    print(f"{args.out}: {', '.join(demo['classes'])} ({demo['n_train']} training, {demo['n_test_good']} normal and "
          f"{demo['n_test_defect']} anomalous test images each) and {CLASS_NAME} ("
          + ", ".join(f"{folder} {count}" for folder, count in counts.items()) + ")")


if __name__ == "__main__":
    main()
