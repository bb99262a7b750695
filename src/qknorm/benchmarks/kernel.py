"""QK-RMSNorm + RoPE kernel benchmark: qknorm's fused Triton op against eager HF-style PyTorch, torch.compile,
Liger-Kernel (when importable; EXTRA_SITE=dir adds a folder holding liger_kernel) and the memory floor; a small
launch-config sweep; and the QK-norm share of an attention sub-layer (projections + SDPA, fwd+bwd).

    qknorm bench kernel --out bench/results/       # CUDA; ~2-3 min on an H100 (or bench/bench_qk_norm_rope.py)
    qknorm bench kernel --cpu-smoke                # tiny shapes, TRITON_INTERPRET=1: checks that it runs

Prints the result table; with --out DIR (or $OUT set) also writes DIR/qk_norm_rope.json and DIR/qk_norm_rope.md
(device, date and versions in the heading).
Shapes are (B, T, H, Hkv, D); bf16 weights as in a bf16 model. Per-head rows use Qwen3 numerics (norm_cast
"input"), full-width rows OLMo 2 numerics (norm_cast "fp32"). The floor is the bytes q and k must move
(fwd: read + write; fwd+bwd: 5 passes) over the copy rate of a 2 GiB device copy measured in the same run.
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
import time
import traceback

import torch
import torch.nn as nn
import torch.nn.functional as F

SHAPES = [((8, 4096, 32, 8, 128), "head"), ((8, 4096, 32, 8, 128), "full"),
          ((8, 4096, 32, 8, 64), "head"), ((8, 4096, 16, 16, 256), "head")]
LAYERS = [(4, 4096, 4096, 32, 8, 128), (8, 2048, 2048, 16, 8, 128), (8, 2048, 1024, 8, 8, 128)]
SMOKE_SHAPES = [((1, 8, 4, 2, 64), "head"), ((1, 8, 4, 2, 80), "full")]
SMOKE_LAYERS = [(1, 8, 64, 4, 2, 16)]
EPS = 1e-6


def timer(device):
    if device == "cuda":
        from triton.testing import do_bench

        return lambda fn, rep=100: do_bench(fn, warmup=25, rep=rep, return_mode="median")

    def cpu(fn, rep=None):  # a crash check, not a measurement: one warm call, one timed
        fn()
        ts = []
        for _ in range(1):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ts)

    return cpu


# ---------------------------------------------------------------------------------------------- the contenders
def rot_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), -1)


def eager(q, k, qw, kw, cos, sin, scope):
    """HF style. head: Qwen3RMSNorm (w * x_hat.to(dtype)) per head; full: Olmo2RMSNorm on (B, T, H*D)."""

    def norm(x, w):
        B, T, n, D = x.shape
        dt = x.dtype
        h = (x.reshape(B, T, n * D) if scope == "full" else x).float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)
        h = w * h.to(dt) if scope == "head" else (w * h).to(dt)
        return h.view(B, T, n, D)

    q, k = norm(q, qw).transpose(1, 2), norm(k, kw).transpose(1, 2)  # (B, H, T, D), (B, Hkv, T, D)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)  # (1, 1, T, D) in the input dtype, as HF passes them
    return q * c + rot_half(q) * s, k * c + rot_half(k) * s


def load_liger():
    if os.environ.get("EXTRA_SITE"):
        sys.path.insert(0, os.environ["EXTRA_SITE"])
    try:
        from liger_kernel.transformers.rms_norm import LigerRMSNorm
        from liger_kernel.transformers.rope import liger_rotary_pos_emb
    except Exception as e:  # noqa: BLE001
        print("liger unavailable:", repr(e)[:120], flush=True)
        return None

    def make(qw, kw, scope):
        qn, kn = LigerRMSNorm(qw.numel(), eps=EPS).to(qw), LigerRMSNorm(kw.numel(), eps=EPS).to(kw)
        with torch.no_grad():
            qn.weight.copy_(qw)
            kn.weight.copy_(kw)

        def liger(q, k, qw_, kw_, cos, sin, scope_):
            B, T, H, D = q.shape
            Hkv = k.shape[2]
            if scope == "full":
                q, k = qn(q.reshape(B, T, H * D)).view(B, T, H, D), kn(k.reshape(B, T, Hkv * D)).view(B, T, Hkv, D)
            else:
                q, k = qn(q), kn(k)
            return liger_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)

        return liger

    return make


def ours(q, k, qw, kw, cos, sin, scope):
    from qknorm.ops import qk_norm_rope

    return qk_norm_rope(q, k, qw, kw, cos, sin, eps=EPS, scope=scope, norm_cast="input" if scope == "head" else
                        "fp32", backend="triton")


def rope_tables(T, D, device, theta=1e6):
    inv = 1.0 / (theta ** (torch.arange(0, D, 2, device=device).float() / D))
    f = torch.outer(torch.arange(T, device=device).float(), inv)  # (T, D/2)
    emb = torch.cat((f, f), -1)  # (T, D)
    return emb.cos(), emb.sin()


# ---------------------------------------------------------------------------------------------- measurements
def copy_rate(device, gib):
    n = int(gib * 1024**3) // 2
    x = torch.empty(n, dtype=torch.bfloat16, device=device).normal_()
    y = torch.empty_like(x)
    t = timer(device)(lambda: y.copy_(x))
    del x, y
    return 2 * n * 2 / (t * 1e-3) / 1e12


def bench_shape(shape, scope, device, rate, compile_, liger_make):
    B, T, H, Hkv, D = shape
    bench = timer(device)
    dt = torch.bfloat16
    g = torch.Generator(device="cpu").manual_seed(0)
    q0 = torch.randn(B, T, H, D, generator=g).to(device, dt)
    k0 = torch.randn(B, T, Hkv, D, generator=g).to(device, dt)
    nq, nk = (D, D) if scope == "head" else (H * D, Hkv * D)
    qw = (torch.rand(nq, generator=g) + 0.5).to(device, dt)
    kw = (torch.rand(nk, generator=g) + 0.5).to(device, dt)
    cos, sin = rope_tables(T, D, device)  # fp32 (T, D) for ours
    cos_h, sin_h = cos[None].to(dt), sin[None].to(dt)  # (1, T, D) in bf16 for the HF-style code
    gq = torch.randn(B, H, T, D, generator=g).to(device, dt)
    gk = torch.randn(B, Hkv, T, D, generator=g).to(device, dt)
    nbytes = (q0.numel() + k0.numel()) * q0.element_size()
    row = {"shape": list(shape), "scope": scope, "floor_fwd_ms": 2 * nbytes / (rate * 1e12) * 1e3,
           "floor_fwdbwd_ms": 5 * nbytes / (rate * 1e12) * 1e3}
    with torch.no_grad():
        ref = [t.float() for t in eager(q0.float(), k0.float(), qw.float(), kw.float(), cos[None], sin[None], scope)]
    impls = [("eager", eager, False), ("ours", ours, True)]
    if compile_:
        impls += [("compile", torch.compile(eager, dynamic=False), False),
                  ("ours_compile", torch.compile(ours, dynamic=False), True)]
    if liger_make is not None:
        impls.append(("liger", liger_make(qw, kw, scope), False))
    for name, fn, fp32_tables in impls:
        c, s = (cos, sin) if fp32_tables else (cos_h, sin_h)
        t0 = time.time()
        try:
            with torch.no_grad():
                oq, ok = fn(q0, k0, qw, kw, c, s, scope)
                row[name + "_relerr"] = max(((o.float() - r).norm() / r.norm()).item() for o, r in zip((oq, ok), ref))
                row[name + "_fwd_ms"] = bench(lambda: fn(q0, k0, qw, kw, c, s, scope))
            leaves = [t.detach().clone().requires_grad_() for t in (q0, k0, qw, kw)]

            def fwd_bwd():
                for t in leaves:
                    t.grad = None  # time the gradients, not their accumulation
                a, b = fn(*leaves, c, s, scope)
                torch.autograd.backward((a, b), (gq, gk))

            row[name + "_fwdbwd_ms"] = bench(fwd_bwd)
        except Exception as e:  # noqa: BLE001  (one contender failing must not lose the others)
            row[name + "_error"] = repr(e)[:300]
            traceback.print_exc()
        row[name + "_wall_s"] = round(time.time() - t0, 1)
    _bench_raw_kernels(row, bench, q0, k0, qw, kw, cos, sin, gq, gk, scope)
    return row


def _bench_raw_kernels(row, bench, q, k, qw, kw, cos, sin, gq, gk, scope):
    """ours_kernels: our two kernels launched directly (no autograd, no op dispatch) — the device-side cost;
    the gap to `ours` is host time between the kernels."""
    from qknorm.ops import triton_qk_norm_rope as K

    args = (q, k, qw, kw, cos, sin, EPS, scope, 0.0, "input" if scope == "head" else "fp32")
    try:
        row["ours_kernels_fwd_ms"] = bench(lambda: K.qk_norm_rope_fwd(*args))
        row["ours_kernels_fwdbwd_ms"] = bench(lambda: (K.qk_norm_rope_fwd(*args), K.qk_norm_rope_bwd(gq, gk, *args)))
    except Exception as e:  # noqa: BLE001
        row["ours_kernels_error"] = repr(e)[:300]
        traceback.print_exc()


def sweep(shape, scope, device):
    """Forward and backward launch configs of our kernel on one shape (the built-in table is marked *)."""
    from qknorm.ops import triton_qk_norm_rope as K

    B, T, H, Hkv, D = shape
    bench = timer(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(B, T, H, D, generator=g).to(device, torch.bfloat16)
    k = torch.randn(B, T, Hkv, D, generator=g).to(device, torch.bfloat16)
    nq, nk = (D, D) if scope == "head" else (H * D, Hkv * D)
    qw, kw = torch.ones(nq, device=device, dtype=q.dtype), torch.ones(nk, device=device, dtype=q.dtype)
    cos, sin = rope_tables(T, D, device)
    gq, gk = torch.randn(B, H, T, D, device=device, dtype=q.dtype), torch.randn(B, Hkv, T, D, device=device,
                                                                                 dtype=q.dtype)
    args = (q, k, qw, kw, cos, sin, EPS, scope, 0.0, "fp32")
    out = []
    default = {kind: K.default_config(kind, H, Hkv, D) for kind in ("fwd", "bwd")}
    fwd_cfgs = [(1, 2), (1, 4), (1, 8), (2, 4), (2, 8), (4, 8)]
    bwd_cfgs = [(1, 4, None), (1, 8, None), (2, 8, None), (1, 16, None), (1, 8, 1), (1, 8, 2), (1, 4, 4)]
    if device != "cuda":  # smoke: one of each
        fwd_cfgs, bwd_cfgs = [(4, 4)], [(4, 8, None)]
    for kind, cfgs in (("fwd", fwd_cfgs), ("bwd", bwd_cfgs)):
        for cfg in cfgs:
            kc = K.KernelConfig(*cfg)
            K.set_config_override(**{kind: kc})
            try:
                if kind == "fwd":
                    ms = bench(lambda: K.qk_norm_rope_fwd(*args))
                else:
                    ms = bench(lambda: K.qk_norm_rope_bwd(gq, gk, *args))
                out.append({"shape": list(shape), "scope": scope, "kind": kind, "block_t": kc.block_t,
                            "num_warps": kc.num_warps, "programs_per_sm": kc.programs_per_sm, "ms": ms,
                            "default": kc == default[kind]})
            except Exception as e:  # noqa: BLE001
                out.append({"shape": list(shape), "scope": scope, "kind": kind, "config": list(cfg),
                            "error": repr(e)[:200]})
            finally:
                K.set_config_override()
    out.append({"shape": list(shape), "scope": scope, "resident_per_sm": {str(k[-2]): v for k, v in
                                                                          K._RESIDENT.items()}})
    return out


class Attn(nn.Module):
    """q, k, v, o projections + causal SDPA; QK-norm: "none" (eager RoPE), "eager" (Qwen3 style), "ours"
    (fused norm + RoPE) or "ours_rope" (fused RoPE only, no norm)."""

    def __init__(self, d, H, Hkv, D, qk):
        super().__init__()
        self.H, self.Hkv, self.D, self.qk = H, Hkv, D, qk
        self.wq, self.wk = nn.Linear(d, H * D, bias=False), nn.Linear(d, Hkv * D, bias=False)
        self.wv, self.wo = nn.Linear(d, Hkv * D, bias=False), nn.Linear(H * D, d, bias=False)
        self.qw, self.kw = nn.Parameter(torch.ones(D)), nn.Parameter(torch.ones(D))

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.H, self.D)  # (B, T, H, D)
        k = self.wk(x).view(B, T, self.Hkv, self.D)  # (B, T, Hkv, D)
        v = self.wv(x).view(B, T, self.Hkv, self.D).transpose(1, 2)  # (B, Hkv, T, D)
        if self.qk in ("ours", "ours_rope"):
            from qknorm.ops import qk_norm_rope

            w = (self.qw, self.kw) if self.qk == "ours" else (None, None)
            q, k = qk_norm_rope(q, k, *w, cos, sin, eps=EPS, norm_cast="input")  # (B, H, T, D), (B, Hkv, T, D)
        elif self.qk == "eager":
            q, k = eager(q, k, self.qw, self.kw, cos.to(x.dtype)[None], sin.to(x.dtype)[None], "head")
        else:
            c, s = cos.to(x.dtype)[None, None], sin.to(x.dtype)[None, None]
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            q, k = q * c + rot_half(q) * s, k * c + rot_half(k) * s
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # (B, H, T, D)
        return self.wo(o.transpose(1, 2).reshape(B, T, -1))


def bench_layer(shape, device):
    B, T, d, H, Hkv, D = shape
    bench = timer(device)
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    cos, sin = rope_tables(T, D, device)
    x = torch.randn(B, T, d, device=device, dtype=dt, requires_grad=True)
    g = torch.randn(B, T, d, device=device, dtype=dt)
    row = {"shape": list(shape)}
    for qk in ("none", "eager", "ours", "ours_rope"):
        try:
            m = Attn(d, H, Hkv, D, qk).to(device, dt)

            def fb():
                x.grad = None
                m.zero_grad(set_to_none=True)
                m(x, cos, sin).backward(g)

            row[qk + "_fwdbwd_ms"] = bench(fb, rep=100)
        except Exception as e:  # noqa: BLE001
            row[qk + "_error"] = repr(e)[:300]
            traceback.print_exc()
    base = row.get("none_fwdbwd_ms")
    for qk in ("eager", "ours", "ours_rope"):
        if base and qk + "_fwdbwd_ms" in row:
            row[qk + "_overhead_pct"] = 100.0 * (row[qk + "_fwdbwd_ms"] / base - 1.0)
    if "ours_fwdbwd_ms" in row and row.get("ours_rope_fwdbwd_ms"):  # the norm's own cost on the same fused path
        row["ours_norm_pct"] = 100.0 * (row["ours_fwdbwd_ms"] / row["ours_rope_fwdbwd_ms"] - 1.0)
    return row


# ---------------------------------------------------------------------------------------------- report
def _fmt(x, nd=3):
    return "-" if x is None else f"{x:.{nd}f}"


def versions():
    """Versions of what the numbers depend on: torch (+CUDA), triton, Liger (when importable), qknorm."""
    from importlib import metadata

    import qknorm

    v = {"torch": torch.__version__, "cuda": torch.version.cuda, "qknorm": qknorm.__version__}
    for name, dist in (("triton", "triton"), ("liger", "liger_kernel")):
        try:
            v[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            v[name] = None
    return v


def markdown(res):
    vs = ", ".join(f"{k} {v}" for k, v in res["versions"].items() if v)
    lines = [f"# QK-RMSNorm + RoPE: {res['device']}", "", f"{res['date']}; {vs}", "",
             f"copy rate {res['copy_TBps']:.2f} TB/s; bf16; ms are medians. `ours x floor` is ours / the bandwidth "
             f"floor (1.00 = at the floor; lower is better); `eager/ours`, `compile/ours`, `liger/ours` are "
             f"speedups of ours over each contender (higher is better). `ours_kernels` launches our two kernels "
             f"directly (no autograd or op dispatch): the device-side time; `ours` minus it is host time.", ""]
    names = ["eager", "compile", "liger", "ours", "ours_compile", "ours_kernels"]
    for kind in ("fwd", "fwdbwd"):
        lines += [f"## {'forward' if kind == 'fwd' else 'forward + backward'}", "",
                  "| shape (B,T,H,Hkv,D) | scope | floor | " + " | ".join(names) +
                  " | ours x floor | kernels x floor | eager/ours | compile/ours | liger/ours | ours rel. err |",
                  "|" + "---|" * (len(names) + 9)]
        for r in res["qkrope"]:
            t = {n: r.get(f"{n}_{kind}_ms") for n in names}
            o = t["ours"]
            ratio = lambda a, b: f"{a / b:.2f}" if a and b else "-"  # noqa: E731
            lines.append(f"| {tuple(r['shape'])} | {r['scope']} | {_fmt(r[f'floor_{kind}_ms'])} | " +
                         " | ".join(_fmt(t[n]) for n in names) +
                         f" | {ratio(o, r[f'floor_{kind}_ms'])} | {ratio(t['ours_kernels'], r[f'floor_{kind}_ms'])}"
                         f" | {ratio(t['eager'], o)} | "
                         f"{ratio(t['compile'], o)} | {ratio(t['liger'], o)} | {_fmt(r.get('ours_relerr'), 5)} |")
        lines.append("")
    errs = [(tuple(r["shape"]), r["scope"], k, v) for r in res["qkrope"] for k, v in r.items() if k.endswith("_error")]
    if errs:
        lines += ["Errors:", ""] + [f"- {s} {sc} {k}: `{v}`" for s, sc, k, v in errs] + [""]
    if res.get("sweep"):
        lines += ["## launch-config sweep (ours; fwd = forward kernel, bwd = backward kernel + dW sum; * = table)", "",
                  "| shape | scope | kernel | block_t | num_warps | programs/SM | ms |", "|---|---|---|---|---|---|---|"]
        for r in res["sweep"]:
            if "ms" in r:
                lines.append(f"| {tuple(r['shape'])} | {r['scope']} | {r['kind']} | {r['block_t']} | {r['num_warps']}"
                             f" | {r['programs_per_sm'] or 'auto'} | {r['ms']:.3f}{' *' if r['default'] else ''} |")
            elif "error" in r:
                lines.append(f"| {tuple(r['shape'])} | {r['scope']} | {r['kind']} | {r['config']} | error: "
                             f"{r['error'][:80]} | | |")
        resident = [r["resident_per_sm"] for r in res["sweep"] if "resident_per_sm" in r]
        if resident:  # after the table: a line inside it would end the table
            lines += ["", f"resident backward programs per SM (auto): {resident[-1]}"]
        lines.append("")
    if not res["layer"]:
        return "\n".join(lines) + "\n"
    lines += ["## attention sub-layer fwd+bwd (q,k,v,o projections + causal SDPA)", "",
              "`eager overhead`, `ours overhead`: vs the layer with eager RoPE and no QK-norm; `ours norm cost`: ours vs "
              "the same fused kernel doing RoPE only (the QK-norm's own cost).", "",
              "| B,T,d,H,Hkv,D | no QK-norm ms | eager QK-norm ms | ours ms | ours RoPE-only ms | eager overhead | "
              "ours overhead | ours norm cost |", "|---|---|---|---|---|---|---|---|"]
    for r in res["layer"]:
        pct = lambda k: f"{r[k]:+.1f}%" if k in r else "-"  # noqa: E731
        lines.append(f"| {tuple(r['shape'])} | {_fmt(r.get('none_fwdbwd_ms'), 2)} | {_fmt(r.get('eager_fwdbwd_ms'), 2)}"
                     f" | {_fmt(r.get('ours_fwdbwd_ms'), 2)} | {_fmt(r.get('ours_rope_fwdbwd_ms'), 2)} | "
                     f"{pct('eager_overhead_pct')} | {pct('ours_overhead_pct')} | {pct('ours_norm_pct')} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    from ..cli._common import OneLineParser

    p = OneLineParser(prog="qknorm bench kernel", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or None,
                   help="folder for qk_norm_rope.json and .md (default $OUT; neither: print only)")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU under TRITON_INTERPRET=1")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile contenders")
    p.add_argument("--no-sweep", action="store_true", help="skip the launch-config sweep")
    p.add_argument("--no-layer", action="store_true", help="skip the attention sub-layer")
    p.add_argument("--nshapes", type=int, default=None, help="only the first N kernel shapes")
    a = p.parse_args(argv)
    if a.cpu_smoke:
        if "qknorm.ops.triton_qk_norm_rope" not in sys.modules:
            os.environ.setdefault("TRITON_INTERPRET", "1")
        device, shapes, layers, compile_ = "cpu", SMOKE_SHAPES, SMOKE_LAYERS, False
    else:
        if not torch.cuda.is_available():
            print("error: no CUDA device; use --cpu-smoke for a CPU check", file=sys.stderr)
            return 2
        device, shapes, layers, compile_ = "cuda", SHAPES, LAYERS, not a.no_compile
        torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    shapes = shapes[: a.nshapes] if a.nshapes else shapes
    t0 = time.time()
    res = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter smoke)",
           "date": datetime.date.today().isoformat(), "versions": versions()}
    res["copy_TBps"] = copy_rate(device, 2.0 if device == "cuda" else 0.0625)
    print(f"copy {res['copy_TBps']:.3f} TB/s", flush=True)
    liger_make = load_liger() if device == "cuda" else None
    res["qkrope"] = []
    for shape, scope in shapes:
        row = bench_shape(shape, scope, device, res["copy_TBps"], compile_, liger_make)
        print(json.dumps(row), f"[{time.time() - t0:.0f}s]", flush=True)
        res["qkrope"].append(row)
    res["sweep"] = []
    if not a.no_sweep:
        for shape, scope in shapes[:2]:
            res["sweep"] += sweep(shape, scope, device)
        print(f"sweep done [{time.time() - t0:.0f}s]", flush=True)
    res["layer"] = []
    if not a.no_layer:
        for shape in layers:
            row = bench_layer(shape, device)
            print(json.dumps(row), f"[{time.time() - t0:.0f}s]", flush=True)
            res["layer"].append(row)
    res["wall_s"] = round(time.time() - t0, 1)
    md = markdown(res)
    print(md, flush=True)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "qk_norm_rope.json"), "w") as f:
            json.dump(res, f, indent=1)
        with open(os.path.join(a.out, "qk_norm_rope.md"), "w") as f:
            f.write(md)
        print(f"wrote {os.path.join(a.out, 'qk_norm_rope.md')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
