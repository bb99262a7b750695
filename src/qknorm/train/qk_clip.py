"""QK-clip (the "Clip" of MuonClip, Kimi K2 report, arXiv 2507.20534): cap the attention logits by rescaling
the weights that produce them, right after each optimizer step.

    m_h   = max attention logit of query head h in this step's training forward (scale * q.k before any
            softcap, as metrics' max_attn_logit; all micro-batches; the max over the ranks of a data-parallel
            run, so every replica applies the same factors)
    f_h   = min(1, tau / m_h)                  heads at or below tau are left alone
    W_q[h rows] *= sqrt(f_h),  W_k[rows of h's kv head] *= sqrt(f_h)   (biases of those rows too)

so the logits of head h on that step's inputs become at most tau (m_h * f_h), split evenly between q and k as
Kimi K2 does. The next step's logits differ by what one update changes; `tests/train/test_qk_clip.py` measures
how near tau they stay.

GQA: a kv head serves several query heads; it gets the factor of the largest logit among them,
f_kv = min over its query heads of f_h, and each query head keeps its own sqrt(f_h). The head with the largest
logit lands exactly on tau; its siblings are scaled by sqrt(f_h * f_kv) <= f_h, a little more than they needed.
We chose that over giving each query head f_h / sqrt(f_kv) (exact per head): that would scale up the q weights
of heads that never exceeded tau, and QK-clip should only ever shrink weights.

With QK-norm, scaling W_q / W_k does nothing: RMSNorm, LayerNorm and L2 normalization are scale-invariant, so
the norm would undo the whole clip (not only part of it). The clip then scales what sets the logit scale after
the norm, by the same rule: the q and k gains (scale = offset + w) by sqrt(f) — per head for scope "full"
(each head owns a slice of the gains), and for scope "head", whose one gain vector is shared by all heads,
by the factor of the layer's largest logit (every head of that layer scaled alike) — or, for the l2 type, the
head's temperature t_h by f_h (the temperature multiplies the logit directly). sigmaReparam is refused: its
W_hat = gamma / sigma(W) * W renormalizes any row scaling of W, so no weight change would be the clip.

Cost: per-head max logits need the scores, which SDPA never exposes, so each attention layer computes them
once more in the training forward (nn/attention.py head_max_logits: one q.k^T in fp32 blocks of <= 64 MiB
under no_grad: half of attention's matmul FLOPs, forward only) plus one (L, H) max over the ranks and one
device sync per step. Measured on 2 CPU cores: +4-5% step time (bench/results/stabilizers_cpu_2026-11-30.md).
The cheap Cauchy-Schwarz bound scale * max|q_h| * max|k| would avoid the matmul but clips by a bound, i.e.
more than needed.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Optional

import torch
from torch import nn

from ..config import QKNormScope
from ..errors import ConfigError
from ..nn.attention import Attention
from ..nn.attention_probes import HeadMaxProbe
from ..nn.norm import RMSNorm
from ..nn.qk_norm import QKL2Norm, QKLayerNorm
from ..nn.sigma_reparam import SigmaReparamLinear
from .muon import DTensor
from .runtime import Runtime

__all__ = ["QKClip", "ClipStep", "clip_attention"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClipStep:
    """What QK-clip saw in one step; the training loop writes these fields into its StepRecord (same names)."""

    qk_clip_max_logit: float  # the largest per-head max logit (over the ranks)
    qk_clip_heads: int  # heads above tau (clipped when the update was applied)


class QKClip:
    """Tracks every attention layer's per-head max logit in training forwards and clips after each step."""

    def __init__(self, model: nn.Module, tau: float, runtime: Runtime):
        self.tau, self.rt = float(tau), runtime
        self.attns: List[Attention] = [m for m in model.modules() if isinstance(m, Attention)]
        for a in self.attns:
            if isinstance(a.q_proj, SigmaReparamLinear):
                raise ConfigError(f"qk_clip={tau:g} cannot act on sigma_reparam=True projections (W_hat = gamma / "
                                  "sigma(W) * W undoes any row scaling of W); use one of the two")
            if any(isinstance(p, DTensor) for p in a.parameters()):
                raise ConfigError(f"qk_clip={tau:g} needs whole q/k weights on every rank: it does not run on FSDP- "
                                  "or tensor-parallel-sharded parameters; use parallel='ddp'")
        self.probes = [HeadMaxProbe() for _ in self.attns]  # each layer's running max, owned here
        self.handles = [a.add_qk_probe(p) for a, p in zip(self.attns, self.probes)]

    def after_step(self, applied: bool) -> Optional[ClipStep]:
        """Clip with this step's maxima (when the update was `applied`), reset them; what the step saw (None when no
        training forward ran since the last step)."""
        maxima = [p.take() for p in self.probes]
        if any(m is None for m in maxima):
            return None
        m = self.rt.all_reduce_max(torch.nan_to_num(torch.stack(maxima), nan=math.inf))  # (L, H)
        if applied:
            finite = torch.isfinite(m)
            f = torch.where(finite, (self.tau / m.clamp_min(self.tau)), torch.ones_like(m))  # (L, H), <= 1
            for a, f_layer in zip(self.attns, f):
                clip_attention(a, f_layer)
        top, n = torch.stack([m.max(), (m > self.tau).sum().float()]).tolist()  # one sync
        return ClipStep(qk_clip_max_logit=top, qk_clip_heads=int(n))


@torch.no_grad()
def clip_attention(attn: Attention, f: torch.Tensor) -> None:
    """Scale `attn`'s logits of head h by (at most) f[h] <= 1 (module docstring); f (H,) fp32."""
    H, Hkv, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    f_kv = f.view(Hkv, H // Hkv).amin(dim=1)  # (Hkv,): the factor of each kv head's largest logit
    qn, kn = attn.q_norm, attn.k_norm
    if qn is None:  # no QK-norm: the projection rows
        _scale_rows(attn.q_proj, f.sqrt(), D)
        _scale_rows(attn.k_proj, f_kv.sqrt(), D)
    elif isinstance(qn, QKL2Norm):
        qn.temperature.mul_(f.to(qn.temperature.dtype))
    elif attn.scope is QKNormScope.FULL:  # per-head slices of the gains
        _scale_gain(qn, f.sqrt(), D)
        _scale_gain(kn, f_kv.sqrt(), D)
    else:  # scope head: one gain vector shared by every head of the layer
        s = f.min().sqrt().reshape(1)
        _scale_gain(qn, s, D)
        _scale_gain(kn, s, D)


def _scale_rows(linear: nn.Linear, s: torch.Tensor, D: int) -> None:
    """Rows [h*D, (h+1)*D) of the weight (and bias) times s[h]."""
    w = linear.weight
    w.view(s.numel(), D, -1).mul_(s.to(w.dtype)[:, None, None])  # (heads, D, d_in)
    if linear.bias is not None:
        linear.bias.view(s.numel(), D).mul_(s.to(w.dtype)[:, None])


def _scale_gain(norm: nn.Module, s: torch.Tensor, D: int) -> None:
    """The effective gain (offset + w) of an RMSNorm / QKLayerNorm times s per head slice (s of size 1: all)."""
    assert isinstance(norm, (RMSNorm, QKLayerNorm))
    w = norm.weight
    g = w.float().view(-1, D) + norm.offset  # (heads or 1, D)
    w.copy_((g * s.view(-1, 1) - norm.offset).view(-1).to(w.dtype))
