"""The one optimiser builder every model's configure_optimizers uses.

Adam or AdamW (`optimizer`) with `lr`, `betas`, `weight_decay`, `adam_eps`, `amsgrad`, over the model's
parameter groups (a group's own "lr" wins), and, when `lr_drop_at` > 0, a MultiStepLR that multiplies
the learning rates by `lr_drop_gamma` at int(lr_drop_at * total_iters), stepped once per iteration.
Every model honours all of these options (their defaults in each script are its method's reference
settings, set by the presets), so none is silently ignored.
"""
from types import SimpleNamespace

import torch

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
OPTIMIZER_OPTIONS = ("optimizer", "lr", "betas", "weight_decay", "adam_eps", "amsgrad", "lr_drop_at", "lr_drop_gamma")


def build_optimizer(param_groups, cfg, total_iters):
    """(optimizer, scheduler or None) over param_groups from cfg's OPTIMIZER_OPTIONS."""
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    optimizer = OPTIMIZERS[cfg.optimizer](param_groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps,
                                          weight_decay=cfg.weight_decay, amsgrad=bool(cfg.amsgrad))
    if not cfg.lr_drop_at:
        return optimizer, None
    milestone = max(1, int(cfg.lr_drop_at * total_iters))  # a milestone 0 would drop before the first step
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, [milestone], gamma=cfg.lr_drop_gamma)


def optimizer_settings(lr, weight_decay, optimizer="adamw", betas=(0.9, 0.999), adam_eps=1e-8, amsgrad=True,
                       lr_drop_at=0.0, lr_drop_gamma=0.2):
    """The OPTIMIZER_OPTIONS as a namespace, for code that builds a model's optimiser without a script's
    configuration (tests, benchmarks); the defaults are NoCo's AdamW with amsgrad and no schedule."""
    return SimpleNamespace(optimizer=optimizer, lr=lr, betas=betas, weight_decay=weight_decay, adam_eps=adam_eps,
                           amsgrad=amsgrad, lr_drop_at=lr_drop_at, lr_drop_gamma=lr_drop_gamma)
