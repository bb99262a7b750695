"""The markdown of a kernel benchmark result (kernel.py's JSON record -> the tables it prints and writes)."""
from __future__ import annotations

from typing import List

NAMES = ("eager", "compile", "liger", "ours", "ours_compile", "ours_kernels")


def _fmt(x, nd=3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def _kernel_tables(res: dict) -> List[str]:
    lines = []
    for kind in ("fwd", "fwdbwd"):
        lines += [f"## {'forward' if kind == 'fwd' else 'forward + backward'} (ms per call)", "",
                  "| shape (B,T,H,Hkv,D) | scope | floor | " + " | ".join(NAMES) +
                  " | ours x floor | kernels x floor | eager/ours | compile/ours | liger/ours | ours rel. err |",
                  "|" + "---|" * (len(NAMES) + 9)]
        for r in res["qkrope"]:
            t = {n: r.get(f"{n}_{kind}_ms") for n in NAMES}
            o, fl = t["ours"], r.get(f"floor_{kind}_ms")
            lines.append(f"| {tuple(r['shape'])} | {r['scope']} | {_fmt(fl)} | " + " | ".join(_fmt(t[n]) for n in NAMES)
                         + f" | {_ratio(o, fl)} | {_ratio(t['ours_kernels'], fl)} | {_ratio(t['eager'], o)} | "
                         f"{_ratio(t['compile'], o)} | {_ratio(t['liger'], o)} | {_fmt(r.get('ours_relerr'), 5)} |")
        lines.append("")
    return lines


def _sweep_table(res: dict) -> List[str]:
    lines = ["## launch-config sweep (ours; fwd = forward kernel, bwd = backward kernel + dW sum; * = table)", "",
             "| shape | scope | kernel | block_t | num_warps | programs/SM | ms |", "|---|---|---|---|---|---|---|"]
    for r in res["sweep"]:
        if "ms" in r:
            lines.append(f"| {tuple(r['shape'])} | {r['scope']} | {r['kind']} | {r['block_t']} | {r['num_warps']} | "
                         f"{r['programs_per_sm'] or 'auto'} | {r['ms']:.3f}{' *' if r['default'] else ''} |")
        else:
            lines.append(f"| {tuple(r['shape'])} | {r['scope']} | {r['kind']} | {r['config']} | error: "
                         f"{r['error'][:80]} | | |")
    return lines + [""]


def _layer_table(res: dict) -> List[str]:
    lines = ["## attention sub-layer fwd+bwd (q,k,v,o projections + causal SDPA), ms", "",
             "`eager overhead`, `ours overhead`: vs the layer with eager RoPE and no QK-norm; `ours norm cost`: ours "
             "vs the same fused kernel doing RoPE only (the QK-norm's own cost).", "",
             "| B,T,d,H,Hkv,D | projections | no QK-norm | eager QK-norm | ours | ours RoPE-only | eager overhead | "
             "ours overhead | ours norm cost |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["layer"]:
        pct = lambda k: f"{r[k]:+.1f}%" if k in r else "-"  # noqa: E731
        lines.append(f"| {tuple(r['shape'])} | {r['projection_params_M']:.2f}M | {_fmt(r.get('none_fwdbwd_ms'), 2)} | "
                     f"{_fmt(r.get('eager_fwdbwd_ms'), 2)} | {_fmt(r.get('ours_fwdbwd_ms'), 2)} | "
                     f"{_fmt(r.get('ours_rope_fwdbwd_ms'), 2)} | {pct('eager_overhead_pct')} | "
                     f"{pct('ours_overhead_pct')} | {pct('ours_norm_pct')} |")
    return lines + [""]


def markdown(res: dict) -> str:
    vs = ", ".join(f"{k} {v}" for k, v in res["versions"].items() if v)
    lines = [f"# QK-RMSNorm + RoPE: {res['device']}", "", f"{res['time_utc']}; {vs}", "",
             f"Command: `{' '.join(res['argv'])}`", "",
             f"{res['dtype']}; timing: {res['timer']['method']}. `floor` is a torch copy of the bytes the pass must "
             f"move (forward: q+k read and written once; forward+backward: that plus a copy of 1.5x q+k), measured "
             f"the same way in the same run (copy rate {res['copy_TBps']:.2f} TB/s). `ours x floor`: ours / floor "
             f"(1.00 = at the floor); `eager/ours`, `compile/ours`, `liger/ours`: speedups of ours (higher is "
             f"better). `ours_kernels` launches our two kernels directly (no autograd or op dispatch): the device "
             f"time; `ours` minus it is host time.", ""]
    if res.get("liger_note"):
        lines += [f"Liger: {res['liger_note']}", ""]
    lines += _kernel_tables(res)
    errs = [(tuple(r["shape"]), r["scope"], k, v) for r in res["qkrope"] for k, v in r.items() if k.endswith("_error")]
    if errs:
        lines += ["Errors:", ""] + [f"- {s} {sc} {k}: `{v}`" for s, sc, k, v in errs] + [""]
    if res.get("sweep"):
        lines += _sweep_table(res)
    if res.get("layer"):
        lines += _layer_table(res)
    return "\n".join(lines).rstrip() + "\n"
