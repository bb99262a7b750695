"""Causal multi-head attention with optional QK-norm (before RoPE), GQA/MQA, sliding windows and softcapping.

  q = q_proj(x) -> (B, T, H, D)      k = k_proj(x) -> (B, T, Hkv, D)      v = v_proj(x) -> (B, Hkv, T, D)
  q, k = qk_norm_rope(q, k, ...)     RMSNorm per head (scope "head") or over the whole projection width
                                     (scope "full", OLMo 2), then RoPE, in one fused op -> (B, H|Hkv, T, D);
                                     LayerNorm / L2 QK-norm (nn/qk_norm.py) run first, then RoPE alone
  o = softmax(scale * q k^T [softcap] [causal/sliding mask]) v  -> o_proj

With a cache (nn/kv_cache.py), the new tokens' k (after QK-norm and RoPE, at their absolute positions) and v
are appended to the layer's cache and the queries attend over everything it keeps: S >= T keys, the queries
being the last T of them; the mask follows from that (`causal_mask(T, W, n_past=S-T)`).

Two paths compute the same function: SDPA (default; flash/efficient kernels) and eager (explicit scores; needed
for attention softcapping). The QK step is the layer's `qk_path`: the fused op (nn/qk_fused.py), the composed
PyTorch path (nn/qk_path.py), or what `set_qk_path` installs (tensor parallelism: parallel/qk_norm_tp.py).
Observers of q and k (after QK-norm, RoPE and the cache) register with `add_qk_probe`, as forward hooks do, and
are removed through the handle it returns; nothing else sets attributes on the layer from outside. The probes
(nn/attention_probes.py) compute from q and k: `attention_stats` (the exact max attention logit over allowed
(query, key) pairs, the cheap bound scale * max|q| * max|k| that holds for any attention kernel, the RMS of q and
k, the mean entropy of the attention distributions; `model.recording_attention_stats()`) and the per-head max
logit `head_max_logits` (QK-clip: explicit scores, one extra q.k^T per layer in training forwards).
The projections are sigmaReparam linears when the config asks (nn/sigma_reparam.py). With `clip_qkv` c (OLMo 1,
OLMoE) q, k and v are clamped to [-c, c] after the projections; where a QK-norm precedes RoPE, q and k are
clamped after it (OLMoE's order: nn/qk_path.py), so such a layer is composed in PyTorch.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..config import CHUNKED, SLIDING, AttnImpl, ModelConfig, fused_layer, layer_has_rope
from ..config_variants import clip_between
from .kv_cache import LayerKV
from .qk_fused import QKFused, fused_numerics
from .qk_norm import build_qk_norms, qk_logit_scale
from .qk_path import QKComposed
from .sigma_reparam import linear_class


QKProbe = Callable[["Attention", torch.Tensor, torch.Tensor], None]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, *, device=None, dtype=None):
        super().__init__()
        c = config
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim
        self.scale = qk_logit_scale(c)  # query_scale; 1 for the l2 QK-norm (its temperature is in q)
        self.softcap = c.attn_softcap
        layer_type = c.resolved_layer_types()[layer_idx]
        self.window = c.sliding_window if layer_type == SLIDING else None
        self.chunk = c.attention_chunk if layer_type == CHUNKED else None  # Llama 4's chunked attention
        self.eager = c.attn_impl is AttnImpl.EAGER or c.attn_softcap is not None
        self.scope, self.backend = c.qk_norm, c.qk_backend
        kw = dict(bias=c.attention_bias, device=device, dtype=dtype)
        linear = linear_class(c.sigma_reparam)  # nn.Linear, or sigmaReparam's W_hat = gamma / sigma(W) * W
        self.q_proj = linear(c.d_model, c.n_heads * c.head_dim, **kw)
        self.k_proj = linear(c.d_model, c.n_kv_heads * c.head_dim, **kw)
        self.v_proj = linear(c.d_model, c.n_kv_heads * c.head_dim, **kw)
        self.o_proj = linear(c.n_heads * c.head_dim, c.d_model, bias=c.o_proj_bias, device=device, dtype=dtype)
        # rms | layernorm | l2 (weightless, shared or per-head gains), or None where the layer has no QK-norm
        self.q_norm, self.k_norm = build_qk_norms(c, layer_idx, device=device, dtype=dtype)
        # the QK step, q (B, T, H, D), k (B, T, Hkv, D) -> (B, H, T, D), (B, Hkv, T, D): the fused op (RMSNorm
        # before rotate-half RoPE, or RoPE alone; numerics resolved here, once), else composed in PyTorch
        self.qk_path: nn.Module
        if fused_layer(c, layer_idx):
            self.qk_path = QKFused(fused_numerics(self.q_norm, c.qk_norm), c.qk_backend)
        else:
            self.qk_path = QKComposed(
                has_rope=layer_has_rope(c, layer_idx), after_rope=c.qk_norm_after_rope,
                interleaved=c.rope_interleaved,
                temperature=None if c.nope_attn_scale is None else (c.nope_attn_scale, c.nope_floor_scale),
                backend=c.qk_backend, clip=c.clip_qkv if clip_between(c, layer_idx) else None)
        # clip_qkv: v always clamped here; q and k here too unless the QK-norm comes first (then in the QKComposed)
        self.clip_v = c.clip_qkv
        self.clip_qk = None if clip_between(c, layer_idx) else c.clip_qkv
        self._qk_probes: Dict[int, QKProbe] = OrderedDict()  # add_qk_probe's, by handle id

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: Optional[LayerKV] = None) -> torch.Tensor:
        # x (B, T, d); cos/sin (T, D) for the new tokens' positions; cache: this layer's keys/values so far
        B, T, _ = x.shape
        q, k, v = self._project(x)  # (B, T, H, D), (B, T, Hkv, D), (B, Hkv, T, D)
        q, k = self.qk_norm_rope(q, k, cos, sin, 0 if cache is None else cache.seen)  # (B, H|Hkv, T, D)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, Hkv, S, D): kept past keys, then these T
        for probe in self._qk_probes.values():
            probe(self, q, k)
        o = self._attend_eager(q, k, v) if self.eager else self._attend_sdpa(q, k, v)  # (B, H, T, D)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def _project(self, x):
        # x (B, T, d) -> q (B, T, H, D), k (B, T, Hkv, D), v (B, Hkv, T, D), clamped where clip_qkv asks
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.clip_qk is not None:
            q, k = q.clamp(-self.clip_qk, self.clip_qk), k.clamp(-self.clip_qk, self.clip_qk)
        if self.clip_v is not None:
            v = v.clamp(-self.clip_v, self.clip_v)
        return q, k, v.transpose(1, 2)

    def qk_norm_rope(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int = 0):
        """The layer's QK step: q (B, T, H, D), k (B, T, Hkv, D) -> (B, H, T, D), (B, Hkv, T, D); start: the
        absolute position of the first token."""
        return self.qk_path(q, k, cos, sin, self.q_norm, self.k_norm, start)

    def set_qk_path(self, path: nn.Module) -> None:
        """Replace the QK step (tensor parallelism installs its sharded one); `path(q, k, cos, sin, q_norm, k_norm,
        start)` with the shapes of `qk_norm_rope`."""
        self.qk_path = path

    def add_qk_probe(self, probe: "QKProbe") -> RemovableHandle:
        """Call `probe(layer, q, k)` in every forward with the q (B, H, T, D) and k (B, Hkv, S, D) the layer attends
        with; `handle.remove()` stops it. Probes observe: they return nothing the layer uses."""
        handle = RemovableHandle(self._qk_probes)
        self._qk_probes[handle.id] = probe
        return handle

    def qk_probes(self) -> tuple:
        """The probes registered now, in registration order."""
        return tuple(self._qk_probes.values())

    def _attend_sdpa(self, q, k, v):
        gqa = self.n_heads != self.n_kv_heads
        T, S = q.shape[2], k.shape[2]
        if self.window is None and self.chunk is None and S == T:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=gqa)
        if T == 1 < S and self.chunk is None and (self.window is None or S <= self.window):  # sees every key
            return F.scaled_dot_product_attention(q, k, v, scale=self.scale, enable_gqa=gqa)
        mask = causal_mask(T, self.window, q.device, n_past=S - T, chunk=self.chunk)  # (T, S) bool, True = attend
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=gqa)

    def _attend_eager(self, q, k, v):
        groups = self.n_heads // self.n_kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # (B, H, T, D)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.scale  # (B, H, T, S)
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        mask = causal_mask(q.shape[2], self.window, q.device, n_past=k.shape[2] - q.shape[2], chunk=self.chunk)
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(probs, v)

    def extra_repr(self) -> str:
        return (f"qk_norm={self.scope.value}, window={self.window}, chunk={self.chunk}, scale={self.scale:.4g}, "
                f"eager={self.eager}" + (f", clip_qkv={self.clip_v:g}" if self.clip_v is not None else ""))


def causal_mask(T: int, window: Optional[int], device, *, n_past: int = 0,
                chunk: Optional[int] = None) -> torch.Tensor:
    """(T, n_past + T) bool, True where query q may attend key k: k <= q, and q - W < k with a window W, and
    q // C == k // C with a chunk C (Llama 4's chunked attention).

    The T queries are the last T of the n_past + T key positions (n_past > 0: cached decoding)."""
    qpos = torch.arange(n_past, n_past + T, device=device)
    kpos = torch.arange(n_past + T, device=device)
    diff = qpos[:, None] - kpos[None, :]  # q - k
    keep = diff >= 0
    if window is not None:
        keep = keep & (diff < window)
    if chunk is not None:
        keep = keep & (qpos[:, None] // chunk == kpos[None, :] // chunk)
    return keep


@torch.no_grad()
def attention_stats(q: torch.Tensor, k: torch.Tensor, scale: float, window: Optional[int],
                    softcap: Optional[float] = None, *, chunk: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Diagnostics of one attention call (q (B, H, T, D), k (B, Hkv, S, D), after QK-norm and RoPE; S > T when
    the queries are the last T of S cached positions).

    max_logit: exact max over allowed pairs of scale * q.k (before any softcap), from explicit fp32 scores of the
    q/k the layer attends with (under autocast: its bf16 q/k, multiplied in fp32 with autocast off);
    logit_bound: scale * max_t |q_t| * max_s |k_s| (Cauchy-Schwarz), an upper bound any fused kernel can afford;
    entropy: mean over batch, heads and queries of the attention distribution's entropy -sum_s p_s log p_s
    (nats; from the same scores, softcapped as the layer does), ln(n) for uniform attention over n keys and 0
    for one-hot attention: its collapse is Zhai et al. 2023's symptom of unstable training.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):  # else the matmul would run in bf16
        qf, kf = q.float(), k.float()
        groups = q.shape[1] // k.shape[1]
        scores = torch.matmul(qf, kf.repeat_interleave(groups, dim=1).transpose(2, 3)) * scale  # (B, H, T, S)
        mask = causal_mask(q.shape[2], window, q.device, n_past=k.shape[2] - q.shape[2], chunk=chunk)
        max_logit = scores.masked_fill(~mask, float("-inf")).amax()
        bound = scale * qf.norm(dim=-1).amax() * kf.norm(dim=-1).amax()
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        logp = torch.log_softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)  # (B, H, T, S)
        entropy = -(logp.exp() * logp.masked_fill(~mask, 0.0)).sum(-1).mean()  # masked keys: p = 0, no term
    return {
        "max_logit": max_logit,
        "logit_bound": bound,
        "q_rms": qf.pow(2).mean().sqrt(),
        "k_rms": kf.pow(2).mean().sqrt(),
        "entropy": entropy,
    }


@torch.no_grad()
def head_max_logits(q: torch.Tensor, k: torch.Tensor, scale: float, window: Optional[int],
                    running: Optional[torch.Tensor] = None, *, max_elements: int = 1 << 24,
                    chunk: Optional[int] = None) -> torch.Tensor:
    """Per-head exact max of scale * q.k over allowed (query, key) pairs, (H,) fp32, maxed with `running`.

    q (B, H, T, D), k (B, Hkv, S, D) after QK-norm and RoPE (S > T: the queries are the last T of S cached
    positions). Explicit fp32 scores, in blocks of queries so that at most ~`max_elements` scores (64 MiB)
    exist at once: one more q.k^T matmul per layer than the attention itself (SDPA never exposes its scores).
    """
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    qf = q.float().reshape(B, Hkv, H // Hkv, T, D)  # head h = kv * groups + g uses kv head h // groups
    kt = k.float().transpose(2, 3).unsqueeze(2)  # (B, Hkv, 1, D, S)
    mask = causal_mask(T, window, q.device, n_past=S - T, chunk=chunk)  # (T, S)
    block = max(1, min(T, max_elements // max(1, B * H * S)))
    out = torch.full((H,), float("-inf"), device=q.device)
    for t0 in range(0, T, block):
        t1 = min(T, t0 + block)
        s = torch.matmul(qf[:, :, :, t0:t1], kt) * scale  # (B, Hkv, G, t, S)
        s = s.masked_fill(~mask[t0:t1], float("-inf"))
        out = torch.maximum(out, s.amax(dim=(0, 3, 4)).reshape(H))
    return out if running is None else torch.maximum(running, out)
