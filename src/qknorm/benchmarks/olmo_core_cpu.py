"""Our model vs OLMo-core's on CPU: the same forward+backward step, the same model and weights (issue 17).

    python bench/bench_olmo_core_cpu.py                                  # writes bench/results/olmo_core_cpu_<date>.md
    python bench/bench_olmo_core_cpu.py --families olmo2 --rounds 5 --no-write   # a quick look

For each family OLMo-core 3.0 builds the model with its own builder (`TransformerConfig.llama_like` with
OLMo 2's reordered norm and full-width QK-norm, with Qwen3's qwen_rms and head-wise QK-norm, plain Llama, and
`TransformerConfig.gemma3_like`), every norm gain moved off 1; it is saved with its own
`save_model_and_optim_state`, and ours is `qknorm.from_olmo_core` of that checkpoint: the same function with the
same weights (the logits' max |diff| and both parameter counts are printed; unequal counts stop the run).

One step = logits for B x T tokens -> the same cross-entropy outside the model -> backward -> zero_grad(None),
fp32, OLMo-core on its torch (SDPA) attention backend, ours on the PyTorch reference QK-norm+RoPE, with
torch.set_num_threads(--threads). After --warmup rounds each of --rounds rounds times one step of each model in
alternating order (ours first on even rounds) after a gc pass, so load from other processes falls on both alike.
Reported: median ms per step of each and the median over rounds of the paired ratio ours / OLMo-core (< 1: ours
is faster) with its 25-75% spread; on a shared machine the ratio, not the absolute ms, is the measurement.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import warnings
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F

import qknorm

from .environment import cpu_name
from .paired_cpu import add_shape_args, resolve_shape, time_pair

FAMILIES = ("olmo2", "qwen3", "gemma3", "llama")


def olmo_config(family: str, a):
    """OLMo-core's TransformerConfig of the family at the benchmark size."""
    from olmo_core.nn.feed_forward import FeedForwardConfig
    from olmo_core.nn.layer_norm import LayerNormType
    from olmo_core.nn.transformer import TransformerBlockType, TransformerConfig

    base = dict(d_model=a.d_model, vocab_size=a.vocab, n_layers=a.layers, n_heads=a.heads, n_kv_heads=a.kv_heads)
    if family == "gemma3":  # every 4th layer global, window T/2 on the others
        return TransformerConfig.gemma3_like(**base, hidden_size=a.d_ff, head_dim=a.head_dim,
                                             local_window_size=a.seq // 2, global_layer_interval=4,
                                             tie_word_embeddings=True)
    ff = dict(feed_forward=FeedForwardConfig(hidden_size=a.d_ff, bias=False))
    if family == "olmo2":
        return TransformerConfig.llama_like(**base, **ff, block_name=TransformerBlockType.reordered_norm,
                                            qk_norm=True, layer_norm_eps=1e-6, rope_theta=500_000)
    if family == "qwen3":
        return TransformerConfig.llama_like(**base, **ff, head_dim=a.head_dim, layer_norm_name=LayerNormType.qwen_rms,
                                            qk_norm=True, use_head_qk_norm=True, layer_norm_eps=1e-6,
                                            rope_theta=1_000_000, tie_word_embeddings=True)
    if family == "llama":
        return TransformerConfig.llama_like(**base, **ff, layer_norm_eps=1e-5, rope_theta=500_000)
    raise ValueError(family)


@torch.no_grad()
def build_pair(family: str, a, workdir: Path):
    """(ours, OLMo-core's) computing the same function: ours is read from OLMo-core's own checkpoint."""
    from olmo_core.distributed.checkpoint import save_model_and_optim_state

    cfg = olmo_config(family, a)
    theirs = cfg.build(init_device="cpu")
    theirs.init_weights(device=torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    for key, p in theirs.named_parameters():
        if "norm" in key:
            p.copy_(torch.exp(0.3 * torch.randn(p.shape, generator=g)))
    step_dir = workdir / family
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... single process": intended
        save_model_and_optim_state(str(step_dir / "model_and_optim"), theirs)
    (step_dir / "config.json").write_text(json.dumps({"model": cfg.as_config_dict()}))
    ours = qknorm.from_olmo_core(step_dir)
    return ours.train(), theirs.train()


def step(model, ids) -> None:
    logits = model(ids[:, :-1])  # (B, T, V); OLMo-core returns logits when given no labels
    loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    model.zero_grad(set_to_none=True)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied head is counted once by both


def bench_family(family: str, a, workdir: Path) -> dict:
    ours, theirs = build_pair(family, a, workdir)
    n_ours, n_theirs = n_params(ours), n_params(theirs)
    if n_ours != n_theirs:
        raise SystemExit(f"{family}: parameter counts differ (ours {n_ours:,}, OLMo-core {n_theirs:,}); "
                         "refusing to compare unequal models")
    ids = torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((ours(ids[:, :-1]) - theirs(ids[:, :-1])).abs().max())
    t = time_pair(lambda: step(ours, ids), lambda: step(theirs, ids), rounds=a.rounds, warmup=a.warmup)
    return dict(family=family, params=n_ours, olmo_params=n_theirs, ours_ms=t.ours_ms, olmo_ms=t.theirs_ms,
                ratio=t.ratio, q25=t.q25, q75=t.q75, diff=diff)


def report(rows: List[dict], a, argv: List[str]) -> str:
    import olmo_core.version

    load = "/".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        "# Forward+backward step on CPU: qknorm vs OLMo-core", "",
        "`" + " ".join(["python bench/bench_olmo_core_cpu.py", *argv]) + "`", "",
        f"Shape: d_model={a.d_model}, n_layers={a.layers}, heads={a.heads} ({a.kv_heads} kv) x head_dim "
        f"{a.head_dim} (Qwen3/Gemma 3; {a.d_model // a.heads} for the others), d_ff={a.d_ff}, vocab={a.vocab}, "
        f"B={a.batch}, T={a.seq}, fp32, train mode. Models: OLMo-core {olmo_core.version.VERSION}'s own builders "
        "(olmo2 = llama_like with reordered_norm + full QK-norm; qwen3 = llama_like with qwen_rms + head-wise "
        "QK-norm, tied; llama = llama_like; gemma3 = gemma3_like, window T/2, every 4th layer global, tied), "
        "norm gains randomized; ours = `qknorm.from_olmo_core` of its `save_model_and_optim_state` checkpoint: "
        "the same function and weights (logits max |diff| below; parameter counts equal, checked).", "",
        "One step: logits, cross-entropy, backward, zero_grad. "
        f"{a.warmup} warm-up rounds, then {a.rounds} rounds of one step of each model in alternating order. The "
        "measurement is the ratio ours / OLMo-core (median of the per-round ratios, < 1 means ours is faster), "
        "not the absolute ms, which move with the load of the shared machine.", "",
        f"Environment: {datetime.datetime.now():%Y-%m-%d %H:%M}; CPU: {cpu_name()}, {cores} cores available, "
        f"torch.set_num_threads({a.threads}); load average (1/5/15 min) at the end {load}; Python "
        f"{platform.python_version()}, torch {torch.__version__}, ai2-olmo-core {olmo_core.version.VERSION}, qknorm "
        f"{qknorm.__version__}.", "",
        "| family | params (ours = OLMo-core) | ours ms | OLMo-core ms | ours / OLMo-core (median of paired rounds) "
        "| 25-75% | logits max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['family']} | {r['params'] / 1e6:.2f}M | {r['ours_ms']:.1f} | {r['olmo_ms']:.1f} | "
                     f"**{r['ratio']:.3f}** | {r['q25']:.3f}-{r['q75']:.3f} | {r['diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shape_args(p, FAMILIES)
    p.add_argument("--no-write", action="store_true", help="print only; do not write the result file")
    p.add_argument("--out", type=Path, default=None,
                   help="result file (default bench/results/olmo_core_cpu_<date>.md, from the current directory)")
    argv = list(argv) if argv is not None else None
    a = resolve_shape(p.parse_args(argv))
    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="qknorm-olmo-core-bench-") as tmp:
        for family in a.families:
            r = bench_family(family, a, Path(tmp))
            print(f"{family}: {r['params']:,} params each; ours {r['ours_ms']:.1f} ms, OLMo-core {r['olmo_ms']:.1f} "
                  f"ms, ratio {r['ratio']:.3f} ({r['q25']:.3f}-{r['q75']:.3f}); logits max |diff| {r['diff']:.1e}",
                  flush=True)
            rows.append(r)
    text = report(rows, a, argv if argv is not None else sys.argv[1:])
    print(text)
    if not a.no_write:
        out = a.out or Path("bench") / "results" / f"olmo_core_cpu_{datetime.date.today():%Y-%m-%d}.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    return 0
