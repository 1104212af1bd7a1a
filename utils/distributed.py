"""Several processes, one run: `torchrun --nproc_per_node N train_mvtec.py ...`.

Every process draws the same global batch (the same seeded order) and trains on its own slice of
batch_size / N rows; DistributedDataParallel averages the gradients, so the update equals one
process's on the whole batch (BatchNorm aside: on GPUs it becomes SyncBatchNorm, on CPUs each
process normalises its own slice). Test and training maps are computed on interleaved shards of
each dataset and gathered in their original order, so every process holds the table a single
process computes; only rank 0 writes files and prints. NCCL on GPUs, gloo on CPUs.
"""
import os
import sys
from contextlib import contextmanager

import timm
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Subset

from utils.evaluation import ClassMaps


def setup(device_name):
    """(rank, world size, device) of this process; starts the process group when torchrun launched us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    if rank:  # one voice: the other processes work silently
        sys.stdout = open(os.devnull, "w")
    return rank, world, device


@contextmanager
def rank0_first(rank, world):
    """Rank 0 runs the block first (writing a dataset: the demo set, a download); the others wait for it and then
    run the block on what it wrote, instead of reading files another process is still writing."""
    if world > 1 and rank:
        dist.barrier()
    yield
    if world > 1 and not rank:
        dist.barrier()


class LossModule(nn.Module):
    """DistributedDataParallel wraps a module's forward: here forward is the model's loss."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.loss(batch)


def parallel_loss(model, device):
    """model.loss as DistributedDataParallel computes it (gradients averaged over the processes)."""
    if device.type == "cuda":  # timm's conversion keeps the activation of timm's BatchNormAct layers; torch's drops it
        model = timm.layers.convert_sync_batchnorm(model)
    device_ids = [device] if device.type == "cuda" else None
    wrapped = nn.parallel.DistributedDataParallel(LossModule(model), device_ids=device_ids)
    return wrapped


def local_slice(batch, rank, world, option="batch_size"):
    """This process's rows of a global batch: a contiguous block of len / world. `option` names the batch
    size in the message (train_mvtec.py refuses a batch that would not split before any work)."""
    n = len(next(iter(batch.values())))
    if n % world:
        raise ValueError(f"--{option}: a batch of {n} does not split over {world} processes")
    size = n // world
    return {k: v[rank * size:(rank + 1) * size] for k, v in batch.items()}


def from_rank0(model, world):
    """Rank 0's parameters and buffers on every process. Under DistributedDataParallel the parameters
    agree, but each process's BatchNorm running statistics end training updated by its own slice of
    the last batch; evaluating on shards with those would score each shard with another model."""
    if world > 1:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
    return model


def agreed(value, world):
    """Rank 0's value on every process (a run folder named after the time, say)."""
    if world == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def shard(dataset, rank, world):
    """Every world-th item of a dataset, from the rank-th: the part of it this process evaluates."""
    return Subset(dataset, range(rank, len(dataset), world)) if world > 1 else dataset


def gathered(class_maps, n, world):
    """The ClassMaps of a dataset of n items from every process's shard, in the dataset's order."""
    if world == 1:
        return class_maps
    parts = [None] * world
    dist.all_gather_object(parts, class_maps)
    order = torch.cat([torch.arange(r, n, world) for r in range(world)]).argsort()

    def joined(field):
        values = [getattr(p, field) for p in parts]
        return None if values[0] is None else torch.cat(values)[order]

    return ClassMaps(*(joined(f) for f in ("maps", "labels", "masks", "features", "probe")))
