"""The divergence rule (`qknorm.metrics.judge_divergence`) against the rule it replaced, on the same real runs.

    PYTHONPATH=src python bench/bench_divergence_rule_cpu.py --out bench/results/divergence_rule_cpu_DATE.md

Old rule (`is_diverged` before issue 31): a non-finite loss, or the final loss (mean of the last max(1, steps //
20) steps) above the first step's loss. Both rules are applied to the same loss histories:

1. wobble: a 1-layer llama (d_model 32) trained 200 steps at LR 1e-2 on the embedded bytes corpus (batch 8 x 32)
   to a plateau, then fine-tuned (`train(init_state=...)`, the path of `qknorm train --init-from`) at LR 1e-4,
   warmup 1, for 3, 10 and 50 steps over seeds 0-9 — what tests/cli/test_divergence_rule.py runs;
2. huge LR: the same fine-tune at LR 1 for 10 steps, seeds 0-2;
3. study: `study.run_one` of the smoke profile, baseline and qknorm x LR 1e-3..1 x 2 seeds x 12 and 60 steps.

Threads: 1. Records the verdict counts, every run whose verdict changed, and for the wobble runs the largest
rise as a fraction of its margin.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from collections import Counter

import torch

import qknorm
from qknorm import study
from qknorm.metrics import judge_divergence
from qknorm.train import TrainConfig
from qknorm.train.loop import train
from qknorm.data.tokens import load_tokens

TINY = dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64)


def old_rule(losses, steps: int) -> bool:
    if any(x is None or x != x or abs(x) == float("inf") for x in losses):
        return True
    tail = losses[-max(1, steps // 20):]
    return sum(tail) / len(tail) > losses[0]


def _cfg(**kw) -> TrainConfig:
    base = dict(batch_size=8, seq_len=32, device="cpu", stats_every=0, eval_batches=1, progress=False)
    return TrainConfig(**{**base, **kw})


def fine_tunes(lines):
    data = load_tokens()
    mc = qknorm.get_config("llama", "debug").replace(**TINY)
    base = train(mc, _cfg(steps=200, lr=1e-2), data)
    plateau = sum(base.history[i].loss for i in range(180, 200)) / 20
    lines.append(f"plateau model: loss {base.history[0].loss:.3f} at step 0, mean {plateau:.3f} over steps "
                 "180-199\n")
    state = base.model.state_dict()
    lines.append("| run | steps | LR | seeds | old rule diverged | new rule diverged | new verdicts | largest rise "
                 "/ margin |\n|---|---|---|---|---|---|---|---|")
    for what, steps, lr, seeds in (("wobble", 3, 1e-4, range(10)), ("wobble", 10, 1e-4, range(10)),
                                   ("wobble", 50, 1e-4, range(10)), ("huge LR", 10, 1.0, range(3))):
        old = new = 0
        reasons: Counter = Counter()
        ratio = []
        for seed in seeds:
            r = train(mc, _cfg(steps=steps, lr=lr, warmup_steps=1, seed=seed), data, init_state=state)
            losses = [h.loss for h in r.history]
            v = judge_divergence(losses, vocab_size=mc.vocab_size, grad_norms=[h.grad_norm for h in r.history])
            assert v == r.verdict
            old += old_rule(losses, steps)
            new += v.diverged
            reasons[v.reason.value] += 1
            if v.margin and not v.diverged:
                ratio.append((v.last_mean - v.first_mean) / v.margin)
        top = f"{max(ratio):.2f}" if ratio else "-"
        lines.append(f"| {what} | {steps} | {lr:g} | {len(seeds)} | {old} | {new} | {dict(reasons)} | {top} |")
    lines.append("")


def study_grid(lines):
    rows = []
    for steps in (12, 60):
        plan = study.make_plan("smoke", variants=("baseline", "qknorm"), lrs=(1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0),
                               seeds=2, steps=steps, workers=1, device="cpu")
        for spec in study.run_specs(plan, 256):
            rec = study.run_one(spec)
            old = old_rule(rec.history.loss, steps) or any(g is None for g in rec.history.grad_norm)
            rows.append((spec.name, steps, old, rec.diverged, rec.divergence.reason.value, rec.status.value))
    counts = Counter((r[2], r[3]) for r in rows)
    lines.append(f"study smoke grid: {len(rows)} runs; (old diverged, new diverged) counts: "
                 + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    lines.append("new verdicts: " + str(dict(Counter(r[4] for r in rows))))
    changed = [r for r in rows if r[2] != r[3]]
    lines.append("changed: " + ("none" if not changed else "; ".join(f"{r[0]} ({r[1]} steps): old {r[2]} -> new "
                                                                      f"{r[3]} ({r[4]})" for r in changed)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0, cpu0 = time.time(), time.process_time()
    lines = [f"# Divergence rule: old vs new on the same runs ({datetime.date.today()})", "",
             f"`PYTHONPATH=src python {' '.join(sys.argv)}`; qknorm {qknorm.__version__}, torch {torch.__version__}, "
             f"Python {platform.python_version()}, {platform.platform()}, threads 1.", ""]
    fine_tunes(lines)
    study_grid(lines)
    lines += ["", f"wall {time.time() - t0:.0f} s, process CPU {time.process_time() - cpu0:.0f} s "
                  "(a shared 2-core machine: CPU time is the cost)."]
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
