"""What every dataset shares: image/mask loading with clear errors, the resize-crop-normalise
transform, and the sample dict.

A sample is a dict:
    image       float32 tensor 3xHxW, ImageNet-normalised
    label       int, 0 normal / 1 anomalous
    mask        float32 tensor 1xHxW with values in {0, 1} (all zeros for normal images)
    class_name  str, the image's own class (metadata only: no model reads it)
    path        str, the file it came from (or "<dataset>/<split>/<index>" for array datasets)
"""
import os
import re
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# How ImageTransform resizes, and which reference does it that way:
#   "pil": PIL bilinear, antialiased when downscaling: torchvision's transforms.Resize on a PIL image
#          (RD4AD, ReContrast; NoCo's MNIST/CIFAR loaders); masks PIL nearest.
#   "cv2": cv2.resize INTER_LINEAR on the uint8 RGB array, no antialiasing: albumentations' Resize
#          (NoCo's MVTec/MPDD/VisA and Cats-vs-Dogs loaders); masks cv2 INTER_NEAREST.
RESIZE_MODES = ("pil", "cv2")

# Everything PIL raises for a truncated or corrupt file (a truncated one raises OSError "image file
# is truncated" on load, since PIL's ImageFile.LOAD_TRUNCATED_IMAGES is False by default).
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error,
                  Image.DecompressionBombError)

# The modes the loaders read, by how. PIL decodes 8-bit files exactly and convert("RGB") is the reference step
# for them. 16-bit grey opens as "I;16*" (or "I" in older Pillows) with its values intact. 16-bit colour opens
# as an 8-bit mode whose decoder keeps only each value's high byte, so OpenCV decodes those (PNG "RGB;16B",
# TIFF "RGB;16N"; a 16-bit grey+alpha PNG opens as "RGBA" from "LA;16B").
_8BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
_16BIT_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_16BIT_COLOUR_RAWMODE = re.compile(r"(RGB|RGBA|RGBX|LA);16[BLN]?")


def _one_line(err):
    return " ".join(str(err).split()) or type(err).__name__


def list_images(folder):
    """Sorted image files of a folder (by name, case-insensitive extensions)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _bit_depth(img):
    """8 or 16, for an image opened but not yet loaded (its tiles name the raw layout); raises ValueError for a
    mode the loaders do not read."""
    if img.mode in _16BIT_GREY_MODES:
        return 16
    if img.mode not in _8BIT_MODES:
        raise ValueError(f"{img.mode} images are not supported (expected 8- or 16-bit grey or RGB)")
    rawmodes = (args if isinstance(args, str) else str((args or ("",))[0]) for _, _, _, args in img.tile)
    return 16 if any(_16BIT_COLOUR_RAWMODE.fullmatch(rawmode) for rawmode in rawmodes) else 8


def _16bit_values(img, path):
    """The values of an opened 16-bit image: HxW for grey, HxWx3 in RGB order for colour (alpha dropped)."""
    img.load()  # PIL decodes the whole file, so that a truncated or corrupt one fails as an 8-bit one does
    if img.mode in _16BIT_GREY_MODES:
        return np.asarray(img)
    bgr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if bgr is None or bgr.dtype != np.uint16 or bgr.ndim != 3:
        raise ValueError("OpenCV cannot decode it as a 16-bit colour image")
    return bgr[:, :, 2::-1]


def check_image_header(path, kind="image"):
    """Read only the header of `path` (no pixel is decoded) and check that load_rgb or load_mask can read its
    mode; raises `ValueError: cannot read <kind> <path>: <why>` (one line) otherwise. A truncated file whose
    header is intact passes, and fails when it is loaded."""
    try:
        with Image.open(path) as img:
            _bit_depth(img)
    except _DECODE_ERRORS as err:
        raise ValueError(f"cannot read {kind} {path}: {_one_line(err)}") from None


def load_rgb(path):
    """Open an image as 3-channel 8-bit RGB (grayscale is replicated, alpha dropped); a truncated, corrupt or
    unsupported file raises `ValueError: cannot read image <path>: <why>` (one line).

    A 16-bit image (grey or colour, PNG or TIFF) becomes round(v * 255 / 65535) per channel, so that it keeps its
    contrast (PIL's convert("RGB") clips 16-bit grey to white) and a file made as v8 * 257 loads as v8. A 32-bit
    integer ("I") image is read as 16-bit and refused if a value lies outside 0-65535.

    Decoding is PIL's (OpenCV's imread was not clearly faster on PNG, benchmarks/bench_decode.py, and
    decodes truncated JPEGs partially), except for 16-bit colour, which PIL truncates to each value's high byte.
    """
    try:
        with Image.open(path) as img:
            if _bit_depth(img) == 8:
                return img.convert("RGB")
            values = _16bit_values(img, path)
            if img.mode == "I" and (values.min() < 0 or values.max() > 65535):
                raise ValueError("I values outside 0-65535 are not supported (expected 8- or 16-bit grey or RGB)")
    except _DECODE_ERRORS as err:
        raise ValueError(f"cannot read image {path}: {_one_line(err)}") from None
    # round(v * 255 / 65535) = round(v / 257), exact in integers (no ties: 257 is odd)
    return Image.fromarray(((values.astype(np.int64) + 128) // 257).astype(np.uint8)).convert("RGB")


def load_mask(path, size=None):
    """Open a mask as a binary 0/255 PIL image (any value > 0 in any colour channel is anomalous, at 8 or 16
    bits); a truncated, corrupt or unsupported file raises `ValueError: cannot read mask <path>: <why>` (one
    line).

    `size` is the (width, height) of its image: a mask of another size is resized with nearest
    neighbour and a warning names it.
    """
    try:
        with Image.open(path) as img:
            if _bit_depth(img) == 16:
                values = _16bit_values(img, path)
            elif img.mode in ("1", "L", "P"):  # palette masks hold class indices: binarise those, not their colour
                values = np.asarray(img)
            else:
                values = np.asarray(img.convert("RGB"))
    except _DECODE_ERRORS as err:
        raise ValueError(f"cannot read mask {path}: {_one_line(err)}") from None
    if values.ndim == 3:
        values = values.max(axis=2)
    mask = Image.fromarray((values > 0).astype(np.uint8) * 255)
    if size is not None and mask.size != tuple(size):
        warnings.warn(f"mask {path} is {mask.size[0]}x{mask.size[1]} but its image is {size[0]}x{size[1]}; "
                      "resized with nearest neighbour", stacklevel=2)
        mask = mask.resize(tuple(size), Image.NEAREST)
    return mask


def _decode_sample(sample):
    """Decode one (image path, label, mask path or None) sample; True when its mask marks no pixel."""
    image_path, _, mask_path = sample
    load_rgb(image_path)
    return mask_path is not None and load_mask(mask_path).getbbox() is None


def default_threads():
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_every_file(samples, threads=None):
    """Decode every image and mask of `samples` ((image path, label, mask path or None) triples) once, with the
    loaders' own functions (load_rgb, load_mask), on `threads` threads (default: every core this process may
    use). Raises the ValueError of the first bad file in sample order, one line naming it: a truncated, corrupt
    or unsupported image or mask. Returns the samples whose mask marks no pixel (a defective image with an empty
    mask: Magnetic Tile has four), in order. Warnings (a mask of another size than its image, a huge image) are
    left to the loading of the file."""
    samples = list(samples)
    pool = ThreadPoolExecutor(max_workers=max(1, min(threads or default_threads(), len(samples) or 1)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            empty = list(pool.map(_decode_sample, samples))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [sample for sample, is_empty in zip(samples, empty) if is_empty]


def _rgb_array(image):
    """A HxWx3 uint8 array of a PIL image or of such an array."""
    if isinstance(image, Image.Image):
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image (PIL or HxWx3 uint8 array), got {array.dtype} {array.shape}")
    return array


class ImageTransform:
    """Resize to a square `image_size`, then centre-crop `crop_size` (0 = no crop), then
    ImageNet-normalise. Masks follow the same geometry with nearest-neighbour resizing.

    `resize` is how (see RESIZE_MODES): "pil" resizes like torchvision's Resize on a PIL image
    (bilinear, antialiased when downscaling) and crops like its CenterCrop; "cv2" resizes the uint8
    RGB array with cv2.resize INTER_LINEAR (no antialiasing) and crops like albumentations'
    CenterCrop (the offset rounds down where torchvision's rounds half to even).
    """

    def __init__(self, image_size, crop_size=0, resize="pil"):
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if crop_size > image_size:
            raise ValueError(f"crop_size ({crop_size}) cannot exceed image_size ({image_size})")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        self.image_size = image_size
        self.crop_size = crop_size
        self.resize = resize

    @property
    def output_size(self):
        return self.crop_size or self.image_size

    def _pil_geometry(self, img, interpolation):
        img = TF.resize(img, [self.image_size, self.image_size], interpolation=interpolation, antialias=True)
        if self.crop_size:
            img = TF.center_crop(img, [self.crop_size, self.crop_size])
        return img

    def _cv2_geometry(self, array, interpolation):
        array = cv2.resize(array, (self.image_size, self.image_size), interpolation=interpolation)
        if self.crop_size:
            top = (self.image_size - self.crop_size) // 2
            array = array[top:top + self.crop_size, top:top + self.crop_size]
        return array

    def pixels(self, image):
        """The resized and cropped image as a HxWx3 uint8 array (before normalisation)."""
        if self.resize == "cv2":
            return self._cv2_geometry(_rgb_array(image), cv2.INTER_LINEAR)
        if not isinstance(image, Image.Image):
            image = Image.fromarray(_rgb_array(image))
        elif image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(self._pil_geometry(image, InterpolationMode.BILINEAR))

    def image(self, image):
        """A PIL image or HxWx3 uint8 array -> normalised float32 tensor 3xSxS (TF.to_tensor's scaling)."""
        tensor = torch.from_numpy(np.array(self.pixels(image))).permute(2, 0, 1).float().div(255)
        return TF.normalize(tensor, IMAGENET_MEAN, IMAGENET_STD)

    def mask(self, pil_mask):
        if pil_mask is None:
            return torch.zeros(1, self.output_size, self.output_size)
        if self.resize == "cv2":
            array = self._cv2_geometry(np.asarray(pil_mask if pil_mask.mode == "L" else pil_mask.convert("L")),
                                       cv2.INTER_NEAREST)
            return torch.from_numpy(array > 127).float()[None]
        return (TF.to_tensor(self._pil_geometry(pil_mask, InterpolationMode.NEAREST)) > 0.5).float()


def make_sample(image, label, mask, class_name, path):
    return {"image": image, "label": int(label), "mask": mask, "class_name": class_name, "path": str(path)}
