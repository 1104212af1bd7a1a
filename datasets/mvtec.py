"""Any folder in MVTec AD layout: MVTec AD, MPDD, prepared VisA, the demo set, users' own data.

    <root>/<class>/train/good/*                         normal training images
    <root>/<class>/test/<defect>/*                      `good` = normal, any other folder = anomalous
    <root>/<class>/ground_truth/<defect>/<stem>_mask.png

The file list is built and checked in `__init__`, so a run fails at start-up (missing folder,
missing mask, a test split without normal or without anomalous images) rather than half-way through.
`resolve_classes` does that for every class of a run before any of them is trained, and decodes every
image and mask once (datasets.common.decode_every_file): a truncated or corrupt file stops the run there,
naming the file; defect masks that mark no pixel are named in one warning per class.
"""
import difflib
import warnings
from pathlib import Path

from torch.utils.data import ConcatDataset, Dataset

from datasets.common import ImageTransform, decode_every_file, list_images, load_mask, load_rgb, make_sample

MVTEC_CLASSES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
                 "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
MPDD_CLASSES = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes")
VISA_CLASSES = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1", "pcb2",
                "pcb3", "pcb4", "pipe_fryum")
BTAD_CLASSES = ("01", "02", "03")

# The "where to get it" half of the dataset-not-found message, per dataset.
DATASET_SOURCES = {
    "mvtec": "download MVTec AD from https://www.mvtec.com/company/research/datasets/mvtec-ad or pass --download",
    "mpdd": "download MPDD from https://github.com/stepanje/MPDD (it already has this layout)",
    "visa": "download VisA from https://github.com/amazon-science/spot-diff and convert it with "
            "datasets.visa.prepare_visa, or pass --download",
    "btad": "download BTAD from http://avires.dimi.uniud.it/papers/btad/btad.zip or pass --download",
    "demo": "generate it with datasets.demo.make_demo(root)",
    "folder": "arrange your own images in this layout",
}

SPLITS = ("train", "test")


def list_classes(root):
    """Sorted class folders of `root` that contain `train/`."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "train").is_dir())


class MVTecDataset(Dataset):
    """One class, one split of an MVTec-layout folder; items are sample dicts (datasets.common).

    `source_hint` completes the error raised when `root` does not exist (see DATASET_SOURCES);
    `resize` is ImageTransform's ("pil" or "cv2", see datasets.common.RESIZE_MODES).
    Subclasses for other layouts override `good_folder`, `layout_name`, `layout` and `mask_candidates`.
    """

    good_folder = "good"
    layout_name = "MVTec"
    layout = ("<root>/<class>/train/good, <root>/<class>/test/<defect>, "
              "<root>/<class>/ground_truth/<defect>/<name>_mask.png")

    def __init__(self, root, class_name, split, image_size=256, crop_size=0, source_hint=DATASET_SOURCES["folder"],
                 resize="pil"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root = Path(root)
        self.class_name = class_name
        self.split = split
        self.transform = ImageTransform(image_size, crop_size, resize)
        self.samples = self._build_samples(source_hint)
        self.labels = [label for _, label, _ in self.samples]

    def mask_candidates(self, class_dir, defect, image_path):
        """Possible mask paths of an anomalous image, the expected one first."""
        return [class_dir / "ground_truth" / defect / f"{image_path.stem}_mask.png"]

    def _class_dir(self, source_hint):
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset not found at {self.root}: expected {self.layout}; {source_hint}")
        class_dir = self.root / self.class_name
        if not class_dir.is_dir():
            available = ", ".join(list_classes(self.root)) or "none (no folder here has train/)"
            raise ValueError(f"unknown class '{self.class_name}' in {self.root}; available: {available}")
        for required in (class_dir / "train" / self.good_folder, class_dir / "test"):
            if not required.is_dir():
                raise FileNotFoundError(f"wrong layout: {required} is missing (expected {self.layout})")
        return class_dir

    def _build_samples(self, source_hint):
        class_dir = self._class_dir(source_hint)
        split_dir = class_dir / self.split
        if self.split == "train":
            defect_dirs = [split_dir / self.good_folder]
        else:
            defect_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        samples = []
        for defect_dir in defect_dirs:
            is_normal = defect_dir.name == self.good_folder
            for image_path in list_images(defect_dir):
                samples.append((image_path, 0, None) if is_normal else
                               (image_path, 1, self._find_mask(class_dir, defect_dir.name, image_path)))
        if not samples:
            looked_in = ", ".join(str(d) for d in defect_dirs) or "no subfolders"
            raise ValueError(f"no images in {split_dir} (looked in: {looked_in})")
        if self.split == "test":
            labels = {label for _, label, _ in samples}
            if 0 not in labels:
                raise ValueError(f"{split_dir} has no normal images (expected {split_dir / self.good_folder}); "
                                 "AUROC needs both kinds")
            if 1 not in labels:
                raise ValueError(f"{split_dir} has no anomalous images (expected {split_dir}/<defect> besides "
                                 f"{self.good_folder}); AUROC needs both kinds")
        return samples

    def _find_mask(self, class_dir, defect, image_path):
        candidates = self.mask_candidates(class_dir, defect, image_path)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise ValueError(f"defective image {image_path} has no mask: expected {candidates[0]}")

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        image_path, label, mask_path = self.samples[index]
        image = load_rgb(image_path)
        mask = load_mask(mask_path, image.size) if mask_path is not None else None
        return make_sample(self.transform.image(image), label, self.transform.mask(mask), self.class_name, image_path)


def _layout_hint(root):
    """Where class folders are, if not in `root` itself: `root` is one class, or they are one level down."""
    if (root / "train").is_dir():
        return f" ({root} looks like a single class folder: pass its parent {root.parent} and --classes {root.name})"
    nested = sorted(str(sub) for sub in root.iterdir() if sub.is_dir() and list_classes(sub))
    return f" (class folders found one level down, in {', '.join(nested[:3])}: pass that folder)" if nested else ""


def _requested_list(requested):
    """A comma string or a sequence of class names -> a list without blanks or repeats, in order."""
    names = requested.split(",") if isinstance(requested, str) else list(requested or ())
    return list(dict.fromkeys(str(name).strip() for name in names if str(name).strip()))


def resolve_classes(root, requested=(), dataset_cls=MVTecDataset, source_hint=DATASET_SOURCES["folder"], threads=None):
    """The classes a run will use, checked before any work: `requested` (a sequence or a comma string)
    in its order, or every class found in `root` (sorted) when it is empty.

    Raises FileNotFoundError if `root` does not exist (naming the layout and `source_hint`);
    ValueError if `root` holds no class folder of `dataset_cls`'s layout, or if any requested class
    is missing (naming all the missing ones and the available ones). Then builds every class's
    train and test file lists and decodes every image and mask in them once (decode_every_file, on
    `threads` threads, default every core), so a missing folder or mask, a test split without normal or
    anomalous images, a truncated, corrupt or unsupported file, or a class whose every defect mask is empty
    fails here, in one line naming the file or class, rather than after training the classes before it
    (warnings are left to the loading of that image). Defective images with an empty mask (some real datasets
    have them: Magnetic Tile's `uneven` has four) are kept, anomalous images with no anomalous pixel, and one
    warning per class names how many and the first. On MVTec AD the pass costs about
    2 minutes of one core (README, Data).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset not found at {root}: expected {dataset_cls.layout}; {source_hint}")
    available = list_classes(root)
    if not available:
        raise ValueError(f"{root} is not in {dataset_cls.layout_name} layout: expected {dataset_cls.layout}"
                         f"{_layout_hint(root)}")
    names = _requested_list(requested) or available
    missing = [name for name in names if not (root / name).is_dir()]
    if missing:
        described = []
        for name in missing:
            close = [a for a in available if a.lower() == name.lower()] or difflib.get_close_matches(name, available, 1)
            described.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise ValueError(f"unknown class{'es' if len(missing) > 1 else ''} {', '.join(described)} in {root}; "
                         f"available: {', '.join(available)}")
    datasets = [dataset_cls(root, name, split, source_hint=source_hint) for name in names for split in SPLITS]
    empty = decode_every_file((sample for dataset in datasets for sample in dataset.samples), threads)
    for name in names:
        masks = {mask for dataset in datasets if dataset.class_name == name for _, _, mask in dataset.samples if mask}
        unmarked = [mask for _, _, mask in empty if mask in masks]
        if unmarked and len(unmarked) == len(masks):
            raise ValueError(f"every defect mask of class {name} is empty (first: {unmarked[0]}): expected the "
                             "defects' pixels > 0 in its ground_truth masks; the pixel metrics need marked pixels")
        if unmarked:
            warnings.warn(f"{len(unmarked)} of {len(masks)} defect masks of class {name} mark no pixel (first: "
                          f"{unmarked[0]}): those images count as anomalous images with no anomalous pixel",
                          stacklevel=2)
    return names


class MixedDataset(ConcatDataset):
    """The absolute-unified "mixed" view: the union of per-class datasets. Class names are kept
    as metadata only (`.class_names`, each sample's `class_name`); no model reads them."""

    def __init__(self, datasets):
        datasets = list(datasets)
        if not datasets:
            raise ValueError("MixedDataset needs at least one dataset")
        super().__init__(datasets)
        self.class_names = [dataset.class_name for dataset in datasets]
        self.samples = [sample for dataset in datasets for sample in dataset.samples]
        self.labels = [label for dataset in datasets for label in dataset.labels]
