"""One training step's arithmetic, and validation: the loss of a micro-batch, gradient accumulation with
clipping, and the validation loss — everything the loop needs that touches tensors.

    loss = CE(logits, y) (+ z_loss * mean(logsumexp(logits)^2)) (+ router_aux_loss_coef * load-balancing loss)
           per micro-batch, logits in fp32; the balancing loss (nn/moe.py) only for mixture-of-experts models
    step: grad of the mean loss over `grad_accum` micro-batches, then clip; the loss and pre-clip gradient norm
          come back as python floats with one device sync; under data parallelism the loss is the mean over
          ranks (the Runtime reduces it).

Under tensor parallelism the logits are a vocab-sharded DTensor: the loss and its backward run inside the
runtime's `loss_context()` (torch's `loss_parallel()`), the z-loss's logsumexp is written out so that it
reduces (B*T,)-sized partials over the shards instead of gathering the (B*T, V) logits, and the reported loss
is the DTensor's full (replicated) value.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..data.batcher import Batcher
from ..nn.moe import router_aux_loss
from .config import DType, TrainConfig
from .objective import Objective
from .runtime import Runtime
from ..data.tokens import TokenData

__all__ = ["forward_loss", "training_loss", "forward_backward", "autocast_factory", "val_batches", "evaluate"]


def forward_loss(model, x: torch.Tensor, y: torch.Tensor, z_loss: float):
    """(cross-entropy, z-loss term or None) of one micro-batch; x, y (B, T)."""
    logits = model(x)  # (B, T, V)
    flat = logits.float().view(-1, logits.shape[-1])  # (B*T, V)
    ce = F.cross_entropy(flat, y.reshape(-1))
    if not z_loss:
        return ce, None
    return ce, z_loss * _logsumexp(flat).pow(2).mean()


def training_loss(model, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, objective: Optional[Objective] = None):
    """(the loss to differentiate, cross-entropy, router balancing loss or None) of one micro-batch: CE, plus
    the z-loss term, plus router_aux_loss_coef * the balancing loss of this forward's routing (a mixture-of-
    experts model: nn/moe.py; it is returned for the metrics whatever the coefficient). With an `objective`
    (train/objective.py) its value alone, as both the loss and the reported one."""
    if objective is not None:
        value = objective.loss(model, x, y)
        return value, value, None
    ce, zl = forward_loss(model, x, y, cfg.z_loss)
    aux = router_aux_loss(model)
    total = ce if zl is None else ce + zl
    if aux is not None and cfg.router_aux_loss_coef:
        total = total + cfg.router_aux_loss_coef * aux
    return total, ce, aux


def _logsumexp(flat: torch.Tensor) -> torch.Tensor:
    """(N, V) -> (N,); a vocab-sharded DTensor reduces its (N,) max and sum over the shards (no gather)."""
    if not _is_dtensor(flat):
        return torch.logsumexp(flat, dim=-1)
    m = flat.detach().amax(dim=-1, keepdim=True)  # (N, 1), replicated
    return (flat - m).exp().sum(dim=-1).log() + m.squeeze(-1)


def _value(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor of `t`'s value (a DTensor loss is replicated: its full tensor)."""
    return t.full_tensor() if _is_dtensor(t) else t


def _is_dtensor(t: torch.Tensor) -> bool:
    # duck-typed: importing torch.distributed.tensor costs ~1.4 s, which single-process runs need not pay
    return hasattr(t, "full_tensor")


def forward_backward(model, x, y, cfg: TrainConfig, rt: Runtime, autocast,
                     objective: Optional[Objective] = None) -> Tuple[float, float, Optional[float]]:
    """Gradients of the mean loss of batch (x, y) over `grad_accum` micro-batches, then clipping.

    Returns (loss, pre-clip grad norm, router balancing loss or None) as python floats: the only device sync of
    a step. The loss is the cross-entropy (z-loss and balancing terms excluded), or `objective`'s value; it and
    the balancing loss (a mixture-of-experts model without an objective) are averaged over the micro-batches
    and, under data parallelism, the ranks.
    """
    micro = x.shape[0] // cfg.grad_accum
    loss_sum = aux_sum = None
    for i in range(cfg.grad_accum):
        sl = slice(i * micro, (i + 1) * micro)
        sync = contextlib.nullcontext() if i == cfg.grad_accum - 1 else rt.no_sync(model)
        with sync, rt.loss_context():
            with autocast():
                total, ce, aux = training_loss(model, x[sl], y[sl], cfg, objective)
            (total / cfg.grad_accum).backward()
        ce = _value(ce.detach())
        loss_sum = ce if loss_sum is None else loss_sum + ce
        if aux is not None:
            aux_sum = aux.detach() if aux_sum is None else aux_sum + aux.detach()
    grad_norm = rt.clip_grad_norm(model, cfg.clip)
    sums = torch.stack([loss_sum.float()] + ([aux_sum.float()] if aux_sum is not None else []))  # (1,) | (2,)
    means = rt.all_reduce_mean(sums / cfg.grad_accum)  # over the micro-batches and the ranks
    out = torch.cat([means, grad_norm.float().to(means.device).reshape(1)]).tolist()  # the one device sync
    return out[0], out[-1], (out[1] if aux_sum is not None else None)


def autocast_factory(device: torch.device, dtype: DType) -> Callable:
    """A factory of the context the forward passes run under: nothing for fp32, bf16 autocast for bf16."""
    if dtype is DType.FP32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def val_batches(data: TokenData, cfg: TrainConfig, rt: Runtime) -> Optional[List]:
    """This rank's fixed validation batches, or None (with a warning) when the split is shorter than a window."""
    if len(data.val) < cfg.seq_len + 1:
        if len(data.val):
            warnings.warn(f"validation split has {len(data.val)} tokens, fewer than one sequence of "
                          f"{cfg.seq_len + 1}: no validation loss", RuntimeWarning, stacklevel=3)
        return None
    b = Batcher(data.val, batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=cfg.seed, rank=rt.dp_rank,
                world_size=rt.dp_size, name="validation split")
    return b.val_batches(cfg.eval_batches)


@torch.no_grad()
def evaluate(model, batches, autocast, rt: Runtime) -> float:
    """Mean cross-entropy over `batches` (and over the ranks)."""
    device = next(model.parameters()).device
    total = None
    for x, y in batches:
        with autocast(), rt.loss_context():
            ce, _ = forward_loss(model, x.to(device), y.to(device), 0.0)
        ce = _value(ce)
        total = ce if total is None else total + ce
    return float(rt.all_reduce_mean(total / len(batches)))
