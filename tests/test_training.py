"""fit(), the one training loop of every model and head, against a hand-computed run (SGD with momentum and
weight decay, gradient-norm clipping, the warm-up cosine schedule, a resumed start, the snapshot hook), and
the one optimiser builder's schedules and SGD."""
import copy
import math

import pytest
import torch
import torch.nn as nn

from utils.optim import build_optimizer, optimizer_settings, warmup_cosine_lr
from utils.training import fit

LR, FINAL_LR, MOMENTUM, WEIGHT_DECAY, CLIP = 0.2, 0.02, 0.9, 0.01, 4.0
TOTAL, WARMUP = 12, 3
SGD = optimizer_settings(lr=LR, weight_decay=WEIGHT_DECAY, optimizer="sgd", momentum=MOMENTUM,
                         lr_schedule="warmup_cosine", warmup_iters=WARMUP, final_lr=FINAL_LR)


def fit_losses(model, batches, optimizer, scheduler, total_iters, **options):
    """fit() over `batches` (any iterable), returning the loss of every step it ran (for the model tests)."""
    losses = []

    def loss_of(batch):
        loss = model.loss(batch)
        losses.append(loss.item())
        return loss

    fit(model, iter(batches), optimizer, scheduler, total_iters, loss_of=loss_of, show=False, **options)
    return losses


class Regression(nn.Module):
    """y ~ w.x + b in float64, loss mean((w.x + b - y)^2): a gradient simple enough to write by hand."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1).double()
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[0.5, -1.0, 2.0]]))
            self.linear.bias.fill_(0.3)

    def loss(self, batch):
        return (self.linear(batch["x"]).squeeze(1) - batch["y"]).square().mean()


def regression_batches(n):
    generator = torch.Generator().manual_seed(0)
    return [{"x": torch.randn(4, 3, generator=generator, dtype=torch.float64),
             "y": 3 * torch.randn(4, generator=generator, dtype=torch.float64)} for _ in range(n)]


def by_hand(batches, total_iters):
    """torch.optim.SGD (weight decay added to the gradient, momentum buffer = gradient at the first step,
    then momentum * buffer + gradient) after torch.nn.utils.clip_grad_norm_ (every gradient scaled by
    CLIP / (total norm + 1e-6) when that is below 1), at lr warmup_cosine_lr(it) at step it.
    Returns the parameters after each step and the steps whose gradient was clipped."""
    model = Regression()
    w, b = model.linear.weight.detach().clone()[0], model.linear.bias.detach().clone()
    buffers, after, clipped = None, [], []
    for it, batch in enumerate(batches[:total_iters]):
        residual = batch["x"] @ w + b - batch["y"]
        grads = [2 * residual @ batch["x"] / len(residual), 2 * residual.mean(0, keepdim=True)]
        norm = math.sqrt(sum(g.square().sum().item() for g in grads))
        if CLIP / (norm + 1e-6) < 1:
            grads = [g * (CLIP / (norm + 1e-6)) for g in grads]
            clipped.append(it)
        grads = [g + WEIGHT_DECAY * p for g, p in zip(grads, (w, b))]
        buffers = grads if buffers is None else [MOMENTUM * m + g for m, g in zip(buffers, grads)]
        lr = warmup_cosine_lr(it, LR, FINAL_LR, total_iters, WARMUP)
        w, b = w - lr * buffers[0], b - lr * buffers[1]
        after.append(torch.cat([w, b]))
    return after, clipped


def parameters(model):
    return torch.cat([model.linear.weight.detach()[0], model.linear.bias.detach()])


def test_fit_is_sgd_with_clipping_and_the_schedule_step_by_step():
    batches = regression_batches(TOTAL)
    expected, clipped = by_hand(batches, TOTAL)
    assert 0 < len(clipped) < TOTAL - 1  # some steps clipped, some not (step 0 runs at lr 0)
    model = Regression().eval()  # fit puts it in training mode
    optimizer, scheduler = build_optimizer(model.parameters(), SGD, TOTAL)
    seen, rates, modes = [], [], []

    def after_step(done):
        seen.append(done)
        torch.testing.assert_close(parameters(model), expected[done - 1], rtol=1e-12, atol=1e-12)

    def loss_of(batch):
        rates.append(optimizer.param_groups[0]["lr"])
        modes.append(model.training)
        return model.loss(batch)

    returned = fit(model, iter(batches), optimizer, scheduler, TOTAL, loss_of=loss_of, grad_clip=CLIP,
                   after_step=after_step, show=False)
    assert seen == list(range(1, TOTAL + 1))
    assert rates == [warmup_cosine_lr(it, LR, FINAL_LR, TOTAL, WARMUP) for it in range(TOTAL)]
    assert rates[0] == 0.0 and rates[WARMUP - 1] == LR
    assert all(modes) and returned is model and not model.training  # trains in train mode, returns in eval


def test_fit_resumed_at_start_runs_only_the_remaining_steps_and_ends_where_an_uninterrupted_run_does():
    start = 5
    batches = regression_batches(TOTAL)
    expected, _ = by_hand(batches, TOTAL)
    model = Regression()
    optimizer, scheduler = build_optimizer(model.parameters(), SGD, TOTAL)
    snapshots = {}

    def keep(done):  # what Trainer's training_snapshot keeps
        snapshots[done] = copy.deepcopy((model.state_dict(), optimizer.state_dict(), scheduler.state_dict()))

    fit(model, iter(batches), optimizer, scheduler, TOTAL, grad_clip=CLIP, after_step=keep, show=False)
    resumed = Regression()
    optimizer, scheduler = build_optimizer(resumed.parameters(), SGD, TOTAL)
    for target, state in zip((resumed, optimizer, scheduler), snapshots[start]):
        target.load_state_dict(state)
    remaining = iter(batches[start:] + ["never drawn"])  # the stream a resumed run gets starts at batch `start`
    seen = []
    fit(resumed, remaining, optimizer, scheduler, TOTAL, start=start, grad_clip=CLIP, after_step=seen.append,
        show=False)
    assert seen == list(range(start + 1, TOTAL + 1))
    assert next(remaining) == "never drawn"  # exactly TOTAL - start batches drawn
    torch.testing.assert_close(parameters(resumed), expected[-1], rtol=1e-12, atol=1e-12)
    assert optimizer.param_groups[0]["lr"] == FINAL_LR  # the schedule went on from its saved step


def test_fit_without_clipping_follows_the_plain_gradient():
    batches = regression_batches(4)
    model = Regression()
    optimizer, _ = build_optimizer(model.parameters(), optimizer_settings(lr=0.1, weight_decay=0.0,
                                                                          optimizer="sgd"), 4)
    fit(model, iter(batches), optimizer, None, 1, show=False)
    reference = Regression()
    reference.loss(batches[0]).backward()
    torch.testing.assert_close(parameters(model), parameters(reference) - 0.1 * torch.cat(
        [reference.linear.weight.grad[0], reference.linear.bias.grad]))


def test_warmup_cosine_ends_every_group_at_its_own_rate_times_final_lr_over_lr():
    """ReContrast's encoder group (lr 1e-5 beside 2e-3) ends at 1e-5 x 2e-4 / 2e-3 = 1e-6, not at 2e-4."""
    main, encoder = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    settings = optimizer_settings(lr=2e-3, weight_decay=0.0, lr_schedule="warmup_cosine", warmup_iters=4,
                                  final_lr=2e-4)
    optimizer, scheduler = build_optimizer([{"params": [main]}, {"params": [encoder], "lr": 1e-5}], settings, 20)
    rates = []
    for _ in range(22):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    for it, (main_lr, encoder_lr) in enumerate(rates):
        assert main_lr == warmup_cosine_lr(it, 2e-3, 2e-4, 20, 4)  # the main group exactly as before
        assert encoder_lr == pytest.approx(warmup_cosine_lr(it, 1e-5, 1e-6, 20, 4), rel=1e-12, abs=0)
    assert max(encoder for _, encoder in rates) == pytest.approx(1e-5) and rates[-1][1] == pytest.approx(1e-6)


def test_sgd_is_an_optimiser_of_the_one_builder():
    parameter = nn.Parameter(torch.zeros(2))
    optimizer, scheduler = build_optimizer([parameter], optimizer_settings(lr=5e-2, weight_decay=1e-4,
                                                                           optimizer="sgd", momentum=0.9), 100)
    assert type(optimizer) is torch.optim.SGD and scheduler is None
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["dampening"], group["nesterov"]) == (
        5e-2, 0.9, 1e-4, 0, False)
    with pytest.raises(ValueError, match="optimizer must be one of adam, adamw, stable_adamw, sgd, got 'lamb'"):
        build_optimizer([parameter], optimizer_settings(lr=0.1, weight_decay=0.0, optimizer="lamb"), 10)
