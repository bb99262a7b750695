"""AdamW (or Muon + AdamW) with decay / no-decay parameter groups, and the warmup + cosine learning-rate schedule.

Parameter groups: every parameter is weight-decayed except the ones `TransformerLM.no_decay_param_names()`
lists — norm gains (the QK-norm gains included), biases and embeddings — unless `decay_norms=True` puts
them all in the decayed group. With optimizer="muon", the hidden matrices go to Muon instead and the rest keep
these AdamW groups (train/muon.py says which and how `lr` applies to each). Wortsman et al. 2023 decay
independently of the LR; torch's AdamW multiplies the decay by the LR (`p -= lr * wd * p`), which is what we
use: `weight_decay` here is torch's.

Schedule (`lr_at`), a pure function of the 0-based step index, so a resumed run needs no scheduler state:

    step < warmup:    lr * (step + 1) / warmup                      linear warmup, reaches lr at warmup-1
    step >= warmup:   final + (lr - final) * (1 + cos(pi * t)) / 2,  t = (step - warmup) / (steps - warmup)

so the LR is `lr` right after warmup and approaches `final_lr` at the end of training (t -> 1).
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List

import torch
from torch import nn

from .config import OptimizerName, TrainConfig
from .muon import MUON, MuonWithAdamW, muon_param_names

__all__ = ["lr_at", "param_groups", "build_optimizer", "set_lr"]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of 0-based `step` under `cfg` (lr, final_lr, warmup, steps)."""
    warmup = cfg.warmup
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    span = max(1, cfg.steps - warmup)
    t = min(1.0, (step - warmup) / span)
    return cfg.final_lr + (cfg.lr - cfg.final_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def param_groups(model: nn.Module, *, weight_decay: float, decay_norms: bool = False,
                 exclude: Iterable[str] = ()) -> List[Dict]:
    """Two AdamW groups: `decay` (matrices) and `no_decay` (norm gains, biases, embeddings).

    `model` is a `TransformerLM` (or anything with `no_decay_param_names()`); a wrapped model's prefix
    (`module.`, `_orig_mod.`) is not expected here: pass the unwrapped model. Parameters named in `exclude`
    (another optimizer's) are left out. Empty groups are dropped.
    """
    no_decay = set() if decay_norms else set(model.no_decay_param_names())
    exclude = set(exclude)
    decay_params, no_decay_params = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or name in exclude:
            continue
        (no_decay_params if name in no_decay else decay_params).append(p)
    groups = [
        {"name": "decay", "params": decay_params, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay_params, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """torch AdamW over `param_groups(model)` with the betas/eps of `cfg`, or with optimizer="muon" a
    `MuonWithAdamW` (Muon on `muon_param_names(model)`); the LR is set per step by `set_lr`."""
    kw = dict(lr=lr_at(0, cfg), betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
    if cfg.optimizer is OptimizerName.MUON:
        names = muon_param_names(model)
        by_name = dict(model.named_parameters())
        muon = [{"name": MUON, "params": [by_name[n] for n in names], "weight_decay": cfg.weight_decay}]
        rest = param_groups(model, weight_decay=cfg.weight_decay, decay_norms=cfg.decay_norms, exclude=names)
        return MuonWithAdamW(muon, rest, weight_decay=cfg.weight_decay, ns_dtype=cfg.muon_ns_dtype.value, **kw)
    groups = param_groups(model, weight_decay=cfg.weight_decay, decay_norms=cfg.decay_norms)
    return torch.optim.AdamW(groups, **kw)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
