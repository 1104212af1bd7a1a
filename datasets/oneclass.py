"""One-class semantic anomaly detection: one class of a classification set is normal.

Protocol (the one-class protocol of NoCo's paper and its predecessors): train on the normal class's
train images only; test on the whole test split, label 0 for the normal class and 1 for every other
class. CIFAR-100 uses its 20 superclasses (NoCo's code used the 100 fine labels; the standard protocol does not).

`SemanticDataset` is a whole split with all classes, so features computed once for it can be
sliced per normal class with `OneClassDataset.indices` without reading the images again.
"""
import warnings
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100, MNIST, FashionMNIST

from .common import ImageTransform, list_images, load_rgb, make_sample

SEMANTIC_DATASETS = ("mnist", "fmnist", "cifar10", "cifar100", "cats_vs_dogs")

TORCHVISION_CLASSES = {"mnist": MNIST, "fmnist": FashionMNIST, "cifar10": CIFAR10, "cifar100": CIFAR100}

# Where each torchvision set lives under root.
TORCHVISION_LAYOUTS = {
    "mnist": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "fmnist": "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "cifar10": "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
    "cifar100": "cifar-100-python/{train,test,meta}",
}

CIFAR100_COARSE_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)

# Fine label (CIFAR-100's alphabetical order: apple, aquarium_fish, baby, ...) -> superclass index,
# the membership listed on https://www.cs.toronto.edu/~kriz/cifar.html (and stored as
# `coarse_labels` in the dataset's own pickles). tests/test_datasets_semantic.py rebuilds it from
# that list by name.
CIFAR100_FINE_TO_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3,       # apple .. bottle
    3, 14, 9, 18, 7, 11, 3, 9, 7, 11,     # bowl .. cattle
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15,    # chair .. dinosaur
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5,   # dolphin .. keyboard
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10,  # lamp .. mountain
    16, 4, 17, 4, 2, 0, 17, 4, 18, 17,    # mouse .. pine_tree
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19,   # plain .. rocket
    2, 10, 0, 1, 16, 12, 9, 13, 15, 13,   # rose .. spider
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19,     # squirrel .. tractor
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,    # train .. worm
)

# How NoCo's own loaders resize each set (casivi-research/noco-ad datasets/*.py): torchvision's
# Resize(256) on a PIL image for the torchvision sets, albumentations' Resize (cv2) for Cats-vs-Dogs.
REFERENCE_RESIZE = {"mnist": "pil", "fmnist": "pil", "cifar10": "pil", "cifar100": "pil", "cats_vs_dogs": "cv2"}

CATS_VS_DOGS_CLASSES = ("cat", "dog")
CATS_VS_DOGS_HELP = (
    "expected {root}/train/cat/*.jpg, {root}/train/dog/*.jpg and a flat {root}/test/ folder of "
    "cat.*.jpg / dog.*.jpg files (labelled by filename prefix; NoCo's CatsVSDogs/0.2-0.8 layout). "
    "It cannot be downloaded automatically: get the images of the Kaggle \"Dogs vs. Cats\" competition "
    "(https://www.kaggle.com/c/dogs-vs-cats) and split them into that layout."
)


def _torchvision_set_error(name, root, download, cause):
    torchvision_class = TORCHVISION_CLASSES[name]
    source = torchvision_class.mirrors[0] if hasattr(torchvision_class, "mirrors") else torchvision_class.url
    layout = Path(root) / TORCHVISION_LAYOUTS[name]
    cause = " ".join(cause.split())
    if download:
        return ValueError(f"downloading {name} with torchvision failed ({cause}). Download it by hand from "
                          f"{source} and put the files at {layout} (torchvision's layout).")
    return ValueError(f"{name} not found under {root}: expected {layout} (torchvision's layout; "
                      f"torchvision said: {cause}). Pass --download (download=True) to fetch it from {source}.")


def _load_torchvision_set(name, root, split, download):
    try:
        return TORCHVISION_CLASSES[name](root, train=split == "train", download=download)
    except RuntimeError as err:
        # MNIST: "Dataset not found."; CIFAR: "Dataset not found or corrupted." / "metadata file not found".
        # A failed download also arrives here (MNIST tries every mirror, then raises RuntimeError).
        if "not found" in str(err) or download:
            raise _torchvision_set_error(name, root, download, str(err)) from None
        raise
    except OSError as err:  # CIFAR's download lets urllib's URLError through
        raise _torchvision_set_error(name, root, download, str(err)) from None


def _is_readable_image(path):
    if path.stat().st_size == 0:
        return False
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception:  # PIL raises many types for a broken file; any of them means "skip it"
        return False
    return True


def _scan_cats_vs_dogs(root, split):
    """(files, targets) of one split; unreadable files are skipped with one warning."""
    root = Path(root)
    folder = root / split
    if not folder.is_dir():
        raise ValueError(f"Cats-vs-Dogs not found: {folder} does not exist; {CATS_VS_DOGS_HELP.format(root=root)}")
    files, targets = [], []
    if split == "train":
        for target, class_name in enumerate(CATS_VS_DOGS_CLASSES):
            class_folder = folder / class_name
            if class_folder.is_dir():
                class_files = list_images(class_folder)
                files += class_files
                targets += [target] * len(class_files)
    else:
        unlabelled = []
        for path in list_images(folder):
            prefix = path.name.split(".")[0].lower()
            if prefix in CATS_VS_DOGS_CLASSES:
                files.append(path)
                targets.append(CATS_VS_DOGS_CLASSES.index(prefix))
            else:
                unlabelled.append(path.name)
        if unlabelled:
            warnings.warn(f"Cats-vs-Dogs: skipped {len(unlabelled)} file(s) in {folder} whose name starts with "
                          f"neither 'cat' nor 'dog', e.g. {', '.join(unlabelled[:3])}", stacklevel=3)
    if not files:
        raise ValueError(f"Cats-vs-Dogs: no images in {folder}; {CATS_VS_DOGS_HELP.format(root=root)}")

    readable = [_is_readable_image(path) for path in files]
    broken = [str(path) for path, ok in zip(files, readable) if not ok]
    if broken:
        warnings.warn(f"Cats-vs-Dogs {split}: skipped {len(broken)} empty or corrupt image file(s), "
                      f"e.g. {', '.join(broken[:3])}", stacklevel=3)
    files = [path for path, ok in zip(files, readable) if ok]
    targets = [target for target, ok in zip(targets, readable) if ok]
    return files, targets


class SemanticDataset(Dataset):
    """The whole train or test split of one classification set, all classes.

    An item is {"image": 3xHxW normalised tensor, "target": class index, "class_name": str,
    "path": file path, or "<name>/<split>/<index>" for the array datasets}. `resize` is
    ImageTransform's ("pil" or "cv2"); NoCo's own loaders use REFERENCE_RESIZE[name].
    """

    def __init__(self, name, root, split, image_size=256, crop_size=224, download=False, resize="pil"):
        if name not in SEMANTIC_DATASETS:
            raise ValueError(f"unknown semantic dataset {name!r}; choose one of {', '.join(SEMANTIC_DATASETS)}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.name, self.root, self.split = name, Path(root), split
        self.transform = ImageTransform(image_size, crop_size, resize)
        self.files = None
        self.torchvision_set = None

        if name == "cats_vs_dogs":
            self.files, targets = _scan_cats_vs_dogs(root, split)
            self.class_names = list(CATS_VS_DOGS_CLASSES)
        else:
            self.torchvision_set = _load_torchvision_set(name, root, split, download)
            targets = self.torchvision_set.targets
            if name == "mnist":
                self.class_names = [str(digit) for digit in range(10)]
            elif name == "cifar100":
                targets = [CIFAR100_FINE_TO_COARSE[fine] for fine in targets]
                self.class_names = list(CIFAR100_COARSE_NAMES)
            else:
                self.class_names = list(self.torchvision_set.classes)
        self.targets = torch.as_tensor(targets, dtype=torch.long)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        target = int(self.targets[index])
        if self.files is not None:
            image, path = load_rgb(self.files[index]), str(self.files[index])
        else:
            image, _ = self.torchvision_set[index]
            image, path = image.convert("RGB"), f"{self.name}/{self.split}/{index}"
        return {"image": self.transform.image(image), "target": target,
                "class_name": self.class_names[target], "path": path}


def resolve_class(class_names, normal_class):
    """Index of `normal_class`, given as a class name or an index (int or digit string)."""
    if isinstance(normal_class, str):
        if normal_class in class_names:
            return class_names.index(normal_class)
        lowered = [name.lower() for name in class_names]
        if normal_class.lower() in lowered:
            return lowered.index(normal_class.lower())
        if normal_class.isdigit() and int(normal_class) < len(class_names):
            return int(normal_class)
    elif isinstance(normal_class, int) and 0 <= normal_class < len(class_names):
        return normal_class
    valid = ", ".join(f"{index}: {name}" for index, name in enumerate(class_names))
    raise ValueError(f"unknown normal class {normal_class!r}; give a name or an index among {valid}")


class OneClassDataset(Dataset):
    """One normal class of a SemanticDataset: train holds only its images; test holds every
    image, label 0 for the normal class and 1 otherwise. Items are the standard sample dict.

    `.indices` are positions in the base dataset and `.labels` the matching 0/1 labels.
    """

    def __init__(self, base, normal_class):
        self.base = base
        self.normal_index = resolve_class(base.class_names, normal_class)
        self.normal_class = base.class_names[self.normal_index]
        is_normal = base.targets == self.normal_index
        if base.split == "train":
            self.indices = torch.nonzero(is_normal).flatten()
            if len(self.indices) == 0:
                raise ValueError(f"{base.name} train split has no images of class {self.normal_class!r}")
        else:
            self.indices = torch.arange(len(base))
        self.labels = (~is_normal[self.indices]).long()

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        item = self.base[int(self.indices[index])]
        return make_sample(item["image"], self.labels[index], self.base.transform.mask(None),
                           item["class_name"], item["path"])
