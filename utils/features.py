"""Frozen-encoder features, computed once and reused by every epoch.

A frozen encoder with no augmentation gives the same features for an image at every epoch, so
`extract_features` runs it once over a dataset and keeps the outputs in memory, or in a
memory-mapped file on disk when they exceed a budget. They are kept in float32 by default, exactly
as the encoder gave them; float16 and bfloat16 halve the memory but change the scores slightly,
and a value beyond float16's range (65504, e.g. in a random-init resnet152's layer4) is refused at
extraction rather than cached as inf. `CachedBatches` and `EncodedBatches` then yield the same
shuffled training batches — from the cache, or by running the encoder again on the images — so a
script can switch between them with one constant.
"""
import shutil
import tempfile
import weakref

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

# The element type of each cache dtype in a .npy memory map. numpy has no bfloat16: its 16 bits
# are stored as int16 and viewed back as bfloat16 (a bit-for-bit copy, no conversion).
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.int16}
CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def shuffled_batches(n, batch_size, generator):
    """Index batches of one epoch in a random order drawn from `generator` (the last may be short)."""
    return torch.randperm(n, generator=generator).split(batch_size)


def _storage(shape, dtype, path):
    if path is None:
        return torch.empty(shape, dtype=dtype)
    array = np.lib.format.open_memmap(path, mode="w+", dtype=_NUMPY_DTYPES[dtype], shape=shape)
    return torch.from_numpy(array).view(dtype)


def _checked_cast(layer, values, dtype):
    """`values` in `dtype`; a ValueError (one line: the layer, the dtype, the fix) if any is not finite."""
    cast = values.to(dtype)
    if bool(torch.isfinite(cast).all()):
        return cast
    name = str(dtype).removeprefix("torch.")
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{layer} features are not finite (inf or nan) in the encoder's own output "
                         f"({str(values.dtype).removeprefix('torch.')}, before the {name} cache): the encoder "
                         "itself overflows; check its weights and input (no cache dtype can fix this)")
    largest = values.abs().max().item()
    raise ValueError(f"{layer} features overflow {name} (max |x| = {largest:.1e} > {torch.finfo(dtype).max:g}): "
                     "use --cache_dtype float32")


@torch.no_grad()
def extract_features(encoder, dataset, device, batch_size=32, num_workers=0, dtype=torch.float32,
                     memory_budget_gb=8.0, cache_dir=None, desc="features"):
    """Run the frozen encoder once over `dataset`; return {layer: tensor of shape (N, ...)} on the CPU.

    `dtype` (float32, float16 or bfloat16, or its name) is the cache's precision; float32 keeps the
    encoder's output exactly. A value that is not finite after the cast (float16 overflows above
    65504) or in the encoder's output raises a ValueError naming the layer. Above `memory_budget_gb`
    the tensors live in .npy memory maps in `cache_dir` (a temporary folder by default, removed when
    the returned dict is garbage-collected; bfloat16 is stored there as its int16 bits).
    """
    dtype = CACHE_DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype not in _NUMPY_DTYPES:
        raise ValueError(f"feature cache dtype must be one of {', '.join(CACHE_DTYPES)}, got {dtype}")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    features, disk_dir, start = None, None, 0
    for batch in tqdm(loader, desc=desc, leave=False):
        outputs = encoder(batch["image"].to(device))
        if features is None:
            per_image = sum(v[0].numel() for v in outputs.values()) * torch.finfo(dtype).bits // 8
            if per_image * len(dataset) > memory_budget_gb * 2 ** 30:
                disk_dir = tempfile.mkdtemp(prefix="feature-cache-", dir=cache_dir)
            features = {k: _storage((len(dataset), *v.shape[1:]), dtype, disk_dir and f"{disk_dir}/{k}.npy")
                        for k, v in outputs.items()}
            if disk_dir is not None:
                features = _DiskFeatures(features, disk_dir)
        for k, v in outputs.items():
            features[k][start:start + len(v)] = _checked_cast(k, v, dtype).cpu()
        start += len(batch["image"])
    if features is None:
        raise ValueError(f"cannot extract {desc}: the dataset is empty")
    return features


class _DiskFeatures(dict):
    """A feature dict backed by memory-mapped files; the files go when the dict does."""

    def __init__(self, features, folder):
        super().__init__(features)
        self.folder = folder
        weakref.finalize(self, shutil.rmtree, folder, True)


class _Rows:
    """Rows of a dataset (all, or the given indices) served in shuffled batches; within a batch the
    rows are sorted, which keeps reads from a memory map sequential and does not change a mean loss."""

    def __init__(self, n, batch_size, indices):
        self.indices = torch.arange(n) if indices is None else torch.as_tensor(indices)
        self.batch_size = batch_size

    def __len__(self):
        return len(self.indices)

    def shuffled(self, generator):
        return [self.indices[batch].sort().values for batch in shuffled_batches(len(self), self.batch_size, generator)]


class CachedBatches(_Rows):
    """Training batches taken from extracted features (optionally a subset of their rows)."""

    def __init__(self, features, batch_size, indices=None):
        super().__init__(len(next(iter(features.values()))), batch_size, indices)
        self.features = features

    def _take(self, rows, device):
        return {k: v[rows].to(device, torch.float32, non_blocking=True) for k, v in self.features.items()}

    def epoch(self, generator, device, skip=0):
        for rows in self.shuffled(generator)[skip:]:
            yield self._take(rows, device)

    def ordered(self, device):
        """All rows in order, in batches (for evaluation)."""
        for rows in self.indices.split(self.batch_size):
            yield self._take(rows, device)


class EncodedBatches(_Rows):
    """The same batches as CachedBatches, computed by running the encoder on the images each time."""

    def __init__(self, encoder, dataset, batch_size, num_workers=0, indices=None):
        super().__init__(len(dataset), batch_size, indices)
        self.encoder = encoder
        self.dataset = dataset
        self.num_workers = num_workers

    def epoch(self, generator, device, skip=0):
        batches = [rows.tolist() for rows in self.shuffled(generator)][skip:]
        for batch in DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers):
            yield {k: v.float() for k, v in self.encoder(batch["image"].to(device)).items()}
