"""What every dataset shares: image/mask loading with clear errors, the resize-crop-normalise
transform, and the sample dict.

A sample is a dict:
    image       float32 tensor 3xHxW, ImageNet-normalised
    label       int, 0 normal / 1 anomalous
    mask        float32 tensor 1xHxW with values in {0, 1} (all zeros for normal images)
    class_name  str, the image's own class (metadata only: no model reads it)
    path        str, the file it came from (or "<dataset>/<split>/<index>" for array datasets)
"""
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder):
    """Sorted image files of a folder (by name, case-insensitive extensions)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_rgb(path):
    """Open an image as 3-channel RGB (grayscale is replicated); a clear error names the file."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from None


def load_mask(path, size=None):
    """Open a mask as a binary 0/255 PIL image (any value > 0 is anomalous).

    `size` is the (width, height) of its image: a mask of another size is resized with nearest
    neighbour and a warning names it.
    """
    try:
        with Image.open(path) as img:
            # palette and integer masks hold class indices: binarise those, not their display colour
            values = (np.asarray(img) if img.mode in ("1", "L", "P", "I", "I;16")
                      else np.asarray(img.convert("RGB")).max(axis=2))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(f"cannot read mask {path}: {err}") from None
    mask = Image.fromarray((values > 0).astype(np.uint8) * 255)
    if size is not None and mask.size != tuple(size):
        warnings.warn(f"mask {path} is {mask.size[0]}x{mask.size[1]} but its image is {size[0]}x{size[1]}; "
                      "resized with nearest neighbour", stacklevel=2)
        mask = mask.resize(tuple(size), Image.NEAREST)
    return mask


class ImageTransform:
    """Resize to a square `image_size`, then centre-crop `crop_size` (0 = no crop), then
    ImageNet-normalise. Masks follow the same geometry with nearest-neighbour resizing."""

    def __init__(self, image_size, crop_size=0):
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if crop_size > image_size:
            raise ValueError(f"crop_size ({crop_size}) cannot exceed image_size ({image_size})")
        self.image_size = image_size
        self.crop_size = crop_size

    @property
    def output_size(self):
        return self.crop_size or self.image_size

    def _geometry(self, img, interpolation):
        img = TF.resize(img, [self.image_size, self.image_size], interpolation=interpolation, antialias=True)
        if self.crop_size:
            img = TF.center_crop(img, [self.crop_size, self.crop_size])
        return img

    def image(self, pil_image):
        tensor = TF.to_tensor(self._geometry(pil_image, InterpolationMode.BILINEAR))
        return TF.normalize(tensor, IMAGENET_MEAN, IMAGENET_STD)

    def mask(self, pil_mask):
        if pil_mask is None:
            return torch.zeros(1, self.output_size, self.output_size)
        return (TF.to_tensor(self._geometry(pil_mask, InterpolationMode.NEAREST)) > 0.5).float()


def make_sample(image, label, mask, class_name, path):
    return {"image": image, "label": int(label), "mask": mask, "class_name": class_name, "path": str(path)}
