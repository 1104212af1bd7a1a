"""The memory options. Activation recomputation (models/recompute.py): the same trained model, less
memory kept for the backward pass, BatchNorm running statistics updated once per step. Keeping freed
memory on a CPU (utils/cpu.py): freed blocks are reused instead of faulting in fresh pages."""
import contextlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from models import recompute
from models.backbones import build_encoder, load_backbone
from models.recontrast import ReContrast
from models.revdist import RevDist
from tests.test_training import fit_losses

REPO = Path(__file__).resolve().parent.parent
CFG = SimpleNamespace(optimizer="adamw", lr=2e-3, encoder_lr=1e-5, betas=(0.9, 0.999), weight_decay=1e-5,
                      adam_eps=1e-10, amsgrad=True, lr_drop_at=0.8, lr_drop_gamma=0.2)


def revdist(recompute_on):
    torch.manual_seed(0)
    return RevDist("resnet18", activation="gelu", recompute=recompute_on)


def recontrast(recompute_on):
    torch.manual_seed(0)
    return ReContrast(load_backbone("resnet18", "none"), "resnet18", activation="gelu", recompute=recompute_on)


def batches(kind, steps=3, size=64, batch_size=4):
    generator = torch.Generator().manual_seed(1)
    images = [torch.randn(batch_size, 3, size, size, generator=generator) for _ in range(steps)]
    if kind == "recontrast":
        return [{"image": image} for image in images]
    torch.manual_seed(2)
    encoder = build_encoder("resnet18", "none")
    with torch.no_grad():
        return [encoder(image) for image in images]


def trained(model, data):
    optimizer, scheduler = model.configure_optimizers(CFG, 10)
    losses = fit_losses(model, data, optimizer, scheduler, len(data))
    return losses, model.state_dict()


@pytest.mark.parametrize("build, kind", [(revdist, "revdist"), (recontrast, "recontrast")])
def test_recomputed_training_gives_the_model_of_plain_training(build, kind):
    data = batches(kind)
    plain_losses, plain = trained(build(False), data)
    losses, state = trained(build(True), data)
    assert losses == pytest.approx(plain_losses, abs=1e-6)
    assert state.keys() == plain.keys()
    for key in plain:  # parameters and BatchNorm buffers, running statistics included
        assert torch.allclose(state[key].float(), plain[key].float(), atol=1e-5), key
    running = [key for key in plain if key.endswith("running_mean")]
    assert len(running) > 20 and any(not torch.equal(plain[key], torch.zeros_like(plain[key])) for key in running)


def test_without_restoring_them_recomputation_updates_running_statistics_twice(monkeypatch):
    """The control for the test above: the restore is what keeps the statistics right."""
    data = batches("revdist", steps=1)
    _, plain = trained(revdist(False), data)
    monkeypatch.setattr(recompute, "running_statistics_kept", lambda block: contextlib.nullcontext())
    _, state = trained(revdist(True), data)
    key = "decoder.stages.0.0.norms.0.running_mean"
    assert not torch.allclose(state[key], plain[key], atol=1e-5)
    assert int(state[key.replace("running_mean", "num_batches_tracked")]) == 2


def peak_activation_bytes(model, batch):
    """The most CPU memory the forward and backward passes hold at once, beyond the parameters and
    their gradients (allocated by a first step, so that the measured one only accumulates)."""
    model.train()
    model.loss(batch).backward()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        model.loss(batch).backward()
    allocations = sorted((event for event in profile.profiler.kineto_results.events() if event.name() == "[memory]"),
                         key=lambda event: event.start_ns())
    level = peak = 0
    for event in allocations:
        level += event.nbytes()
        peak = max(peak, level)
    assert level == 0  # everything the step allocated was freed again
    return peak


@pytest.mark.parametrize("build, kind", [(revdist, "revdist"), (recontrast, "recontrast")])
def test_recomputation_lowers_the_peak_memory_of_a_training_step(build, kind):
    batch = batches(kind, steps=1, size=128, batch_size=8)[0]
    plain, recomputed = peak_activation_bytes(build(False), batch), peak_activation_bytes(build(True), batch)
    assert plain > 5e7
    assert recomputed < 0.8 * plain, (recomputed, plain)  # measured: 0.65 (RevDist), 0.64 (ReContrast)


def test_evaluation_is_not_recomputed_and_gives_the_same_map(monkeypatch):
    """Maps are computed without gradients, so no block goes through checkpoint (nothing to recompute);
    the training loss of the same model does."""
    import models.recompute
    calls = []
    monkeypatch.setattr(models.recompute, "checkpoint", lambda *args, **kwargs: calls.append(1) or args[0](args[1]))
    batch = batches("revdist", steps=1)[0]
    plain, recomputing = revdist(False).eval(), revdist(True).eval()
    assert torch.equal(recomputing.anomaly_map(batch), plain.anomaly_map(batch)) and not calls
    recomputing.train().loss(batch)
    assert calls  # the counter sees recomputation where there is some


FAULTS = """
import resource, sys
import torch
from utils.cpu import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
block = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.GELU(),
                            torch.nn.Conv2d(16, 16, 3, padding=1))
x = torch.randn(8, 16, 256, 256)  # 33.5 MB activations: over glibc's largest mmap threshold (32 MB)
def step():
    block(x).square().mean().backward()
step()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_keep_freed_memory_reuses_freed_blocks_instead_of_faulting_in_fresh_pages():
    faults = {}
    runs = {mode: subprocess.Popen([sys.executable, "-c", FAULTS, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
            for mode in ("keep", "plain")}  # side by side: page faults are counted per process
    for mode, run in runs.items():
        stdout, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, stderr[-2000:]
        faults[mode] = int(stdout.split()[-1])
    # plain: every large activation of every step comes back as fresh pages that the kernel faults in
    # (measured: about 540,000 faults of 4 KB in 3 steps); kept: the freed blocks are reused (0 to 25,000;
    # 74,000 when malloc keeps its mapped blocks but still trims the top of its heap)
    assert faults["plain"] > 50_000 and faults["keep"] < 0.1 * faults["plain"], faults
