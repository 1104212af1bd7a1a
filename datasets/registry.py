"""The structured datasets of train_mvtec.py, one entry each: the Dataset class that reads its layout, where to get
it (the hint of the error when its folder is missing), and what makes its folder ready before it is read
(the demo's generation, the public archive's download with --download, raw VisA's conversion)."""
from dataclasses import dataclass
from typing import Callable

from datasets.btad import BTADDataset
from datasets.demo import make_demo
from datasets.download import download_dataset
from datasets.mvtec import DATASET_SOURCES, MVTecDataset
from datasets.visa import prepare_visa


def _fetched(name, root, download):
    """The dataset's folder, after its public archive is downloaded there when --download asks for it."""
    if download:
        download_dataset(name, root)
    return root


def _visa(name, root, download):
    """VisA as downloaded (split_csv/ beside the class folders) is converted once into MVTec layout."""
    root = _fetched(name, root, download)
    return prepare_visa(root, root / "visa_pytorch") if (root / "split_csv").is_dir() else root


def _demo(name, root, download):
    make_demo(root)
    return root


@dataclass(frozen=True)
class StructuredDataset:
    name: str
    dataset: type = MVTecDataset  # the class reading its layout (one per class and split)
    ready: Callable = _fetched     # (name, root, download) -> the folder to read, written once (rank 0 first)

    @property
    def source_hint(self):
        return DATASET_SOURCES[self.name]


DATASETS = {entry.name: entry for entry in (
    StructuredDataset("mvtec"), StructuredDataset("mpdd"), StructuredDataset("visa", ready=_visa),
    StructuredDataset("btad", BTADDataset), StructuredDataset("demo", ready=_demo),
)}
