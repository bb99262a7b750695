"""Triton kernels for the two-phase full-width (OLMo 2) QK-RMSNorm + RoPE under tensor parallelism.

Each rank holds n of the H query heads (and n_kv of the Hkv key heads) of every token. The full-width statistic
needs all heads of a token, but only as one number per token, so the fused kernel of
`triton_qk_norm_rope.py` is split where that number is needed, and the caller all-reduces in between:

    forward   phase 1  sumsq_fwd:      s_t = sum_{local h, d} x^2                 (2, B*T) fp32: q row, k row
              -- all-reduce(s) over the group --
              phase 2  norm_rope_fwd:  r = rsqrt(s_t / W + eps);  y = g*x*r (norm_cast "input": g*round(x*r))
                                       out = y*cos + rot(y)*sin -> (B, n, T, D)     (W = H*D or Hkv*D, global)
    backward  phase 1  dot_bwd:        dy = dout*cos + rot^T(dout*sin);  p_t = sum_{local h, d} dy*g*x*r
              -- all-reduce(p) --
              phase 2  norm_rope_bwd:  dx = r*(dy*g - x*r * p_t / W);  dg_partial = sum_t dy * x*r (rounded for
                                       "input"); the gain is sharded with its heads, so dg needs no reduction

The tiles, loads, casts and stores are the single-GPU kernel's own `@triton.jit` helpers (imported, not
copied), and so are its launch table and its persistent, deterministic weight-gradient reduction. Nothing but
the inputs and the all-reduced (2, B*T) statistic is kept for the backward: r is recomputed from it.
Tested on CPU under TRITON_INTERPRET=1 (tests/ops/test_qk_norm_rope_tp.py) against the torch path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_qk_norm_rope import (
    _blocks,
    _cast,
    _cs_strides,
    _load_halves,
    _load_weight,
    _resident_per_sm,
    _store_bhtd,
    _store_bthd,
    _store_partial,
    default_config,
)

_FULL = tl.constexpr(2)  # the single-GPU kernel's scope id of "full"


# ----------------------------------------------------------------------------------------------- kernels
@triton.jit
def _tok_rows(pid, BLOCK_T: tl.constexpr, n_tok, T):
    tok = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = tok < n_tok
    tok = tok.to(tl.int64)
    return tok, tmask, tok // T, tok % T


@triton.jit
def _sumsq_fwd_kernel(
    Q, K, S, n_tok, T,
    sq_b, sq_t, sq_h, sq_d, sk_b, sk_t, sk_h, sk_d,
    H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D2: tl.constexpr,
):
    HALF: tl.constexpr = D // 2
    tok, tmask, b, t = _tok_rows(tl.program_id(0), BLOCK_T, n_tok, T)
    d = tl.arange(0, BLOCK_D2)
    hq = tl.arange(0, BLOCK_HQ)
    hk = tl.arange(0, BLOCK_HK)
    dm = (d < HALF)[None, None, :]
    mq = tmask[:, None, None] & (hq < H)[None, :, None] & dm
    mk = tmask[:, None, None] & (hk < HKV)[None, :, None] & dm
    q1, q2 = _load_halves(Q, b * sq_b + t * sq_t, hq, d, mq, sq_h, sq_d, HALF)
    k1, k2 = _load_halves(K, b * sk_b + t * sk_t, hk, d, mk, sk_h, sk_d, HALF)
    sq = tl.sum(tl.sum(q1 * q1 + q2 * q2, axis=2), axis=1)  # [BLOCK_T]
    sk = tl.sum(tl.sum(k1 * k1 + k2 * k2, axis=2), axis=1)
    tl.store(S + tok, sq, mask=tmask)
    tl.store(S + n_tok + tok, sk, mask=tmask)


@triton.jit
def _rstd_given(S, row, tok, tmask, n_tok, width, eps):
    """r = rsqrt(s_t / W + eps) of row 0 (q) or 1 (k) of the all-reduced statistic, as [BLOCK_T, 1, 1]."""
    s = tl.load(S + row * n_tok + tok, mask=tmask, other=0.0)
    return tl.rsqrt(s / width + eps)[:, None, None]


@triton.jit
def _norm_rope_one(x1, x2, r, g1, g2, c1, c2, s1, s2, CAST_INPUT: tl.constexpr, IN_DT: tl.constexpr,
                   EMULATE_RNE: tl.constexpr):
    xh1 = x1 * r
    xh2 = x2 * r
    if CAST_INPUT:  # Llama/Qwen3 order: weight * x_hat.to(input dtype)
        xh1 = _cast(xh1, IN_DT, EMULATE_RNE).to(tl.float32)
        xh2 = _cast(xh2, IN_DT, EMULATE_RNE).to(tl.float32)
    y1 = xh1 * g1
    y2 = xh2 * g2
    return y1 * c1 - y2 * s1, y2 * c2 + y1 * s2


@triton.jit
def _norm_rope_fwd_kernel(
    Q, K, QW, KW, COS, SIN, S, QO, KO,
    n_tok, T,
    sq_b, sq_t, sq_h, sq_d, sk_b, sk_t, sk_h, sk_d,
    sc_b, sc_t, sc_d, ss_b, ss_t, ss_d,
    eps, offset, width_q, width_k,
    H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D2: tl.constexpr,
    CAST_INPUT: tl.constexpr, EMULATE_RNE: tl.constexpr,
):
    HALF: tl.constexpr = D // 2
    IN_DT: tl.constexpr = Q.dtype.element_ty
    tok, tmask, b, t = _tok_rows(tl.program_id(0), BLOCK_T, n_tok, T)
    d = tl.arange(0, BLOCK_D2)
    hq = tl.arange(0, BLOCK_HQ)
    hk = tl.arange(0, BLOCK_HK)
    h0 = tl.arange(0, 1)
    dm = (d < HALF)[None, None, :]
    mq = tmask[:, None, None] & (hq < H)[None, :, None] & dm
    mk = tmask[:, None, None] & (hk < HKV)[None, :, None] & dm
    mc = tmask[:, None, None] & dm
    q1, q2 = _load_halves(Q, b * sq_b + t * sq_t, hq, d, mq, sq_h, sq_d, HALF)
    k1, k2 = _load_halves(K, b * sk_b + t * sk_t, hk, d, mk, sk_h, sk_d, HALF)
    c1, c2 = _load_halves(COS, b * sc_b + t * sc_t, h0, d, mc, 0, sc_d, HALF)
    s1, s2 = _load_halves(SIN, b * ss_b + t * ss_t, h0, d, mc, 0, ss_d, HALF)
    gq1, gq2 = _load_weight(QW, hq, d, offset, H, D, HALF, _FULL)
    gk1, gk2 = _load_weight(KW, hk, d, offset, HKV, D, HALF, _FULL)
    rq = _rstd_given(S, 0, tok, tmask, n_tok, width_q, eps)
    rk = _rstd_given(S, 1, tok, tmask, n_tok, width_k, eps)
    o1, o2 = _norm_rope_one(q1, q2, rq, gq1, gq2, c1, c2, s1, s2, CAST_INPUT, IN_DT, EMULATE_RNE)
    _store_bhtd(QO, b, t, hq, d, mq, o1, o2, T, H, D, HALF, EMULATE_RNE)
    o1, o2 = _norm_rope_one(k1, k2, rk, gk1, gk2, c1, c2, s1, s2, CAST_INPUT, IN_DT, EMULATE_RNE)
    _store_bhtd(KO, b, t, hk, d, mk, o1, o2, T, HKV, D, HALF, EMULATE_RNE)


@triton.jit
def _dy_xh(x1, x2, do1, do2, r, c1, c2, s1, s2):
    """RoPE transposed on dout, and x_hat = x*r: the four [BLOCK_T, BLOCK_H, BLOCK_D2] tiles both phases need."""
    return do1 * c1 + do2 * s2, do2 * c2 - do1 * s1, x1 * r, x2 * r


@triton.jit
def _dot_bwd_kernel(
    Q, K, QW, KW, COS, SIN, DQO, DKO, S, P,
    n_tok, T,
    sq_b, sq_t, sq_h, sq_d, sk_b, sk_t, sk_h, sk_d,
    sc_b, sc_t, sc_d, ss_b, ss_t, ss_d,
    sgq_b, sgq_h, sgq_t, sgq_d, sgk_b, sgk_h, sgk_t, sgk_d,
    eps, offset, width_q, width_k,
    H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D2: tl.constexpr,
):
    HALF: tl.constexpr = D // 2
    tok, tmask, b, t = _tok_rows(tl.program_id(0), BLOCK_T, n_tok, T)
    d = tl.arange(0, BLOCK_D2)
    hq = tl.arange(0, BLOCK_HQ)
    hk = tl.arange(0, BLOCK_HK)
    h0 = tl.arange(0, 1)
    dm = (d < HALF)[None, None, :]
    mq = tmask[:, None, None] & (hq < H)[None, :, None] & dm
    mk = tmask[:, None, None] & (hk < HKV)[None, :, None] & dm
    mc = tmask[:, None, None] & dm
    q1, q2 = _load_halves(Q, b * sq_b + t * sq_t, hq, d, mq, sq_h, sq_d, HALF)
    gq1, gq2 = _load_halves(DQO, b * sgq_b + t * sgq_t, hq, d, mq, sgq_h, sgq_d, HALF)
    k1, k2 = _load_halves(K, b * sk_b + t * sk_t, hk, d, mk, sk_h, sk_d, HALF)
    gk1, gk2 = _load_halves(DKO, b * sgk_b + t * sgk_t, hk, d, mk, sgk_h, sgk_d, HALF)
    c1, c2 = _load_halves(COS, b * sc_b + t * sc_t, h0, d, mc, 0, sc_d, HALF)
    s1, s2 = _load_halves(SIN, b * ss_b + t * ss_t, h0, d, mc, 0, ss_d, HALF)
    wq1, wq2 = _load_weight(QW, hq, d, offset, H, D, HALF, _FULL)
    wk1, wk2 = _load_weight(KW, hk, d, offset, HKV, D, HALF, _FULL)
    dy1, dy2, xh1, xh2 = _dy_xh(q1, q2, gq1, gq2, _rstd_given(S, 0, tok, tmask, n_tok, width_q, eps), c1, c2, s1, s2)
    pq = tl.sum(tl.sum(dy1 * wq1 * xh1 + dy2 * wq2 * xh2, axis=2), axis=1)  # [BLOCK_T]
    dy1, dy2, xh1, xh2 = _dy_xh(k1, k2, gk1, gk2, _rstd_given(S, 1, tok, tmask, n_tok, width_k, eps), c1, c2, s1, s2)
    pk = tl.sum(tl.sum(dy1 * wk1 * xh1 + dy2 * wk2 * xh2, axis=2), axis=1)
    tl.store(P + tok, pq, mask=tmask)
    tl.store(P + n_tok + tok, pk, mask=tmask)


@triton.jit
def _bwd_one_given(x1, x2, do1, do2, g1, g2, c1, c2, s1, s2, r, m, CAST_INPUT: tl.constexpr, IN_DT: tl.constexpr,
                   EMULATE_RNE: tl.constexpr):
    """dx halves given r and m = p_t / W (both [BLOCK_T, 1, 1]); the tile's weight-gradient partial."""
    dy1, dy2, xh1, xh2 = _dy_xh(x1, x2, do1, do2, r, c1, c2, s1, s2)
    if CAST_INPUT:
        pw1 = tl.sum(dy1 * _cast(xh1, IN_DT, EMULATE_RNE).to(tl.float32), axis=0)
        pw2 = tl.sum(dy2 * _cast(xh2, IN_DT, EMULATE_RNE).to(tl.float32), axis=0)
    else:
        pw1 = tl.sum(dy1 * xh1, axis=0)
        pw2 = tl.sum(dy2 * xh2, axis=0)
    dx1 = r * (dy1 * g1 - xh1 * m)
    dx2 = r * (dy2 * g2 - xh2 * m)
    return dx1, dx2, pw1, pw2


@triton.jit
def _norm_rope_bwd_kernel(
    Q, K, QW, KW, COS, SIN, DQO, DKO, S, P, DQ, DK, PQW, PKW,
    n_tok, T, n_blocks,
    sq_b, sq_t, sq_h, sq_d, sk_b, sk_t, sk_h, sk_d,
    sc_b, sc_t, sc_d, ss_b, ss_t, ss_d,
    sgq_b, sgq_h, sgq_t, sgq_d, sgk_b, sgk_h, sgk_t, sgk_d,
    eps, offset, width_q, width_k,
    H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D2: tl.constexpr,
    CAST_INPUT: tl.constexpr, EMULATE_RNE: tl.constexpr,
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
        tok, tmask, b, t = _tok_rows(blk, BLOCK_T, n_tok, T)
        mq = tmask[:, None, None] & (hq < H)[None, :, None] & dm
        mk = tmask[:, None, None] & (hk < HKV)[None, :, None] & dm
        mc = tmask[:, None, None] & dm
        q1, q2 = _load_halves(Q, b * sq_b + t * sq_t, hq, d, mq, sq_h, sq_d, HALF)
        gq1, gq2 = _load_halves(DQO, b * sgq_b + t * sgq_t, hq, d, mq, sgq_h, sgq_d, HALF)
        k1, k2 = _load_halves(K, b * sk_b + t * sk_t, hk, d, mk, sk_h, sk_d, HALF)
        gk1, gk2 = _load_halves(DKO, b * sgk_b + t * sgk_t, hk, d, mk, sgk_h, sgk_d, HALF)
        c1, c2 = _load_halves(COS, b * sc_b + t * sc_t, h0, d, mc, 0, sc_d, HALF)
        s1, s2 = _load_halves(SIN, b * ss_b + t * ss_t, h0, d, mc, 0, ss_d, HALF)
        mq_ = (tl.load(P + tok, mask=tmask, other=0.0) / width_q)[:, None, None]
        mk_ = (tl.load(P + n_tok + tok, mask=tmask, other=0.0) / width_k)[:, None, None]
        wq1, wq2 = _load_weight(QW, hq, d, offset, H, D, HALF, _FULL)
        wk1, wk2 = _load_weight(KW, hk, d, offset, HKV, D, HALF, _FULL)
        rq = _rstd_given(S, 0, tok, tmask, n_tok, width_q, eps)
        dx1, dx2, pw1, pw2 = _bwd_one_given(q1, q2, gq1, gq2, wq1, wq2, c1, c2, s1, s2, rq, mq_, CAST_INPUT, IN_DT,
                                            EMULATE_RNE)
        _store_bthd(DQ, tok, hq, d, mq, dx1, dx2, H, D, HALF, EMULATE_RNE)
        accq1 += pw1
        accq2 += pw2
        rk = _rstd_given(S, 1, tok, tmask, n_tok, width_k, eps)
        dx1, dx2, pw1, pw2 = _bwd_one_given(k1, k2, gk1, gk2, wk1, wk2, c1, c2, s1, s2, rk, mk_, CAST_INPUT, IN_DT,
                                            EMULATE_RNE)
        _store_bthd(DK, tok, hk, d, mk, dx1, dx2, HKV, D, HALF, EMULATE_RNE)
        acck1 += pw1
        acck2 += pw2
    _store_partial(PQW, pid, accq1, accq2, hq, d, H, D, HALF, _FULL)
    _store_partial(PKW, pid, acck1, acck2, hk, d, HKV, D, HALF, _FULL)


# ----------------------------------------------------------------------------------------------- launchers
def _meta(q, k, cfg, *, norm_cast=None):
    H, HKV, D = q.shape[2], k.shape[2], q.shape[3]
    bhq, bhk, bd2 = _blocks(H, HKV, D)
    meta = dict(H=H, HKV=HKV, D=D, BLOCK_T=cfg.block_t, BLOCK_HQ=bhq, BLOCK_HK=bhk, BLOCK_D2=bd2,
                num_warps=cfg.num_warps)
    if norm_cast is not None:
        meta.update(CAST_INPUT=norm_cast == "input", EMULATE_RNE=q.device.type == "cpu")
    return meta


def sumsq_fwd(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Phase 1: (2, B*T) fp32, the per-token sums of squares of the local heads of q (row 0) and k (row 1)."""
    B, T, H, D = q.shape
    n_tok = B * T
    s = torch.empty((2, n_tok), dtype=torch.float32, device=q.device)
    if n_tok:
        cfg = default_config("fwd", H, k.shape[2], D)
        _sumsq_fwd_kernel[(triton.cdiv(n_tok, cfg.block_t),)](q, k, s, n_tok, T, *q.stride(), *k.stride(),
                                                              **_meta(q, k, cfg))
    return s


def norm_rope_fwd(q, k, q_weight, k_weight, cos, sin, s, *, eps: float, offset: float, norm_cast: str,
                  width_q: int, width_k: int):
    """Phase 2: given the all-reduced s (2, B*T): q (B, H, T, D), k (B, Hkv, T, D), contiguous, input dtype."""
    B, T, H, D = q.shape
    HKV = k.shape[2]
    qo = torch.empty((B, H, T, D), dtype=q.dtype, device=q.device)
    ko = torch.empty((B, HKV, T, D), dtype=k.dtype, device=k.device)
    n_tok = B * T
    if n_tok:
        cfg = default_config("fwd", H, HKV, D)
        _norm_rope_fwd_kernel[(triton.cdiv(n_tok, cfg.block_t),)](
            q, k, q_weight, k_weight, cos, sin, s, qo, ko, n_tok, T, *q.stride(), *k.stride(), *_cs_strides(cos),
            *_cs_strides(sin), float(eps), float(offset), float(width_q), float(width_k),
            **_meta(q, k, cfg, norm_cast=norm_cast))
    return qo, ko


def _bwd_common(dqo, dko, q, k, cos, sin, eps, offset, width_q, width_k):
    return (*q.stride(), *k.stride(), *_cs_strides(cos), *_cs_strides(sin), *dqo.stride(), *dko.stride(),
            float(eps), float(offset), float(width_q), float(width_k))


def dot_bwd(dqo, dko, q, k, q_weight, k_weight, cos, sin, s, *, eps: float, offset: float, width_q: int,
            width_k: int) -> torch.Tensor:
    """Backward phase 1: (2, B*T) fp32, the local partial of sum(dy * g * x_hat) per token, for q and k."""
    B, T, H, D = q.shape
    n_tok = B * T
    p = torch.empty((2, n_tok), dtype=torch.float32, device=q.device)
    if n_tok:
        cfg = default_config("fwd", H, k.shape[2], D)  # one pass, no accumulators: the forward's tiling
        _dot_bwd_kernel[(triton.cdiv(n_tok, cfg.block_t),)](
            q, k, q_weight, k_weight, cos, sin, dqo, dko, s, p, n_tok, T,
            *_bwd_common(dqo, dko, q, k, cos, sin, eps, offset, width_q, width_k), **_meta(q, k, cfg))
    return p


_RESIDENT: dict = {}  # programs of the backward kernel resident per SM, by compiled variant


def norm_rope_bwd(dqo, dko, q, k, q_weight, k_weight, cos, sin, s, p, *, eps: float, offset: float,
                  norm_cast: str, width_q: int, width_k: int):
    """Backward phase 2 given the all-reduced s and p: dq (B, T, H, D), dk (B, T, Hkv, D) and the gradients of
    the local gain slices, in the gains' dtypes."""
    B, T, H, D = q.shape
    HKV = k.shape[2]
    dq = torch.empty((B, T, H, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, T, HKV, D), dtype=k.dtype, device=k.device)
    n_tok = B * T
    if n_tok == 0:
        return dq, dk, torch.zeros_like(q_weight), torch.zeros_like(k_weight)
    cfg = default_config("bwd", H, HKV, D)
    n_blocks = triton.cdiv(n_tok, cfg.block_t)
    meta = _meta(q, k, cfg, norm_cast=norm_cast)

    def args(n_prog):
        pq = torch.empty((n_prog, H * D), dtype=torch.float32, device=q.device)
        pk = torch.empty((n_prog, HKV * D), dtype=torch.float32, device=q.device)
        return (q, k, q_weight, k_weight, cos, sin, dqo, dko, s, p, dq, dk, pq, pk, n_tok, T, n_blocks,
                *_bwd_common(dqo, dko, q, k, cos, sin, eps, offset, width_q, width_k))

    if q.device.type != "cuda":  # the interpreter: a few programs, so the loop runs several blocks each
        n_prog = min(n_blocks, 3)
    else:
        key = (q.dtype, q.device.index, tuple(sorted(meta.items())))
        if key not in _RESIDENT:
            try:
                compiled = _norm_rope_bwd_kernel.warmup(*args(1), grid=(1,), **meta)
                _RESIDENT[key] = _resident_per_sm(compiled, cfg.num_warps, q.device)
            except Exception:  # a triton without these internals: a safe guess
                _RESIDENT[key] = 2
        n_prog = min(n_blocks, _RESIDENT[key] * torch.cuda.get_device_properties(q.device).multi_processor_count)
    a = args(n_prog)
    _norm_rope_bwd_kernel[(n_prog,)](*a, **meta)
    return dq, dk, a[12].sum(0).to(q_weight.dtype), a[13].sum(0).to(k_weight.dtype)
