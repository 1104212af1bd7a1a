"""The one optimiser builder every model's and alignment head's configure_optimizers uses.

`optimizer`: Adam, AdamW or StableAdamW (Dinomaly's: AdamW with update clipping, below) with `lr`, `betas`,
`weight_decay`, `adam_eps`, `amsgrad`, or SGD (the CADA heads') with `lr`, `momentum`, `weight_decay`, over the
model's parameter groups (a group's own "lr" wins), and a schedule stepped once per iteration (`lr_schedule`):
  step           when `lr_drop_at` > 0, a MultiStepLR that multiplies the learning rates by `lr_drop_gamma` at
                 int(lr_drop_at * total_iters); no schedule otherwise.
  warmup_cosine  Dinomaly's WarmCosineScheduler (utils.py of github guojiajeremy/Dinomaly): the lr rises
                 linearly from 0 over `warmup_iters`, then falls along a cosine to `final_lr` at total_iters;
                 a group with its own lr follows the same curve scaled by its lr / `lr` (ReContrast's encoder
                 group ends at encoder_lr x final_lr / lr); `lr_drop_at` must be 0.
Every model honours all of these options (their defaults in each script are its method's reference
settings, set by the presets), so none is silently ignored; `warmup_iters` and `final_lr` are read by
warmup_cosine only, as `lr_drop_gamma` is by a step drop only and `momentum` by SGD only (the scripts offer
SGD to the alignment heads alone: --cada_lr, --cada_momentum, --cada_weight_decay).
"""
import math
from types import SimpleNamespace

import torch


def warmup_cosine_lr(it, base, final, total_iters, warmup_iters):
    """Dinomaly's utils.py: WarmCosineScheduler's learning rate at iteration `it` (0-based): np.linspace(0, base,
    warmup_iters)[it] during the warm-up, then final + (base - final) * (1 + cos(pi * i / n)) / 2 with
    i = it - warmup_iters and n = total_iters - warmup_iters, and `final` from total_iters on."""
    if it >= total_iters:
        return final
    if it < warmup_iters:
        return base / (warmup_iters - 1) * it if warmup_iters > 1 else 0.0
    return final + 0.5 * (base - final) * (1 + math.cos(math.pi * (it - warmup_iters) / (total_iters - warmup_iters)))


class WarmupCosineLR(torch.optim.lr_scheduler.LRScheduler):
    """warmup_cosine_lr from the optimiser's lr (optimizer.defaults["lr"], the base value) to final_lr; a group
    with its own initial lr follows that curve times its lr / the optimiser's, so it ends at its lr x final_lr /
    lr (the one official group is unchanged: its factor is exactly 1). Stepped once per iteration after
    optimizer.step() (the official loop's order: iteration 0 runs at lr 0)."""

    def __init__(self, optimizer, final_lr, total_iters, warmup_iters, last_epoch=-1):
        self.main_lr = optimizer.defaults["lr"]
        if not self.main_lr > 0:
            raise ValueError(f"warmup_cosine needs an optimiser lr above 0, got {self.main_lr}")
        self.final_lr, self.total_iters, self.warmup_iters = final_lr, total_iters, warmup_iters
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        main = warmup_cosine_lr(self.last_epoch, self.main_lr, self.final_lr, self.total_iters, self.warmup_iters)
        return [main * (base / self.main_lr) for base in self.base_lrs]


class StableAdamW(torch.optim.Optimizer):
    """Dinomaly's official optimizers/StableAdamW.py (AdamW with AdaFactor-style update clipping, after Wortsman
    et al. 2023, as that file implements it), per parameter tensor with a gradient:
        p <- p * (1 - lr * weight_decay)                                   (decoupled decay, first)
        m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  v_max <- max(v_max, v) with amsgrad
        denom = sqrt(v_max or v) / sqrt(1 - b2^t) + eps
        s = max(1, RMS(g / denom) / clip_threshold)       RMS(x) = ||x||_2 / sqrt(numel(x))
        p <- p - lr / (1 - b1^t) / s * m / denom
    Note the clipped ratio is g / denom (the official code's), not Wortsman et al.'s g^2 / v."""

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-10, weight_decay=1e-4, amsgrad=True,
                 clip_threshold=1.0):  # Dinomaly's settings (its preset in train_mvtec.py)
        if lr < 0 or eps < 0 or weight_decay < 0 or clip_threshold <= 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid StableAdamW settings: lr {lr}, betas {betas}, eps {eps}, "
                             f"weight_decay {weight_decay}, clip_threshold {clip_threshold}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, clip_threshold=clip_threshold))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("StableAdamW does not support sparse gradients")
                grad = p.grad
                p.mul_(1 - group["lr"] * group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                second = exp_avg_sq
                if group["amsgrad"]:
                    torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
                    second = state["max_exp_avg_sq"]
                denom = (second.sqrt() / math.sqrt(1 - beta2 ** state["step"])).add_(group["eps"])
                ratio_rms = (grad / denom).norm(2) / math.sqrt(grad.numel())
                clip = torch.clamp(ratio_rms / group["clip_threshold"], min=1.0)
                step_size = group["lr"] / (1 - beta1 ** state["step"]) / clip
                p.sub_(exp_avg / denom * step_size)
        return loss


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "stable_adamw": StableAdamW,
              "sgd": torch.optim.SGD}
SCHEDULES = ("step", "warmup_cosine")


def _settings(cfg):
    """The constructor's keyword arguments: SGD's momentum, the Adam family's betas, eps and amsgrad."""
    if cfg.optimizer == "sgd":
        return dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
                amsgrad=bool(cfg.amsgrad))


def build_optimizer(param_groups, cfg, total_iters):
    """(optimizer, scheduler or None) over param_groups from cfg's optimiser options (the module docstring;
    optimizer_settings lists them; a namespace without lr_schedule, as older callers build, means "step")."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    schedule = getattr(cfg, "lr_schedule", "step")
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if schedule == "warmup_cosine" and cfg.lr_drop_at:
        raise ValueError(f"lr_schedule warmup_cosine replaces the step drop: lr_drop_at must be 0, "
                         f"got {cfg.lr_drop_at}")
    optimizer = OPTIMIZERS[cfg.optimizer](param_groups, **_settings(cfg))
    if schedule == "warmup_cosine":
        return optimizer, WarmupCosineLR(optimizer, cfg.final_lr, total_iters, cfg.warmup_iters)
    if not cfg.lr_drop_at:
        return optimizer, None
    milestone = max(1, int(cfg.lr_drop_at * total_iters))  # a milestone 0 would drop before the first step
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, [milestone], gamma=cfg.lr_drop_gamma)


def optimizer_settings(lr, weight_decay, optimizer="adamw", betas=(0.9, 0.999), adam_eps=1e-8, amsgrad=True,
                       momentum=0.0, lr_drop_at=0.0, lr_drop_gamma=0.2, lr_schedule="step", warmup_iters=100,
                       final_lr=2e-4):
    """build_optimizer's options as a namespace, for code that builds an optimiser without a script's
    configuration (the CADA heads, tests, benchmarks); the defaults are NoCo's AdamW with amsgrad and no
    schedule. `momentum` is SGD's; betas, adam_eps and amsgrad the Adam family's."""
    return SimpleNamespace(optimizer=optimizer, lr=lr, betas=betas, weight_decay=weight_decay, adam_eps=adam_eps,
                           amsgrad=amsgrad, momentum=momentum, lr_drop_at=lr_drop_at, lr_drop_gamma=lr_drop_gamma,
                           lr_schedule=lr_schedule, warmup_iters=warmup_iters, final_lr=final_lr)
