"""The markdown of a training-step result (train_step.py's JSON record -> the tables it prints and writes).

Speed ratios are shown only between variants of one table, whose models the benchmark checked to be equal
(parameter count, head_dim, head counts); the QK-norm cost compares each variant with its `_noqk` twin.
"""
from __future__ import annotations

from typing import Dict, List

REFS = (("hf", "HF"), ("hf_compile", "HF compile"), ("hf_liger", "HF Liger"))


def _gb(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def _table(rows: Dict[str, dict], refs) -> List[str]:
    refs = [(k if k in rows else k + "_noqk", label) for k, label in refs]
    refs = [(k, label, rows[k]["ms"]) for k, label in refs if "ms" in rows.get(k, {})]
    lines = ["| variant | params | ms/step | tokens/s | peak GB | " + " | ".join(f"speed vs {lb}" for _, lb, _ in refs)
             + " |", "|---|---|---|---|---|" + "---|" * len(refs)]
    for name, r in rows.items():
        params = f"{r['params']:,}"
        if "error" in r:
            lines.append(f"| {name} | {params} | error: {r['error'][:80]} | | |" + " |" * len(refs))
            continue
        lines.append(f"| {name} | {params} | {r['ms']:.1f} | {r['tok_s']:,.0f} | {_gb(r['peak_GB'])} | " +
                     " | ".join(f"{ms / r['ms']:.2f}x" for _, _, ms in refs) + " |")
    return lines


def qk_norm_costs(res: dict) -> Dict[str, dict]:
    """{variant: {with_ms, without_ms, pct}} for every variant timed with and without QK-norm."""
    out = {}
    for name, r in res["variants"].items():
        twin = res["variants_without_qk_norm"].get(name + "_noqk", {})
        if "ms" in r and "ms" in twin:
            out[name] = dict(with_ms=r["ms"], without_ms=twin["ms"], pct=100.0 * (r["ms"] / twin["ms"] - 1.0))
    return out


def render(res: dict) -> str:
    s = res["shape"]
    models = res["models"]
    first = next(iter(models.values()))
    lines = [f"# Training step: {res['device']}", "",
             f"{res['time_utc']}; " + ", ".join(f"{k} {v}" for k, v in res["versions"].items() if v), "",
             f"Command: `{' '.join(res['argv'])}`", "",
             f"Shape: vocab {s['vocab_size']}, d_model {s['d_model']}, {s['n_layers']} layers, {s['n_heads']} heads "
             f"({s['n_kv_heads']} kv) of head_dim {first['head_dim']}, d_ff {s['d_ff']}; B={s['batch']}, "
             f"T={s['seq_len']}, {res['dtype']}, {res['optimizer']}; one step = forward + backward + optimizer. "
             f"Timing: {res['timer']['method']}.", ""]
    if res["variants"]:
        lines += ["## With QK-norm (equal models: every row has the parameter count shown)", ""]
        lines += _table(res["variants"], REFS) + [""]
    if res["variants_without_qk_norm"]:
        lines += ["## Without QK-norm (q_norm/k_norm removed; equal models among these rows)", ""]
        lines += _table(res["variants_without_qk_norm"], REFS) + [""]
    costs = qk_norm_costs(res)
    if costs:
        lines += ["## QK-norm cost (each variant vs the same variant without QK-norm)", "",
                  "| variant | with QK-norm ms | without ms | QK-norm cost |", "|---|---|---|---|"]
        lines += [f"| {n} | {c['with_ms']:.1f} | {c['without_ms']:.1f} | {c['pct']:+.1f}% |" for n, c in costs.items()]
        lines.append("")
    if not res.get("complete", True):
        lines += ["(incomplete: the run stopped before every variant was timed)", ""]
    return "\n".join(lines).rstrip() + "\n"
