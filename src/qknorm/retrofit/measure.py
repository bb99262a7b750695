"""How far a retrofitted model is from the original, on held-out tokens.

    next_token_kl(original, model, batches)   mean over every position of KL(P_orig(next) || P_model(next)),
                                              in nats per token: what the model lost of the original's
                                              predictions (0 = the same next-token distributions)
    val_loss(model, batches)                  mean cross-entropy of the true next token, nats per token

Both run in fp32 without gradients over the same fixed batches, so differences between models are paired. The
original's logits on those batches can be computed once (`cache_logits`) when they fit in memory.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..model import TransformerLM

__all__ = ["next_token_kl", "val_loss", "kl_per_token", "cache_logits"]


def kl_per_token(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) per position: (..., V) -> (...), in fp32."""
    t = F.log_softmax(teacher_logits.float(), dim=-1)
    s = F.log_softmax(student_logits.float(), dim=-1)
    return (t.exp() * (t - s)).sum(-1)


@torch.no_grad()
def next_token_kl(original: TransformerLM, model: TransformerLM,
                  batches: Sequence[Tuple[torch.Tensor, torch.Tensor]],
                  original_logits: Optional[List[torch.Tensor]] = None) -> float:
    """`original_logits`: the original's logits on `batches` when already computed (`cache_logits`)."""
    dev = next(model.parameters()).device
    total, n = 0.0, 0
    for i, (x, _) in enumerate(batches):
        x = x.to(dev)
        target = original(x) if original_logits is None else original_logits[i]
        kl = kl_per_token(target, model(x))  # (B, T)
        total += float(kl.sum())
        n += kl.numel()
    return total / n


@torch.no_grad()
def cache_logits(model: TransformerLM, batches: Sequence[Tuple[torch.Tensor, torch.Tensor]], *,
                 max_bytes: int = 1 << 28) -> Optional[List[torch.Tensor]]:
    """The model's logits on `batches`, kept when they fit in `max_bytes` (fp32), else None (recompute them)."""
    tokens = sum(int(x.numel()) for x, _ in batches)
    if tokens * model.config.vocab_size * 4 > max_bytes:
        return None
    dev = next(model.parameters()).device
    return [model(x.to(dev)).float() for x, _ in batches]


@torch.no_grad()
def val_loss(model: TransformerLM, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]]) -> float:
    dev = next(model.parameters()).device
    total, n = 0.0, 0
    for x, y in batches:
        logits = model(x.to(dev)).float()  # (B, T, V)
        total += float(F.cross_entropy(logits.flatten(0, 1), y.to(dev).flatten(), reduction="sum"))
        n += y.numel()
    return total / n
