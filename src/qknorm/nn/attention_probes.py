"""Observers of an attention layer's q and k, registered with `Attention.add_qk_probe` (a forward hook for the
QK step): each probe owns what it records, and removing its handle stops it. Nothing sets flags on the layer.

    StatsProbe     the layer's last `attention_stats` (max logit, logit bound, q/k RMS, entropy), for
                   `TransformerLM.recording_attention_stats`
    HeadMaxProbe   the running per-head max logit of training forwards (grad enabled), for QK-clip
                   (train/qk_clip.py)
    QKMaxNormProbe the largest q and k norms of the last forward, (2,) fp32, which tensor parallelism combines
                   over the ranks into the whole layer's logit bound (parallel/tensor.py)
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence

import torch

from .attention import Attention, attention_stats, head_max_logits

__all__ = ["StatsProbe", "HeadMaxProbe", "QKMaxNormProbe", "probing"]


class StatsProbe:
    """`stats`: attention_stats of the layer's last forward ({} before one)."""

    def __init__(self) -> None:
        self.stats: Dict[str, torch.Tensor] = {}

    def __call__(self, attn: Attention, q: torch.Tensor, k: torch.Tensor) -> None:
        self.stats = attention_stats(q, k, attn.scale, attn.window, attn.softcap, chunk=attn.chunk)


class HeadMaxProbe:
    """`head_max`: (H,) fp32, the max over the training forwards since the last `take()`, or None."""

    def __init__(self) -> None:
        self.head_max: Optional[torch.Tensor] = None

    def __call__(self, attn: Attention, q: torch.Tensor, k: torch.Tensor) -> None:
        if torch.is_grad_enabled():
            self.head_max = head_max_logits(q, k, attn.scale, attn.window, self.head_max, chunk=attn.chunk)

    def take(self) -> Optional[torch.Tensor]:
        """The maxima so far, and start again."""
        out, self.head_max = self.head_max, None
        return out


class QKMaxNormProbe:
    """`max_norm`: (2,) fp32, the largest norm of a q row and of a k row in the last forward (this rank's heads)."""

    def __init__(self) -> None:
        self.max_norm: Optional[torch.Tensor] = None

    @torch.no_grad()
    def __call__(self, attn: Attention, q: torch.Tensor, k: torch.Tensor) -> None:
        self.max_norm = torch.stack([t.detach().float().norm(dim=-1).amax() for t in (q, k)])  # (2,)


@contextmanager
def probing(attns: Sequence[Attention], probes: Sequence) -> Iterator[List]:
    """Within the block, probes[i] observes attns[i]; the probes are removed on the way out."""
    handles = [a.add_qk_probe(p) for a, p in zip(attns, probes)]
    try:
        yield list(probes)
    finally:
        for h in handles:
            h.remove()
