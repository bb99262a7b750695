"""The QK-norm share of an attention sub-layer: q, k, v, o projections + causal SDPA, forward + backward.

Four versions of one module, same projections (the benchmark checks their parameter counts agree):
  none       eager RoPE, no QK-norm          eager      HF-style QK-norm (Qwen3) + eager RoPE
  ours       fused QK-norm + RoPE (Triton)   ours_rope  the same fused kernel doing RoPE only
`ours` vs `ours_rope` is QK-norm's own cost on the fused path; `eager` vs `none` what HF-style QK-norm costs.
Shapes are explicit (B, T, d, H, Hkv, D): no model config is involved.
"""
from __future__ import annotations

import traceback

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.rope import rope_tables
from .equal_models import UnequalModelsError
from .kernel_contenders import EPS, THETA, rotate_half, eager
from .timing import Timer

KINDS = ("none", "eager", "ours", "ours_rope")


class Attn(nn.Module):
    def __init__(self, d, H, Hkv, D, qk):
        super().__init__()
        self.H, self.Hkv, self.D, self.qk = H, Hkv, D, qk
        self.wq, self.wk = nn.Linear(d, H * D, bias=False), nn.Linear(d, Hkv * D, bias=False)
        self.wv, self.wo = nn.Linear(d, Hkv * D, bias=False), nn.Linear(H * D, d, bias=False)
        self.qw, self.kw = nn.Parameter(torch.ones(D)), nn.Parameter(torch.ones(D))

    def projection_params(self) -> int:
        return sum(m.weight.numel() for m in (self.wq, self.wk, self.wv, self.wo))

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.H, self.D)  # (B, T, H, D)
        k = self.wk(x).view(B, T, self.Hkv, self.D)  # (B, T, Hkv, D)
        v = self.wv(x).view(B, T, self.Hkv, self.D).transpose(1, 2)  # (B, Hkv, T, D)
        if self.qk in ("ours", "ours_rope"):
            from ..ops import qk_norm_rope

            w = (self.qw, self.kw) if self.qk == "ours" else (None, None)
            q, k = qk_norm_rope(q, k, *w, cos, sin, eps=EPS, norm_cast="input")  # (B, H, T, D), (B, Hkv, T, D)
        elif self.qk == "eager":
            q, k = eager(q, k, self.qw, self.kw, cos.to(x.dtype)[None], sin.to(x.dtype)[None], "head")
        else:
            c, s = cos.to(x.dtype)[None, None], sin.to(x.dtype)[None, None]  # (1, 1, T, D)
            q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, D), (B, Hkv, T, D)
            q, k = q * c + rotate_half(q) * s, k * c + rotate_half(k) * s
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # (B, H, T, D)
        return self.wo(o.transpose(1, 2).reshape(B, T, -1))


def bench_layer(shape, device: str, timer: Timer) -> dict:
    B, T, d, H, Hkv, D = shape
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    cos, sin = rope_tables(T, D, theta=THETA, device=device)  # (T, D) fp32
    x = torch.randn(B, T, d, device=device, dtype=dt, requires_grad=True)
    g = torch.randn(B, T, d, device=device, dtype=dt)
    row = {"shape": list(shape), "dtype": str(dt).replace("torch.", "")}
    mods = {qk: Attn(d, H, Hkv, D, qk).to(device, dt) for qk in KINDS}
    counts = {qk: m.projection_params() for qk, m in mods.items()}
    if len(set(counts.values())) != 1:
        raise UnequalModelsError(f"refusing to time attention sub-layers with unequal projections: {counts}")
    row["projection_params_M"] = counts["none"] / 1e6
    for qk, m in mods.items():
        try:
            def fb(m=m):
                x.grad = None
                m.zero_grad(set_to_none=True)
                m(x, cos, sin).backward(g)

            row[qk + "_fwdbwd_ms"] = timer(fb)
        except Exception as e:  # noqa: BLE001  (one version failing must not lose the others)
            row[qk + "_error"] = repr(e)[:300]
            traceback.print_exc()
    base = row.get("none_fwdbwd_ms")
    for qk in ("eager", "ours", "ours_rope"):
        if base and qk + "_fwdbwd_ms" in row:
            row[qk + "_overhead_pct"] = 100.0 * (row[qk + "_fwdbwd_ms"] / base - 1.0)
    if "ours_fwdbwd_ms" in row and row.get("ours_rope_fwdbwd_ms"):  # the norm's own cost on the same fused path
        row["ours_norm_pct"] = 100.0 * (row["ours_fwdbwd_ms"] / row["ours_rope_fwdbwd_ms"] - 1.0)
    return row
