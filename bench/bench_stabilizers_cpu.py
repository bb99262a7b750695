"""Step-time cost of the stabilizer mechanisms on CPU: qk_clip, sigma_reparam, Muon, against the same model with AdamW.

    PYTHONPATH=src python bench/bench_stabilizers_cpu.py --out bench/results/stabilizers_cpu_DATE.md

Every arm trains the same model shape on the same batches through `qknorm.train.loop.train` (stats pass off,
validation of one batch at the end): the arms differ only in the mechanism named. One arm's step time = the
median over its steps after the first `--skip` of the per-step wall time (metrics `time_s` differences);
arms run interleaved `--repeats` times and the median of those medians is reported, so that load from other
processes on a shared machine hits every arm alike. Threads: 1 (torch.set_num_threads).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys

import torch

import qknorm
from qknorm.train import TrainConfig
from qknorm.train.loop import train
from qknorm.data.tokens import load_tokens

ARMS = {  # name: (model overrides, training overrides)
    "adamw (baseline)": ({}, {}),
    "adamw + qk_clip=20": ({}, dict(qk_clip=20.0)),
    "adamw + sigma_reparam": (dict(sigma_reparam=True), {}),
    "muon": ({}, dict(optimizer="muon")),
    "muon + qk_clip=20": ({}, dict(optimizer="muon", qk_clip=20.0)),
}
SHAPES = {  # name: (model overrides, batch, seq_len)
    "llama debug (d 64, 2 layers, 4/2 heads of 16), B 16 x T 64": ({}, 16, 64),
    "d 128, 4 layers, 4/4 heads of 32, d_ff 512, B 8 x T 256": (dict(d_model=128, n_layers=4, n_heads=4,
                                                                      n_kv_heads=4, d_ff=512), 8, 256),
}


def step_time(model_cfg, cfg, data, skip):
    r = train(model_cfg, cfg, data)
    t = [h.time_s for h in r.history]
    return statistics.median(b - a for a, b in zip(t[skip:], t[skip + 1:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="markdown file to write (default: stdout only)")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_tokens(max_bytes=400_000)
    lines = [f"# Stabilizer step-time overhead, CPU ({datetime.date.today()})", "",
             f"Machine: {platform.machine()} {platform.processor() or ''}, 1 torch thread; shared with other jobs "
             f"(medians of interleaved repeats); Python {platform.python_version()}, torch {torch.__version__}.",
             f"Each arm: {args.steps} steps of `train()`, median step time after step {args.skip}, median of "
             f"{args.repeats} interleaved repeats; fp32, lr 3e-3, same seed and batches.", ""]
    for shape, (over, batch, seq) in SHAPES.items():
        base = qknorm.get_config("llama", "debug", **over)
        times = {a: [] for a in ARMS}
        for _ in range(args.repeats):
            for arm, (m_over, t_over) in ARMS.items():
                cfg = TrainConfig(steps=args.steps, batch_size=batch, seq_len=seq, lr=3e-3, stats_every=0,
                                  eval_batches=1, progress=False, **t_over)
                times[arm].append(step_time(base.replace(**m_over), cfg, data, args.skip))
        ref = statistics.median(times["adamw (baseline)"])
        lines += [f"## {shape} ({base.replace().num_params():,} parameters without sigma_reparam)", "",
                  "| arm | step (ms) | vs baseline | repeats (ms) |", "|---|---|---|---|"]
        for arm, ts in times.items():
            med = statistics.median(ts)
            lines.append(f"| {arm} | {1e3 * med:.1f} | {med / ref:.2f}x | "
                         f"{', '.join(f'{1e3 * t:.1f}' for t in ts)} |")
        lines.append("")
        print("\n".join(lines[-len(times) - 4:]), file=sys.stderr)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
