"""Host time of one attention layer's call on tiny shapes, where the arithmetic is negligible and what is left is
Python: argument checks, enum parsing, dispatch. Run it once per code version (PYTHONPATH=that tree's src):

    PYTHONPATH=src python bench/bench_attention_host_cpu.py --label after

Measures process CPU time (time.process_time, one torch thread), min and median of 7 repeats of N calls, for
layer 0 of the debug preset of olmo2 (full-width QK-norm), qwen3 (per-head) and llama (RoPE only), x (1, 4, d):
the attention forward without grad, its forward + backward, the QK step alone (norm + RoPE of q (1, 4, H, D),
k (1, 4, Hkv, D)), and the public op `qknorm.ops.qk_norm_rope` on the same q/k (checks included). Also counts
the `Choice.parse` and `ops._check` calls of one attention forward + backward. Prints one markdown table row
per preset.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

import qknorm
import qknorm.ops as ops
from qknorm.choice import Choice


def best_of(fn, n: int, reps: int = 7):
    for _ in range(max(10, n // 10)):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        ts.append((time.process_time() - t0) / n * 1e6)
    ts.sort()
    return ts[0], ts[len(ts) // 2]


def count_calls(fn) -> tuple:
    counts = [0, 0]
    parse, check = Choice.parse.__func__, ops._check

    def counting_parse(cls, field, value):
        counts[0] += 1
        return parse(cls, field, value)

    def counting_check(*a, **kw):
        counts[1] += 1
        return check(*a, **kw)

    Choice.parse, ops._check = classmethod(counting_parse), counting_check
    try:
        fn()
    finally:
        Choice.parse, ops._check = classmethod(parse), check
    return tuple(counts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--label", default="")
    p.add_argument("--n", type=int, default=400)
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    print(f"# {a.label}: qknorm {qknorm.__file__}, torch {torch.__version__}, {platform.machine()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| version | preset | fwd no_grad us | fwd+bwd us | QK step us | public op us | parses, checks / fwd+bwd |")
    print("|---|---|---|---|---|---|---|")
    for preset in ("olmo2", "qwen3", "llama"):
        cfg = qknorm.get_config(preset, "debug")
        model = qknorm.TransformerLM(cfg)
        attn = model.layers[0].attn
        T = 4
        x = torch.randn(1, T, cfg.d_model)
        cos, sin = model.rope_global(T, x.device)
        q, k = torch.randn(1, T, cfg.n_heads, cfg.head_dim), torch.randn(1, T, cfg.n_kv_heads, cfg.head_dim)
        step = getattr(attn, "qk_norm_rope", None) or attn._qk_norm_rope  # public after issue 25, private before
        qn = attn.q_norm
        w = (None, None) if qn is None else (qn.weight, attn.k_norm.weight)
        kw = dict(scope="none") if qn is None else dict(eps=qn.eps, scope=cfg.qk_norm, offset=qn.offset,
                                                        norm_cast=qn.cast)
        xg = x.clone().requires_grad_()
        calls = count_calls(lambda: attn(xg, cos, sin).sum().backward())
        with torch.no_grad():
            fwd = best_of(lambda: attn(x, cos, sin), a.n)
            qk = best_of(lambda: step(q, k, cos, sin), a.n)
            op = best_of(lambda: ops.qk_norm_rope(q, k, *w, cos, sin, **kw), a.n)
        fb = best_of(lambda: attn(xg, cos, sin).sum().backward(), a.n // 3)
        f = lambda t: f"{t[0]:.1f} / {t[1]:.1f}"  # noqa: E731
        print(f"| {a.label} | {preset} (H={cfg.n_heads}, Hkv={cfg.n_kv_heads}, D={cfg.head_dim}) | {f(fwd)} | "
              f"{f(fb)} | {f(qk)} | {f(op)} | {calls[0]}, {calls[1]} |")


if __name__ == "__main__":
    main()
