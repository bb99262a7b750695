"""A training objective other than the next-token cross-entropy: `train(..., objective=Objective(...))`.

    kl = Objective("distill", lambda model, x, y: kl_to_teacher(model(x), x))
    train(config, cfg, data, init_state=student.state_dict(), objective=kl)

`loss(model, x, y)` is the scalar a step minimises on one micro-batch, x and y (B, T) the input and next-token
ids, `model` the module the loop trains (what it calls forward on). Everything else is the loop's, as for
cross-entropy: the schedule, autocast, gradient accumulation, clipping, the non-finite rule (`on_nan`), signals,
checkpoints and the records, whose `loss` is this objective's value. `uniform_ceiling` says whether the value is
a next-token cross-entropy, so that the divergence rule's ceiling ln(vocab) applies to it (metrics.judge_divergence;
a KL has no such ceiling). Retrofit's healing uses it (retrofit/heal.py): the KL to the original's next-token
distributions.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

__all__ = ["Objective"]


@dataclasses.dataclass(frozen=True)
class Objective:
    """A training loss other than cross-entropy (module docstring)."""

    name: str
    loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # (model, x, y) -> scalar
    uniform_ceiling: bool = False  # the value is a next-token cross-entropy (ln(vocab) bounds a healthy run)
