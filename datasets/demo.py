"""A small generated dataset in MVTec layout, made from the texture photos bundled with
scikit-image (brick, grass, gravel: 512x512 grayscale, available offline).

Each image is a tile cut at a random position, mildly rotated, flipped and contrast-jittered, and
resized to `image_size`. Test defects come in three types, one folder each:
    scratch  a thin bright or dark random polyline
    blob     an irregular ellipse-like region, blurred and shifted in intensity
    patch    a patch cut from another texture, matched to the local mean and contrast
A mask marks exactly the pixels that differ from the clean tile (0/255 PNG).
Everything is drawn from `numpy.random.default_rng([seed, crc32(class)])`, so the same
parameters give byte-identical files, and a class's images do not depend on the other classes.
"""
import fcntl
import json
import os
import shutil
import tempfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage import data as skimage_data

TEXTURES = ("brick", "grass", "gravel")
DEFECT_TYPES = ("scratch", "blob", "patch")
SOURCE_TILE = 256  # side, in source pixels, of the region that becomes one image
MARKER_NAME = "demo.json"  # written last: its presence means the set is complete
GENERATOR_VERSION = 1  # bump when the generator changes, so old folders are regenerated


@dataclass
class DemoImage:
    path: str  # relative to the dataset root, e.g. "brick/test/scratch/000.png"
    image: np.ndarray  # uint8 HxW
    mask: np.ndarray | None  # bool HxW for defective images, None for normal ones
    clean: np.ndarray  # the tile before the defect (equal to `image` for normal images)

    @property
    def mask_path(self):
        class_name, _, defect, name = self.path.split("/")
        return f"{class_name}/ground_truth/{defect}/{Path(name).stem}_mask.png"


@lru_cache(maxsize=None)
def load_texture(name):
    if name not in TEXTURES:
        raise ValueError(f"unknown demo texture {name!r}; available: {', '.join(TEXTURES)}")
    return getattr(skimage_data, name)()


def clean_tile(texture, rng, image_size):
    """A random tile of `texture`: random position, rotation within +-10 degrees, flip,
    contrast and brightness jitter, resized to image_size (uint8)."""
    margin = int(SOURCE_TILE * 0.12)  # room for the rotation's corners
    side = SOURCE_TILE + 2 * margin
    top, left = rng.integers(0, texture.shape[0] - side + 1), rng.integers(0, texture.shape[1] - side + 1)
    region = Image.fromarray(texture[top:top + side, left:left + side])
    region = region.rotate(rng.uniform(-10, 10), resample=Image.BILINEAR)
    region = region.crop((margin, margin, margin + SOURCE_TILE, margin + SOURCE_TILE))
    if rng.random() < 0.5:
        region = region.transpose(Image.FLIP_LEFT_RIGHT)
    tile = np.asarray(region.resize((image_size, image_size), Image.BILINEAR), dtype=np.float64)
    tile = (tile - tile.mean()) * rng.uniform(0.85, 1.15) + tile.mean() + rng.uniform(-10, 10)
    return np.clip(np.round(tile), 0, 255).astype(np.uint8)


def _apply(clean, region, new_values):
    """Put `new_values` into `region`; region pixels that would round back to their clean value
    are nudged by one grey level so that the mask is exactly the set of changed pixels."""
    new = np.clip(np.round(new_values), 0, 255).astype(np.int16)
    old = clean.astype(np.int16)
    unchanged = region & (new == old)
    new[unchanged] = np.where(old[unchanged] < 128, old[unchanged] + 1, old[unchanged] - 1)
    return np.where(region, new, old).astype(np.uint8)


def _scratch(clean, rng, scale):
    size = clean.shape[0]
    points = [tuple(rng.uniform(0.15, 0.85, 2) * size)]
    for _ in range(rng.integers(2, 5)):
        step = rng.uniform(0.08, 0.2) * size
        angle = rng.uniform(0, 2 * np.pi)
        x, y = points[-1]
        points.append((float(np.clip(x + step * np.cos(angle), 0, size - 1)),
                       float(np.clip(y + step * np.sin(angle), 0, size - 1))))
    canvas = Image.new("L", clean.shape[::-1], 0)
    ImageDraw.Draw(canvas).line(points, fill=255, width=max(1, round(rng.uniform(1.5, 3) * scale)), joint="curve")
    region = np.asarray(canvas) > 0
    shift = rng.choice([-1, 1]) * rng.uniform(60, 110)
    return _apply(clean, region, clean + shift), region


def _blob(clean, rng, scale):
    size = clean.shape[0]
    centre = rng.uniform(0.2, 0.8, 2) * size
    radii = rng.uniform(8, 17, 2) * scale
    tilt = rng.uniform(0, np.pi)
    theta = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    wobble = 1 + sum(rng.uniform(0, 0.15) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    x, y = radii[0] * wobble * np.cos(theta), radii[1] * wobble * np.sin(theta)
    xs = centre[0] + x * np.cos(tilt) - y * np.sin(tilt)
    ys = centre[1] + x * np.sin(tilt) + y * np.cos(tilt)
    canvas = Image.new("L", clean.shape[::-1], 0)
    ImageDraw.Draw(canvas).polygon(list(zip(xs.tolist(), ys.tolist())), fill=255)
    region = np.asarray(canvas) > 0
    blurred = ndimage.gaussian_filter(clean.astype(np.float64), sigma=2 * scale)
    shift = rng.choice([-1, 1]) * rng.uniform(40, 70)
    return _apply(clean, region, blurred + shift), region


def _patch(clean, rng, scale, other_texture):
    size = clean.shape[0]
    height, width = (rng.uniform(14, 30, 2) * scale).astype(int)
    top, left = rng.integers(0, size - height), rng.integers(0, size - width)
    source_scale = SOURCE_TILE / size  # cut at the same magnification as the tiles
    src_h, src_w = int(height * source_scale), int(width * source_scale)
    src_top = rng.integers(0, other_texture.shape[0] - src_h)
    src_left = rng.integers(0, other_texture.shape[1] - src_w)
    patch = Image.fromarray(other_texture[src_top:src_top + src_h, src_left:src_left + src_w])
    patch = np.asarray(patch.resize((width, height), Image.BILINEAR), dtype=np.float64)
    target = clean[top:top + height, left:left + width].astype(np.float64)
    patch = patch - patch.mean() + target.mean() + rng.choice([-1, 1]) * rng.uniform(15, 40)
    region = np.zeros(clean.shape, dtype=bool)
    region[top:top + height, left:left + width] = True
    new_values = clean.astype(np.float64)
    new_values[top:top + height, left:left + width] = patch
    return _apply(clean, region, new_values), region


def add_defect(clean, defect_type, rng, other_texture):
    """(defective image, bool mask) for one of DEFECT_TYPES; the mask is exactly `image != clean`."""
    scale = clean.shape[0] / 128
    if defect_type == "scratch":
        return _scratch(clean, rng, scale)
    if defect_type == "blob":
        return _blob(clean, rng, scale)
    if defect_type == "patch":
        return _patch(clean, rng, scale, other_texture)
    raise ValueError(f"unknown defect type {defect_type!r}; available: {', '.join(DEFECT_TYPES)}")


def generate_demo_class(class_name, seed=0, image_size=128, n_train=24, n_test_good=8, n_test_defect=12):
    """All images of one demo class, in memory, as DemoImage records (make_demo writes them)."""
    texture = load_texture(class_name)
    others = [name for name in TEXTURES if name != class_name]
    rng = np.random.default_rng([seed, zlib.crc32(class_name.encode())])
    images = []
    for index in range(n_train):
        tile = clean_tile(texture, rng, image_size)
        images.append(DemoImage(f"{class_name}/train/good/{index:03d}.png", tile, None, tile))
    for index in range(n_test_good):
        tile = clean_tile(texture, rng, image_size)
        images.append(DemoImage(f"{class_name}/test/good/{index:03d}.png", tile, None, tile))
    for index in range(n_test_defect):
        defect_type = DEFECT_TYPES[index % len(DEFECT_TYPES)]
        tile = clean_tile(texture, rng, image_size)
        other_texture = load_texture(others[rng.integers(len(others))])
        image, mask = add_defect(tile, defect_type, rng, other_texture)
        path = f"{class_name}/test/{defect_type}/{index // len(DEFECT_TYPES):03d}.png"
        images.append(DemoImage(path, image, mask, tile))
    return images


def make_demo(root, seed=0, image_size=128, n_train=24, n_test_good=8, n_test_defect=12,
              classes=("brick", "grass", "gravel")):
    """Write the demo set under `root` (MVTec layout) and return `root`.

    Idempotent: if `root/demo.json` records the same parameters nothing is done. Otherwise the set is
    written to a temporary folder beside `root` and then renamed into place (an older set's class
    folders replaced, the marker last), under an exclusive lock on `.<root name>.lock` beside it: runs
    started together never read a half-written image; the first writes, the others wait and use its
    set. A killed run leaves no half-written set (the OS releases its lock).
    """
    root = Path(root)
    classes = list(classes)
    unknown = [name for name in classes if name not in TEXTURES]
    if unknown or not classes:
        raise ValueError(f"demo classes must be among {', '.join(TEXTURES)}; got {classes}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    for name, count in (("n_train", n_train), ("n_test_good", n_test_good), ("n_test_defect", n_test_defect)):
        if count < 1:
            raise ValueError(f"{name} must be at least 1, got {count}")
    parameters = {"version": GENERATOR_VERSION, "seed": seed, "image_size": image_size, "n_train": n_train,
                  "n_test_good": n_test_good, "n_test_defect": n_test_defect, "classes": classes}
    if _is_complete(root, parameters):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _locked(root.parent / f".{root.name}.lock"):  # runs started together: one writes, the others wait
        if _is_complete(root, parameters):
            return root  # another run wrote it meanwhile
        building = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.", suffix=".tmp"))
        try:
            os.chmod(building, 0o777 & ~_umask())  # mkdtemp's 0700 would become the data folder's
            for class_name in classes:
                for item in generate_demo_class(class_name, seed, image_size, n_train, n_test_good, n_test_defect):
                    _save_png(item.image, building / item.path)
                    if item.mask is not None:
                        _save_png(item.mask.astype(np.uint8) * 255, building / item.mask_path)
            (building / MARKER_NAME).write_text(json.dumps(parameters, indent=1))
            _put_in_place(building, root)
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return root


def _is_complete(root, parameters):
    try:
        return json.loads((root / MARKER_NAME).read_text()) == parameters
    except (OSError, ValueError):
        return False


@contextmanager
def _locked(path):
    """An exclusive flock on `path` (released by the OS if the process dies)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _put_in_place(building, root):
    """Move the complete set in `building` to `root`: one rename when `root` is new; otherwise the marker goes
    first, the demo's class folders (of any earlier call) are replaced, and the new marker comes last."""
    try:
        os.rename(building, root)
        return
    except OSError:  # root exists (an older set, or a folder of the user's)
        pass
    (root / MARKER_NAME).unlink(missing_ok=True)
    for name in TEXTURES:
        shutil.rmtree(root / name, ignore_errors=True)
        if (building / name).is_dir():
            os.rename(building / name, root / name)
    os.replace(building / MARKER_NAME, root / MARKER_NAME)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _save_png(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
