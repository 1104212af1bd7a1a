"""Activation recomputation for the convolutional bases (RevDist, ReContrast): a memory option.

`run_blocks(blocks, x, recompute=True)` passes x through each block in turn, each block one
recomputation region: the autograd graph keeps only the outputs of the block's convolutions, and
its BatchNorms, activations and sums are computed again from them when the backward pass reaches
the block (torch.utils.checkpoint's selective activation checkpointing). Convolutions, most of the
arithmetic, never run twice, unless `keep_convolutions=False`: then a block keeps only its input
and runs whole again (ReContrast's trainable encoder, whose BatchNorms are frozen). One region per
block matters: a region's recomputed tensors all come back at once, so a single region around a
whole decoder would need as much memory at the start of the backward pass as no recomputation at all.

Recomputing a BatchNorm in training mode would update its running statistics a second time
(momentum 0.1 would act as 0.19) and so change the model that is trained. A block's BatchNorm
buffers are saved when its recomputation starts and restored when it ends, so a model trained with
recomputation is the one trained without it (tests/test_recompute.py). Blocks must draw no random
numbers (the RNG state is not replayed).
"""
import contextlib
import functools

import torch
import torch.nn as nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

SAVED_OPS = (torch.ops.aten.convolution.default,)  # everything else is recomputed


def _keep_convolutions(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _keep_nothing(ctx, op, *args, **kwargs):
    return CheckpointPolicy.PREFER_RECOMPUTE


@contextlib.contextmanager
def running_statistics_kept(module):
    """Restores, on exit, the buffers (running mean, var, batch count) of every BatchNorm in module."""
    buffers = [buffer for norm in module.modules() if isinstance(norm, nn.modules.batchnorm._BatchNorm)
               for buffer in norm.buffers()]
    kept = [buffer.clone() for buffer in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, kept):
                buffer.copy_(value)


@contextlib.contextmanager
def _entered(*contexts):
    with contextlib.ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        yield


def _contexts(block, policy):
    forward, recompute = create_selective_checkpoint_contexts(policy)
    return forward, _entered(running_statistics_kept(block), recompute)  # buffers copied outside SAC's mode


def run_blocks(blocks, x, recompute, keep_convolutions=True):
    """x through each block in turn; with recompute and grad mode on, each block is recomputed in the
    backward pass from its saved convolution outputs (keep_convolutions=False: from its input alone,
    convolutions included)."""
    policy = _keep_convolutions if keep_convolutions else _keep_nothing
    for block in blocks:
        if recompute and torch.is_grad_enabled():
            x = checkpoint(block, x, use_reentrant=False, preserve_rng_state=False,
                           context_fn=functools.partial(_contexts, block, policy))
        else:
            x = block(x)
    return x
