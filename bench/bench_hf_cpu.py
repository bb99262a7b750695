"""Our model vs transformers on CPU: the same forward+backward step, same config, same weights (issue 3).

    python bench/bench_hf_cpu.py                                 # all four families; writes bench/results/
    python bench/bench_hf_cpu.py --families qwen3 --rounds 5 --no-write --d-model 128   # a quick look

For each family a random HF model is built with `transformers` from a native config of that family (GQA,
explicit head_dim, the family's eps/theta; Gemma 3 with sliding layers whose window is shorter than T, a global
layer, query_pre_attn_scalar), every weight moved off its init, and ours is `qknorm.from_hf(hf)`: the same
function with identical weights (the logits' relative error is printed as a check). Both models are described
from their modules (parameters, head_dim, heads) and the run refuses to time a pair that differs.

One step = logits for B x T tokens -> the same cross-entropy outside the model -> backward -> zero_grad(None),
fp32, both with HF's default SDPA attention path and ours (the PyTorch reference QK-norm+RoPE on CPU), with
torch.set_num_threads(--threads). After --warmup rounds, each of --rounds rounds times one step of each model, in
alternating order (ours first on even rounds, HF first on odd ones) with a gc pass before each round, so load from
other processes and slow drift fall on both alike. Reported per family: median ms per step of each, and the
median over rounds of the paired ratio ours/HF (< 1: ours is faster) with its 25-75% spread: on a shared
machine the ratio, not the absolute ms, is the measurement.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import qknorm
from qknorm.benchmarks import environment
from qknorm.benchmarks.equal_models import describe, require_equal
from qknorm.benchmarks.paired_cpu import add_shape_args, resolve_shape, time_pair
from qknorm.errors import QKNormError

FAMILIES = ("olmo2", "gemma3", "qwen3", "llama")


def hf_config(family: str, a):
    """A native transformers config of the family at the benchmark size (realistic per-family fields)."""
    import transformers

    base = dict(vocab_size=a.vocab, hidden_size=a.d_model, intermediate_size=a.d_ff, num_hidden_layers=a.layers,
                num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, max_position_embeddings=4096,
                pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "llama":
        return transformers.LlamaConfig(**base, rms_norm_eps=1e-5, rope_theta=5e5, tie_word_embeddings=False)
    if family == "qwen3":
        return transformers.Qwen3Config(**base, head_dim=a.head_dim, rms_norm_eps=1e-6, rope_theta=1e6,
                                        tie_word_embeddings=True)
    if family == "olmo2":
        return transformers.Olmo2Config(**base, rms_norm_eps=1e-6, rope_theta=5e5, tie_word_embeddings=False)
    if family == "gemma3":  # 5:1 local:global in Gemma 3; here every 4th layer is global
        types = ["full_attention" if (i + 1) % 4 == 0 else "sliding_attention" for i in range(a.layers)]
        return transformers.Gemma3TextConfig(**base, head_dim=a.head_dim, rms_norm_eps=1e-6, layer_types=types,
                                             sliding_window=a.seq // 2, rope_theta=1e6, rope_local_base_freq=1e4,
                                             query_pre_attn_scalar=a.head_dim, tie_word_embeddings=True)
    raise ValueError(family)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Norm weights (Gemma offsets) and biases off their init, matrices redrawn: a wrong mapping would show."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        noise = torch.randn(p.shape, generator=g)
        p.copy_(p + 0.3 * noise if p.ndim == 1 else 0.05 * noise)
    return model


def build_pair(family: str, a):
    import transformers

    cfg = hf_config(family, a)
    cfg._attn_implementation = a.attn
    torch.manual_seed(0)
    hf = randomize(transformers.AutoModelForCausalLM.from_config(cfg))
    ours = qknorm.from_hf(hf)
    records = [("ours", describe(ours)), ("hf", describe(hf))]
    require_equal(records)
    return ours.train(), hf.train(), records[0][1]


def step(model, ids, hf: bool) -> None:
    logits = model(input_ids=ids[:, :-1]).logits if hf else model(ids[:, :-1])  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    model.zero_grad(set_to_none=True)


def bench_family(family: str, a) -> dict:
    ours, hf, record = build_pair(family, a)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x, y = ours(ids[:, :-1]).double(), hf(input_ids=ids[:, :-1]).logits.double()
        rel = float((x - y).abs().max() / y.abs().max())
    t = time_pair(lambda: step(ours, ids, hf=False), lambda: step(hf, ids, hf=True), rounds=a.rounds, warmup=a.warmup)
    return dict(family=family, ours_ms=t.ours_ms, hf_ms=t.theirs_ms, ratio=t.ratio, q25=t.q25, q75=t.q75,
                rel=rel, params=record.params, head_dim=record.head_dim, n_kv_heads=record.n_kv_heads)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_args(p, FAMILIES)
    p.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa", help="HF attention implementation")
    p.add_argument("--no-write", action="store_true", help="print only; do not write the result file")
    p.add_argument("--out", type=Path, default=None, help="result file (default bench/results/hf_cpu_<date>.md)")
    args = resolve_shape(p.parse_args(argv))
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*eos_token_id.*")
    t0 = time.time()
    rows = []
    for f in args.families:
        try:
            rows.append(bench_family(f, args))
        except QKNormError as e:
            print(f"bench_hf_cpu.py: error: {f}: {e}", file=sys.stderr)
            return 2
        r = rows[-1]
        print(f"{f:7s} ours {r['ours_ms']:7.1f} ms  HF {r['hf_ms']:7.1f} ms  ours/HF {r['ratio']:.3f} "
              f"[{r['q25']:.3f}, {r['q75']:.3f}]  logits rel err {r['rel']:.1e}  [{time.time() - t0:.0f}s]",
              flush=True)
    shape = (f"d_model={args.d_model}, n_layers={args.layers}, heads={args.heads} ({args.kv_heads} kv) x "
             f"head_dim {args.head_dim}, d_ff={args.d_ff}, vocab={args.vocab}, B={args.batch}, T={args.seq}, fp32, "
             f"HF attn_implementation={args.attn}")
    lines = [
        "| family | params (each) | head_dim, kv heads | ours ms | HF ms | ours / HF (median of paired rounds) "
        "| 25-75% | logits rel err |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {r['family']} | {r['params']:,} | {r['head_dim']}, {r['n_kv_heads']} | {r['ours_ms']:.1f} | "
          f"{r['hf_ms']:.1f} | "
          f"**{r['ratio']:.3f}** | {r['q25']:.3f}-{r['q75']:.3f} | {r['rel']:.1e} |" for r in rows),
    ]
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    rec = environment.collect("cpu", {k: str(v) for k, v in vars(args).items()})
    env = (f"{rec.heading()}; torch.set_num_threads({args.threads}); load average (1/5/15 min) at the end "
           f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")
    cmd = " ".join(["python bench/bench_hf_cpu.py", *(argv if argv is not None else sys.argv[1:])])
    text = "\n".join([
        "# Forward+backward step on CPU: qknorm vs transformers", "", f"`{cmd}`", "",
        f"Shape: {shape}. Weights: a random HF model of each family (every weight off its init); ours = "
        "`qknorm.from_hf(hf)`, so both compute the same function (logits rel err below) with the same parameters "
        "(checked from the built modules before timing).", "",
        f"One step: logits, cross-entropy, backward, zero_grad. {args.warmup} warm-up rounds, then {args.rounds} "
        "rounds of one step of each model in alternating order. The machine is shared with other work: the "
        "measurement is the ratio ours / HF (median of the per-round ratios, < 1 means ours is faster), not the "
        "absolute ms, which move with the load.", "", f"Environment: {env}.", "", *lines, ""])
    print(text)
    if not args.no_write:
        out = args.out or Path(__file__).parent / "results" / f"hf_cpu_{rec.date}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
