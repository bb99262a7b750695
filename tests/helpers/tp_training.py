"""Shared by the tensor-parallel tests: a plain training loop (the same code runs in one process and on every
rank), the batches, and the comparison of a parallel run with the one-process run.

The loop: AdamW (lr 1e-2, weight decay 0.1), cross-entropy on next-token targets, global gradient norm clipped
to CLIP (small enough that it clips on most steps, so a wrong norm changes the weights), STEPS steps on the
same global batch of B x T tokens. On a (dp, tp) mesh each data-parallel group takes its own rows of the batch
and the reported loss is the mean over the data-parallel groups, which is the global mean (equal rows each).
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

STEPS, B, T, LR, CLIP = 5, 4, 32, 1e-2, 0.5
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5


def batches(vocab: int, steps: int = STEPS) -> List[torch.Tensor]:
    """(B, T+1) token windows of a learnable process: x[t+1] = perm[x[t]], with a random token 1 time in 8."""
    g = torch.Generator().manual_seed(1234)
    perm = torch.randperm(vocab, generator=g)
    out = []
    for _ in range(steps):
        ids = torch.empty(B, T + 1, dtype=torch.long)
        ids[:, 0] = torch.randint(0, vocab, (B,), generator=g)
        noise = torch.randint(0, vocab, (B, T + 1), generator=g)
        jump = torch.rand(B, T + 1, generator=g) < 0.125
        for t in range(T):
            ids[:, t + 1] = torch.where(jump[:, t + 1], noise[:, t + 1], perm[ids[:, t]])
        out.append(ids)
    return out


def _full(t):
    return t.full_tensor() if isinstance(t, DTensor) else t


def train_steps(model, data, *, rows=slice(None), loss_parallel=False, dp_group=None) -> Dict:
    """The loop of the module docstring; returns per-step losses and gradient norms and the full weights."""
    from torch.distributed.tensor.parallel import loss_parallel as loss_parallel_ctx
    import contextlib

    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1)
    losses, norms = [], []
    for ids in data:
        x, y = ids[rows, :-1], ids[rows, 1:]  # (b, T) each
        with loss_parallel_ctx() if loss_parallel else contextlib.nullcontext():
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            loss.backward()
        norm = _full(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP))
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = _full(loss).detach().clone()
        if dp_group is not None:
            torch.distributed.all_reduce(loss, group=dp_group)
            loss /= torch.distributed.get_world_size(dp_group)
        losses.append(loss.item())
        norms.append(norm.item())
    weights = {n: _full(p).detach().clone() for n, p in model.named_parameters()}
    return {"loss": losses, "grad_norm": norms, "weights": weights}


def mismatches(ref: Dict, got: Dict, *, weight_atol: float = WEIGHT_ATOL, norm_rtol: float = LOSS_RTOL) -> List[str]:
    """What differs beyond tolerance between a parallel run and the one-process run (empty when they match)."""
    bad = []
    for key, rtol in (("loss", LOSS_RTOL), ("grad_norm", norm_rtol)):
        a, b = np.array(got[key]), np.array(ref[key])
        rel = np.abs(a - b) / np.abs(b)
        if not (rel <= rtol).all():
            step = int(np.argmax(rel > rtol))
            bad.append(f"{key} step {step}: {a[step]:.8g} vs {b[step]:.8g} (rel {rel[step]:.2g})")
    if got["weights"].keys() != ref["weights"].keys():
        bad.append(f"parameter names differ: {sorted(set(got['weights']) ^ set(ref['weights']))}")
        return bad
    for name, want in ref["weights"].items():
        err = (got["weights"][name] - want).abs().max().item()
        if got["weights"][name].shape != want.shape or not err <= weight_atol:
            bad.append(f"weight {name}: max |diff| {err:.3g}")
    return bad


def build(preset, **overrides):
    """The debug model of `preset`, initialized from seed 0 (float32)."""
    import qknorm

    torch.manual_seed(0)
    return qknorm.TransformerLM(qknorm.get_config(preset, "debug", **overrides))


_SINGLE: Dict = {}


def single(preset, dtype=torch.float64):
    """(initial state, one-process run of train_steps) per preset and dtype, computed once per test session."""
    if (preset, dtype) not in _SINGLE:
        model = build(preset).to(dtype)
        init = {k: v.clone() for k, v in model.state_dict().items()}
        _SINGLE[preset, dtype] = init, train_steps(model, batches(model.config.vocab_size))
    return _SINGLE[preset, dtype]
