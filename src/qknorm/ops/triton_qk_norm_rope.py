"""Triton kernels: fused QK-RMSNorm + rotate-half RoPE + (B, T, H, D) -> (B, H, T, D), forward and backward.

Per row x of length N (N = D for scope "head"; N = heads*D for scope "full", OLMo 2), g = offset + w in fp32:

    forward   r = rsqrt(mean(x^2) + eps);  xh = x*r;  y = g*xh  (norm_cast "input": g*round(xh))
              out = y*cos + rot(y)*sin,  rot(y) = cat(-y2, y1)
    backward  dy = dout*cos + rot^T(dout*sin),  rot^T(v) = cat(v2, -v1)
              dg = sum_rows dy*xh  (the rounded xh for "input", as autograd of the HF code)
              dx = r*(dy*g - xh*mean(dy*g*xh))  (the "input" rounding is straight through)

Layout: one program owns BLOCK_T consecutive tokens (flattened B*T, so T needs no alignment) and *all* heads
of q and k for them, held as [BLOCK_T, BLOCK_H, BLOCK_D/2] tiles of the two rotate-half halves. So the rotation
is plain elementwise math between the halves, cos/sin are read once per token for every q and k head, the
full-width statistic is a sum over the head and dim axes of one tile, and every load of q, k (any strides) and
cos/sin is issued before any math. Non power-of-2 heads and head_dim are masked (BLOCK_* = next pow2).
The backward recomputes r (nothing but the inputs is saved) and is persistent: a grid of
SMs x resident-programs-per-SM loops over token blocks, keeps the weight-gradient partials of its blocks in
registers ([BLOCK_H, BLOCK_D/2] fp32), and writes one row per program into a (n_programs, width) fp32 buffer
that a torch sum reduces (deterministic, no atomics).
References: Liger-Kernel ops/rms_norm.py (modes, dW partials per SM); flash-attn ops/triton/{rotary,layer_norm}.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

_SCOPE_ID = {"none": 0, "head": 1, "full": 2}


# ----------------------------------------------------------------------------------------------- kernels
@triton.jit
def _cast(x, DT: tl.constexpr, EMULATE_RNE: tl.constexpr):
    """x.to(DT). The CPU interpreter truncates fp32 -> bf16 where GPUs round to nearest even; EMULATE_RNE
    (interpreter only) rounds with integer math so CPU tests see the GPU's numerics."""
    if EMULATE_RNE and DT == tl.bfloat16:
        u = x.to(tl.uint32, bitcast=True)
        u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        return u.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DT)


@triton.jit
def _load_halves(X, row, h, d, mask, s_h, s_d, HALF: tl.constexpr):
    """x[row + h*s_h + d*s_d] for the two rotate-half halves, as fp32 [BLOCK_T, BLOCK_H, BLOCK_D2]."""
    p = X + row[:, None, None] + h[None, :, None] * s_h + d[None, None, :] * s_d
    x1 = tl.load(p, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(p + HALF * s_d, mask=mask, other=0.0).to(tl.float32)
    return x1, x2


@triton.jit
def _load_weight(W, h, d, offset, NH: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr, SCOPE: tl.constexpr):
    """g = offset + w in fp32, shaped to broadcast against a [BLOCK_T, BLOCK_H, BLOCK_D2] tile."""
    if SCOPE == 1:  # (D,)
        p = W + d[None, None, :]
        m = d[None, None, :] < HALF
    else:  # (NH*D,), row h holds head h
        p = W + h[None, :, None] * D + d[None, None, :]
        m = (h[None, :, None] < NH) & (d[None, None, :] < HALF)
    g1 = tl.load(p, mask=m, other=0.0).to(tl.float32) + offset
    g2 = tl.load(p + HALF, mask=m, other=0.0).to(tl.float32) + offset
    return g1, g2


@triton.jit
def _rstd(x1, x2, eps, NH: tl.constexpr, D: tl.constexpr, SCOPE: tl.constexpr):
    """rsqrt(mean(x^2) + eps) per head (SCOPE 1) or per token over all heads (SCOPE 2), broadcastable."""
    ss = tl.sum(x1 * x1, axis=2) + tl.sum(x2 * x2, axis=2)  # [BLOCK_T, BLOCK_H]
    if SCOPE == 1:
        r = tl.rsqrt(ss / D + eps)[:, :, None]
    else:
        r = tl.rsqrt(tl.sum(ss, axis=1) / (NH * D) + eps)[:, None, None]
    return r


@triton.jit
def _store_bhtd(O, b, t, h, d, mask, o1, o2, T, NH: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr,
                EMULATE_RNE: tl.constexpr):
    """Write the two halves to a contiguous (B, NH, T, D) tensor."""
    row = ((b[:, None] * NH + h[None, :]) * T + t[:, None]) * D  # int64 [BLOCK_T, BLOCK_H]
    p = O + row[:, :, None] + d[None, None, :]
    tl.store(p, _cast(o1, O.dtype.element_ty, EMULATE_RNE), mask=mask)
    tl.store(p + HALF, _cast(o2, O.dtype.element_ty, EMULATE_RNE), mask=mask)


@triton.jit
def _fwd_one(x1, x2, g1, g2, c1, c2, s1, s2, eps, NH: tl.constexpr, D: tl.constexpr, SCOPE: tl.constexpr,
             CAST_INPUT: tl.constexpr, IN_DT: tl.constexpr, EMULATE_RNE: tl.constexpr):
    if SCOPE != 0:
        r = _rstd(x1, x2, eps, NH, D, SCOPE)
        xh1 = x1 * r
        xh2 = x2 * r
        if CAST_INPUT:  # Llama/Qwen3: weight * x_hat.to(input dtype)
            xh1 = _cast(xh1, IN_DT, EMULATE_RNE).to(tl.float32)
            xh2 = _cast(xh2, IN_DT, EMULATE_RNE).to(tl.float32)
        y1 = xh1 * g1
        y2 = xh2 * g2
    else:
        y1 = x1
        y2 = x2
    return y1 * c1 - y2 * s1, y2 * c2 + y1 * s2


@triton.jit
def _qk_norm_rope_fwd_kernel(
    Q, K, QW, KW, COS, SIN, QO, KO,
    n_tok, T,
    sq_b, sq_t, sq_h, sq_d, sk_b, sk_t, sk_h, sk_d,
    sc_b, sc_t, sc_d, ss_b, ss_t, ss_d,
    eps, offset,
    H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D2: tl.constexpr,
    SCOPE: tl.constexpr, CAST_INPUT: tl.constexpr, EMULATE_RNE: tl.constexpr,
):
    HALF: tl.constexpr = D // 2
    tok = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = tok < n_tok
    b = (tok // T).to(tl.int64)
    t = (tok % T).to(tl.int64)
    d = tl.arange(0, BLOCK_D2)
    hq = tl.arange(0, BLOCK_HQ)
    hk = tl.arange(0, BLOCK_HK)
    h0 = tl.arange(0, 1)
    dm = (d < HALF)[None, None, :]
    mq = tmask[:, None, None] & (hq < H)[None, :, None] & dm
    mk = tmask[:, None, None] & (hk < HKV)[None, :, None] & dm
    mc = tmask[:, None, None] & dm
    # every load first: q, k and cos/sin (once per token, shared by all heads)
    q1, q2 = _load_halves(Q, b * sq_b + t * sq_t, hq, d, mq, sq_h, sq_d, HALF)
    k1, k2 = _load_halves(K, b * sk_b + t * sk_t, hk, d, mk, sk_h, sk_d, HALF)
    c1, c2 = _load_halves(COS, b * sc_b + t * sc_t, h0, d, mc, 0, sc_d, HALF)
    s1, s2 = _load_halves(SIN, b * ss_b + t * ss_t, h0, d, mc, 0, ss_d, HALF)
    if SCOPE != 0:
        gq1, gq2 = _load_weight(QW, hq, d, offset, H, D, HALF, SCOPE)
        gk1, gk2 = _load_weight(KW, hk, d, offset, HKV, D, HALF, SCOPE)
    else:
        gq1, gq2, gk1, gk2 = offset, offset, offset, offset  # unused
    IN_DT: tl.constexpr = Q.dtype.element_ty
    o1, o2 = _fwd_one(q1, q2, gq1, gq2, c1, c2, s1, s2, eps, H, D, SCOPE, CAST_INPUT, IN_DT, EMULATE_RNE)
    _store_bhtd(QO, b, t, hq, d, mq, o1, o2, T, H, D, HALF, EMULATE_RNE)
    o1, o2 = _fwd_one(k1, k2, gk1, gk2, c1, c2, s1, s2, eps, HKV, D, SCOPE, CAST_INPUT, IN_DT, EMULATE_RNE)
    _store_bhtd(KO, b, t, hk, d, mk, o1, o2, T, HKV, D, HALF, EMULATE_RNE)


@triton.jit
def _bwd_one(x1, x2, do1, do2, g1, g2, c1, c2, s1, s2, eps, NH: tl.constexpr, D: tl.constexpr,
             SCOPE: tl.constexpr, CAST_INPUT: tl.constexpr, IN_DT: tl.constexpr, EMULATE_RNE: tl.constexpr):
    """dx halves and this tile's weight-gradient partial summed over tokens, [BLOCK_H, BLOCK_D2] each."""
    dy1 = do1 * c1 + do2 * s2  # RoPE transposed
    dy2 = do2 * c2 - do1 * s1
    if SCOPE != 0:
        r = _rstd(x1, x2, eps, NH, D, SCOPE)
        xh1 = x1 * r
        xh2 = x2 * r
        if CAST_INPUT:
            pw1 = tl.sum(dy1 * _cast(xh1, IN_DT, EMULATE_RNE).to(tl.float32), axis=0)
            pw2 = tl.sum(dy2 * _cast(xh2, IN_DT, EMULATE_RNE).to(tl.float32), axis=0)
        else:
            pw1 = tl.sum(dy1 * xh1, axis=0)
            pw2 = tl.sum(dy2 * xh2, axis=0)
        gy1 = dy1 * g1
        gy2 = dy2 * g2
        dot = tl.sum(gy1 * xh1, axis=2) + tl.sum(gy2 * xh2, axis=2)  # [BLOCK_T, BLOCK_H]
        if SCOPE == 1:
            m = (dot / D)[:, :, None]
        else:
            m = (tl.sum(dot, axis=1) / (NH * D))[:, None, None]
        dx1 = r * (gy1 - xh1 * m)
        dx2 = r * (gy2 - xh2 * m)
    else:
        dx1 = dy1
        dx2 = dy2
        pw1 = tl.sum(dy1, axis=0)  # unused
        pw2 = pw1
    return dx1, dx2, pw1, pw2


@triton.jit
def _store_bthd(DX, tok, h, d, mask, dx1, dx2, NH: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr,
                EMULATE_RNE: tl.constexpr):
    """Write the two halves to a contiguous (B, T, NH, D) tensor (token index flattened)."""
    p = DX + (tok[:, None, None] * (NH * D) + h[None, :, None] * D + d[None, None, :])
    tl.store(p, _cast(dx1, DX.dtype.element_ty, EMULATE_RNE), mask=mask)
    tl.store(p + HALF, _cast(dx2, DX.dtype.element_ty, EMULATE_RNE), mask=mask)


@triton.jit
def _store_partial(P, pid, acc1, acc2, h, d, NH: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr,
                   SCOPE: tl.constexpr):
    if SCOPE == 1:  # row pid of (n_programs, D): sum the heads too
        p = P + pid * D + d
        m = d < HALF
        tl.store(p, tl.sum(acc1, axis=0), mask=m)
        tl.store(p + HALF, tl.sum(acc2, axis=0), mask=m)
    elif SCOPE == 2:  # row pid of (n_programs, NH*D)
        p = P + pid * (NH * D) + h[:, None] * D + d[None, :]
        m = (h[:, None] < NH) & (d[None, :] < HALF)
        tl.store(p, acc1, mask=m)
        tl.store(p + HALF, acc2, mask=m)


@triton.jit
def _qk_norm_rope_bwd_kernel(
    Q, K, QW, KW, COS, SIN, DQO, DKO, DQ, DK, PQW, PKW,
    n_tok, T, n_blocks,
    sq_b, sq_t, sq_h, sq_d, sk_b, sk_t, sk_h, sk_d,
    sc_b, sc_t, sc_d, ss_b, ss_t, ss_d,
    sgq_b, sgq_h, sgq_t, sgq_d, sgk_b, sgk_h, sgk_t, sgk_d,
    eps, offset,
    H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D2: tl.constexpr,
    SCOPE: tl.constexpr, CAST_INPUT: tl.constexpr, EMULATE_RNE: tl.constexpr,
):
    HALF: tl.constexpr = D // 2
    IN_DT: tl.constexpr = Q.dtype.element_ty
    pid = tl.program_id(0)
    d = tl.arange(0, BLOCK_D2)
    hq = tl.arange(0, BLOCK_HQ)
    hk = tl.arange(0, BLOCK_HK)
    h0 = tl.arange(0, 1)
    dm = (d < HALF)[None, None, :]
    accq1 = tl.zeros([BLOCK_HQ, BLOCK_D2], dtype=tl.float32)
    accq2 = tl.zeros([BLOCK_HQ, BLOCK_D2], dtype=tl.float32)
    acck1 = tl.zeros([BLOCK_HK, BLOCK_D2], dtype=tl.float32)
    acck2 = tl.zeros([BLOCK_HK, BLOCK_D2], dtype=tl.float32)
    for blk in tl.range(pid, n_blocks, tl.num_programs(0)):
        tok = blk * BLOCK_T + tl.arange(0, BLOCK_T)
        tmask = tok < n_tok
        tok = tok.to(tl.int64)
        b = tok // T
        t = tok % T
        mq = tmask[:, None, None] & (hq < H)[None, :, None] & dm
        mk = tmask[:, None, None] & (hk < HKV)[None, :, None] & dm
        mc = tmask[:, None, None] & dm
        q1, q2 = _load_halves(Q, b * sq_b + t * sq_t, hq, d, mq, sq_h, sq_d, HALF)
        gq1, gq2 = _load_halves(DQO, b * sgq_b + t * sgq_t, hq, d, mq, sgq_h, sgq_d, HALF)
        k1, k2 = _load_halves(K, b * sk_b + t * sk_t, hk, d, mk, sk_h, sk_d, HALF)
        gk1, gk2 = _load_halves(DKO, b * sgk_b + t * sgk_t, hk, d, mk, sgk_h, sgk_d, HALF)
        c1, c2 = _load_halves(COS, b * sc_b + t * sc_t, h0, d, mc, 0, sc_d, HALF)
        s1, s2 = _load_halves(SIN, b * ss_b + t * ss_t, h0, d, mc, 0, ss_d, HALF)
        if SCOPE != 0:  # loop-invariant, but reloading (L1 hits) beats holding them in registers
            wq1, wq2 = _load_weight(QW, hq, d, offset, H, D, HALF, SCOPE)
            wk1, wk2 = _load_weight(KW, hk, d, offset, HKV, D, HALF, SCOPE)
        else:
            wq1, wq2, wk1, wk2 = offset, offset, offset, offset  # unused
        dx1, dx2, pw1, pw2 = _bwd_one(q1, q2, gq1, gq2, wq1, wq2, c1, c2, s1, s2, eps, H, D, SCOPE, CAST_INPUT,
                                      IN_DT, EMULATE_RNE)
        _store_bthd(DQ, tok, hq, d, mq, dx1, dx2, H, D, HALF, EMULATE_RNE)
        if SCOPE != 0:
            accq1 += pw1
            accq2 += pw2
        dx1, dx2, pw1, pw2 = _bwd_one(k1, k2, gk1, gk2, wk1, wk2, c1, c2, s1, s2, eps, HKV, D, SCOPE, CAST_INPUT,
                                      IN_DT, EMULATE_RNE)
        _store_bthd(DK, tok, hk, d, mk, dx1, dx2, HKV, D, HALF, EMULATE_RNE)
        if SCOPE != 0:
            acck1 += pw1
            acck2 += pw2
    _store_partial(PQW, pid, accq1, accq2, hq, d, H, D, HALF, SCOPE)
    _store_partial(PKW, pid, acck1, acck2, hk, d, HKV, D, HALF, SCOPE)


# ----------------------------------------------------------------------------------------------- launcher
@dataclass(frozen=True)
class KernelConfig:
    """Launch shape: tokens per program, warps per program; for the backward, optionally programs per SM."""

    block_t: int
    num_warps: int
    programs_per_sm: int | None = None  # backward only; None = as many as fit (from the compiled kernel)


_OVERRIDE: dict[str, KernelConfig] = {}  # {"fwd"|"bwd": KernelConfig}; for benchmark sweeps only
_RESIDENT: dict[tuple, int] = {}  # backward programs resident per SM, by compiled variant


def set_config_override(fwd: KernelConfig | None = None, bwd: KernelConfig | None = None) -> None:
    """Force the launch configs (None restores the built-in table). For benchmark sweeps, not for users."""
    _OVERRIDE.clear()
    _OVERRIDE.update({k: v for k, v in (("fwd", fwd), ("bwd", bwd)) if v is not None})


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _pow2_floor(n: int) -> int:
    return 1 << max(0, n.bit_length() - 1)


def _blocks(H: int, HKV: int, D: int) -> tuple[int, int, int]:
    return _pow2_ceil(H), _pow2_ceil(HKV), _pow2_ceil(D // 2)


def default_config(kind: str, H: int, HKV: int, D: int) -> KernelConfig:
    """The fixed table (no autotuning at run time), from register counts of the sm_90 builds and the launch
    sweep of `qknorm bench kernel` on an H200 (bench/results/kernel_h200_2026-11-26.md).

    per_tok = padded q+k values of one token. Forward: ~4K values per program; 2 warps up to 6K values
    ((32, 8, 128): 1 token x 2 warps measured 0.198 ms vs 0.225 ms with 4 warps), 4 up to 8K, then more.
    Backward (holds x and dout): 1 token per program unless tokens are tiny, ~1.25K values a warp, at least 4
    ((32, 8, 128): 4 warps measured 0.307 ms vs 0.330 ms with 8, head scope; 0.405 vs 0.437 full width).
    """
    if kind in _OVERRIDE:
        return _OVERRIDE[kind]
    bhq, bhk, bd2 = _blocks(H, HKV, D)
    per_tok = (bhq + bhk) * 2 * bd2
    if kind == "fwd":
        block_t = min(16, _pow2_floor(max(1, 4096 // per_tok)))
        n = block_t * per_tok
        warps = 2 if n <= 6144 else 4 if n <= 8192 else 8 if n <= 16384 else 16
    else:
        block_t = min(16, _pow2_floor(max(1, 2048 // per_tok)))
        warps = min(16, max(4, _pow2_ceil(round(block_t * per_tok / 1280))))
    return KernelConfig(block_t, warps)


def _cs_strides(c: torch.Tensor) -> tuple[int, int, int]:
    """(batch, T, D) strides of a (T, D) or (B|1, T, D) cos/sin table; batch stride 0 broadcasts."""
    if c.dim() == 2:
        return 0, c.stride(0), c.stride(1)
    return (c.stride(0) if c.shape[0] > 1 else 0), c.stride(1), c.stride(2)


def _meta(q, k, scope, norm_cast, cfg):
    H, HKV, D = q.shape[2], k.shape[2], q.shape[3]
    bhq, bhk, bd2 = _blocks(H, HKV, D)
    return dict(H=H, HKV=HKV, D=D, BLOCK_T=cfg.block_t, BLOCK_HQ=bhq, BLOCK_HK=bhk, BLOCK_D2=bd2,
                SCOPE=_SCOPE_ID[scope], CAST_INPUT=norm_cast == "input", EMULATE_RNE=q.device.type == "cpu",
                num_warps=cfg.num_warps)


def qk_norm_rope_fwd(q, k, q_weight, k_weight, cos, sin, eps: float, scope: str, offset: float,
                     norm_cast: str) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, T, H, D), k (B, T, Hkv, D) (any strides) -> contiguous q (B, H, T, D), k (B, Hkv, T, D)."""
    B, T, H, D = q.shape
    HKV = k.shape[2]
    qo = torch.empty((B, H, T, D), dtype=q.dtype, device=q.device)
    ko = torch.empty((B, HKV, T, D), dtype=k.dtype, device=k.device)
    n_tok = B * T
    if n_tok == 0:
        return qo, ko
    cfg = default_config("fwd", H, HKV, D)
    qw = q_weight if q_weight is not None else q  # never read when scope is "none"
    kw = k_weight if k_weight is not None else k
    _qk_norm_rope_fwd_kernel[(triton.cdiv(n_tok, cfg.block_t),)](
        q, k, qw, kw, cos, sin, qo, ko, n_tok, T, *q.stride(), *k.stride(), *_cs_strides(cos), *_cs_strides(sin),
        float(eps), float(offset), **_meta(q, k, scope, norm_cast, cfg))
    return qo, ko


def _resident_per_sm(kernel, num_warps: int, device: torch.device) -> int:
    """Programs of a compiled kernel that fit on one SM at once (registers, threads, shared memory)."""
    kernel._init_handles()
    props = torch.cuda.get_device_properties(device)
    regs_sm = getattr(props, "regs_per_multiprocessor", 65536)
    threads_sm = getattr(props, "max_threads_per_multi_processor", 2048)
    smem_sm = getattr(props, "shared_memory_per_multiprocessor", 228 * 1024)
    regs_warp = -(-max(1, kernel.n_regs) * 32 // 256) * 256  # allocated per warp in units of 256
    occ = min(regs_sm // (regs_warp * num_warps), threads_sm // (32 * num_warps), 32)
    if kernel.metadata.shared:
        occ = min(occ, smem_sm // kernel.metadata.shared)
    return max(1, occ)


def qk_norm_rope_bwd(dqo, dko, q, k, q_weight, k_weight, cos, sin, eps: float, scope: str, offset: float,
                     norm_cast: str):
    """Gradients (dq (B, T, H, D), dk (B, T, Hkv, D), dq_weight, dk_weight) given dout of the forward outputs.

    The weight gradients are None for scope "none"; they come back in the weights' dtypes.
    """
    B, T, H, D = q.shape
    HKV = k.shape[2]
    dq = torch.empty((B, T, H, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, T, HKV, D), dtype=k.dtype, device=k.device)
    has_w = scope != "none"
    n_tok = B * T
    if n_tok == 0:
        zero = lambda w: torch.zeros_like(w) if w is not None else None  # noqa: E731
        return dq, dk, zero(q_weight), zero(k_weight)
    cfg = default_config("bwd", H, HKV, D)
    n_blocks = triton.cdiv(n_tok, cfg.block_t)
    wq, wk = (D, D) if scope == "head" else (H * D, HKV * D)
    meta = _meta(q, k, scope, norm_cast, cfg)
    qw = q_weight if has_w else q
    kw = k_weight if has_w else k

    def args(n_prog):
        pq = torch.empty((n_prog, wq) if has_w else (1,), dtype=torch.float32, device=q.device)
        pk = torch.empty((n_prog, wk) if has_w else (1,), dtype=torch.float32, device=q.device)
        return (q, k, qw, kw, cos, sin, dqo, dko, dq, dk, pq, pk, n_tok, T, n_blocks, *q.stride(), *k.stride(),
                *_cs_strides(cos), *_cs_strides(sin), *dqo.stride(), *dko.stride(), float(eps), float(offset))

    if q.device.type != "cuda":  # the interpreter: a few programs, so the loop runs several blocks each
        n_prog = min(n_blocks, 3)
    else:
        per_sm = cfg.programs_per_sm
        if per_sm is None:
            key = (q.dtype, q.device.index, tuple(sorted(meta.items())), tuple(x.stride(-1) for x in (q, k, dqo, dko)))
            if key not in _RESIDENT:
                try:
                    compiled = _qk_norm_rope_bwd_kernel.warmup(*args(1), grid=(1,), **meta)
                    _RESIDENT[key] = _resident_per_sm(compiled, cfg.num_warps, q.device)
                except Exception:  # an older/newer triton without these internals: a safe guess
                    _RESIDENT[key] = 2
            per_sm = _RESIDENT[key]
        n_prog = min(n_blocks, per_sm * torch.cuda.get_device_properties(q.device).multi_processor_count)
    a = args(n_prog)
    _qk_norm_rope_bwd_kernel[(n_prog,)](*a, **meta)
    if not has_w:
        return dq, dk, None, None
    pq, pk = a[10], a[11]
    return dq, dk, pq.sum(0).to(q_weight.dtype), pk.sum(0).to(k_weight.dtype)
