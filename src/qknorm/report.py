"""The study report: PNG plots and a self-contained report.html (images embedded as base64) from summary.json.

    write_report("study_out")            # reads study_out/summary.json and study_out/runs/*.json
    write_report(out_dir, summary)       # or from the summary dict run_study just built

Plots (matplotlib, Agg backend, written next to report.html):
  loss_vs_lr.png             final validation loss vs peak LR per variant (log x; diverged runs at l0 as x)
  max_logit_vs_lr.png        max attention logit over the run vs peak LR per variant (log-log)
  max_logit_over_steps.png   max attention logit over training, baseline vs qknorm at their highest stable LRs
  loss_curves.png            training loss curves of every variant, one panel per LR
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["write_report", "PLOTS", "what_this_shows"]

PLOTS = ("loss_vs_lr.png", "max_logit_vs_lr.png", "max_logit_over_steps.png", "loss_curves.png")
_COLORS = {"baseline": "#d62728", "qknorm": "#1f77b4", "olmo2": "#2ca02c", "gemma3": "#9467bd", "postln": "#ff7f0e"}
_UNIT = "nats/token"
_WORTSMAN_LOGIT = 1e4  # every run of Wortsman et al. 2023 with a max attention logit above this diverged


def _color(v: str) -> str:
    return _COLORS.get(v, "#555555")


def _logit(r: Dict[str, Any]) -> Optional[float]:
    return math.inf if r.get("max_attn_logit_nonfinite") else r.get("max_attn_logit")


def _loss(r: Dict[str, Any]) -> Optional[float]:
    if r.get("diverged") or r.get("error"):
        return None
    return r["val_loss"] if r.get("val_loss") is not None else r.get("final_loss")


def _stable(r: Dict[str, Any]) -> bool:
    return _loss(r) is not None


def _load_histories(out: Path, runs: List[Dict[str, Any]]) -> Dict[tuple, Dict[str, Any]]:
    from .study import RUNS_DIR, run_name

    hist = {}
    for r in runs:
        p = out / RUNS_DIR / f"{run_name(r['variant'], r['lr'], r['seed'])}.json"
        try:
            hist[(r["variant"], r["lr"], r["seed"])] = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
    return hist


# ---------------------------------------------------------------------------------------------- plots
def _plot_loss_vs_lr(ax, summary):
    runs, variants = summary["runs"], summary["config"]["variants"]
    l0s = [d["init_loss"] for d in summary.get("lr_sensitivity_detail", {}).values() if d.get("init_loss")]
    l0 = sum(l0s) / len(l0s) if l0s else None
    marked = False
    for v in variants:
        vr = [r for r in runs if r["variant"] == v]
        lrs = sorted({r["lr"] for r in vr})
        xs, ys = [], []
        for lr in lrs:
            vals = [_loss(r) for r in vr if r["lr"] == lr and _stable(r)]
            if vals:
                xs.append(lr)
                ys.append(sum(vals) / len(vals))
        ax.plot(xs, ys, "o-", color=_color(v), label=v, lw=1.8, ms=5)
        bad = [r["lr"] for r in vr if not _stable(r) and not str(r.get("error") or "").startswith("skipped")]
        if bad and l0 is not None:
            ax.plot(bad, [l0] * len(bad), "x", color=_color(v), ms=10, mew=2.5,
                    label="diverged / failed (plotted at l0)" if not marked else None)
            marked = True
    if l0 is not None:
        ax.axhline(l0, color="gray", ls="--", lw=1)
        ax.annotate(f"l0 = loss at init ({l0:.2f})", (0.01, l0), xycoords=("axes fraction", "data"),
                    va="bottom", fontsize=8, color="gray")
        finite = [_loss(r) for r in runs if _stable(r)]
        if finite:
            ax.set_ylim(min(finite) - 0.1, l0 + 0.25)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel(f"final validation loss ({_UNIT})")
    ax.set_title("Final loss vs peak learning rate (lower and flatter is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _plot_logit_vs_lr(ax, summary):
    runs, variants = summary["runs"], summary["config"]["variants"]
    top = 1.0
    for v in variants:
        pts = sorted((r["lr"], _logit(r)) for r in runs if r["variant"] == v and _logit(r) is not None)
        by_lr: Dict[float, float] = {}
        for lr, x in pts:
            by_lr[lr] = max(by_lr.get(lr, 0.0), x)
        fin = [(lr, x) for lr, x in sorted(by_lr.items()) if math.isfinite(x)]
        top = max([top] + [x for _, x in fin])
        ax.plot([p[0] for p in fin], [p[1] for p in fin], "o-", color=_color(v), label=v, lw=1.8, ms=5)
        inf = [lr for lr, x in by_lr.items() if not math.isfinite(x)]
        if inf:
            ax.plot(inf, [top * 3] * len(inf), "^", color=_color(v), ms=9, label=f"{v}: non-finite logit")
    ax.axhline(_WORTSMAN_LOGIT, color="gray", ls=":", lw=1)
    ax.annotate("1e4: every run above this diverged in Wortsman et al. 2023", (0.01, _WORTSMAN_LOGIT),
                xycoords=("axes fraction", "data"), va="bottom", fontsize=8, color="gray")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("max attention logit over the run (q·k·scale, unitless)")
    ax.set_title("Attention-logit growth vs peak learning rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _highest_stable(runs, variant) -> Optional[Dict[str, Any]]:
    ok = [r for r in runs if r["variant"] == variant and _stable(r)]
    return max(ok, key=lambda r: (r["lr"], -r["seed"])) if ok else None


def _plot_logit_over_steps(ax, summary, hist):
    runs, variants = summary["runs"], summary["config"]["variants"]
    pair = [v for v in ("baseline", "qknorm") if v in variants] or list(variants)
    shown = False
    for v in pair:
        r = _highest_stable(runs, v)
        if r is None:
            continue
        # the variant at its own highest stable LR, and at the other's when they differ
        lrs = sorted({r["lr"]} | {o["lr"] for o in (_highest_stable(runs, w) for w in pair) if o is not None})
        for i, lr in enumerate(lrs[::-1][:2]):
            h = hist.get((v, lr, r["seed"]))
            if not h or not h.get("stats_step"):
                continue
            xs = [s for s, y in zip(h["stats_step"], h["max_attn_logit"]) if y is not None]
            ys = [y for y in h["max_attn_logit"] if y is not None]
            ax.plot(xs, ys, color=_color(v), ls="-" if i == 0 else "--", lw=1.8, label=f"{v}, LR {lr:g}")
            shown = True
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("max attention logit (unitless)")
    ax.set_title("Max attention logit during training, at the highest stable LRs")
    ax.grid(True, which="both", alpha=0.3)
    if shown:
        ax.legend(fontsize=8)


def _smooth(ys: List[Optional[float]], k: int) -> List[float]:
    out, window = [], []
    for y in ys:
        window.append(math.nan if y is None else y)
        window = window[-k:]
        fin = [w for w in window if math.isfinite(w)]
        out.append(sum(fin) / len(fin) if fin else math.nan)
    return out


def _plot_loss_curves(fig, summary, hist):
    runs, cfg = summary["runs"], summary["config"]
    lrs = sorted(cfg["lrs"])
    lrs = lrs if len(lrs) <= 4 else [lrs[i] for i in sorted({round(j * (len(lrs) - 1) / 3) for j in range(4)})]
    axes = fig.subplots(1, len(lrs), sharey=True, squeeze=False)[0]
    l0 = math.log(cfg["model_shape"]["vocab_size"])
    seed = cfg["seeds"][0]
    lo = math.inf
    for ax, lr in zip(axes, lrs):
        for v in cfg["variants"]:
            h = hist.get((v, lr, seed))
            if not h or not h.get("loss"):
                continue
            k = max(1, len(h["loss"]) // 40)
            ys = _smooth(h["loss"], k)
            lo = min([lo] + [y for y in ys if math.isfinite(y)])
            r = next((x for x in runs if x["variant"] == v and x["lr"] == lr and x["seed"] == seed), {})
            ax.plot(h["step"], ys, color=_color(v), lw=1.4,
                    label=v + (" (diverged)" if r.get("diverged") else ""))
        ax.set_title(f"peak LR {lr:g}")
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel(f"training loss ({_UNIT}, moving average)")
    if math.isfinite(lo):
        axes[0].set_ylim(lo - 0.1, l0 + 0.5)
    fig.suptitle(f"Training loss curves (seed {seed})")


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_plots(out: Path, summary: Dict[str, Any]) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    hist = _load_histories(out, summary["runs"])
    paths = [out / name for name in PLOTS]
    for path, draw in zip(paths[:2], (_plot_loss_vs_lr, _plot_logit_vs_lr)):
        fig, ax = plt.subplots(figsize=(7.5, 5))
        draw(ax, summary)
        _save(fig, path)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    _plot_logit_over_steps(ax, summary, hist)
    _save(fig, paths[2])
    plt.close(fig)
    n = min(4, len(summary["config"]["lrs"]))
    fig = plt.figure(figsize=(3.6 * n + 1, 4.4))
    _plot_loss_curves(fig, summary, hist)
    _save(fig, paths[3])
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------------------------- html
def _f(x, spec=".3f") -> str:
    if x is None:
        return "–"
    if x == "inf" or (isinstance(x, float) and math.isinf(x)):
        return "inf"
    return format(x, spec) if isinstance(x, (int, float)) else html.escape(str(x))


def what_this_shows(summary: Dict[str, Any]) -> str:
    """A plain-language reading of the measured numbers (no claim the numbers do not support)."""
    c1, c2 = summary["checks"]["max_logit_ratio"], summary["checks"]["lr_sensitivity_ratio"]
    parts = []
    if c1.get("passed") is not None:
        at = next(p for p in c1["per_lr"] if p["lr"] == c1["lr"])
        parts.append(
            f"At peak learning rate {c1['lr']:g}, the model without QK-norm (baseline) reached a maximum attention "
            f"logit of {_f(at['baseline'], '.4g')}, against {_f(at['qknorm'], '.4g')} for the same model with "
            f"QK-norm: {_f(c1['value'], '.3g')} times larger"
            + (" — the attention-logit growth that QK-norm is meant to prevent." if c1["passed"] else
               ", below the 10x this study looks for."))
    if c2.get("passed") is not None:
        parts.append(
            f"Across the learning-rate grid, QK-norm's LR sensitivity (how much the final loss worsens away from "
            f"the best LR; Wortsman et al. 2023) was {c2['qknorm']:.3f} against {c2['baseline']:.3f} for the "
            f"baseline ({c2['value']:.2f}x)" + (", so a wider range of learning rates trains well with QK-norm."
                                                  if c2["value"] < 1 else
                                                  ": on this data QK-norm did not make training less sensitive."))
    div = {v: sum(bool(r.get("diverged")) for r in summary["runs"] if r["variant"] == v)
           for v in summary["config"]["variants"]}
    if any(div.values()):
        parts.append("Runs that diverged or failed: " + ", ".join(f"{v} {n}" for v, n in div.items() if n) + ".")
    else:
        parts.append("No run diverged: without QK-norm, high learning rates made the loss stall higher rather "
                     "than blow up, at this scale." if c1.get("passed") else "No run diverged.")
    sens = summary["lr_sensitivity"]
    others = [v for v in ("olmo2", "gemma3", "postln") if sens.get(v) is not None]
    if others:
        parts.append("Other variants' LR sensitivity: " + ", ".join(f"{v} {sens[v]:.3f}" for v in others) + ".")
    parts.append("These are measurements of small models trained briefly; the published effect (Wortsman et al. "
                 "2023, Dehghani et al. 2023) is that the attention-logit growth without QK-norm worsens with scale.")
    return " ".join(parts)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.pass{color:#080;
font-weight:bold}.fail{color:#b00;font-weight:bold}img{max-width:100%;margin:1em 0}.note{color:#666;font-size:13px}"""


def _table(header: List[str], rows: List[List[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(summary: Dict[str, Any], images: Dict[str, bytes]) -> str:
    cfg, checks = summary["config"], summary["checks"]
    tr = cfg["train"]
    verdict = {True: '<span class="pass">PASS</span>', False: '<span class="fail">FAIL</span>', None: "n/a"}
    check_rows = []
    for name, c in checks.items():
        check_rows.append([html.escape(c["description"]), _f(c.get("value"), ".3g"), _f(c.get("threshold"), "g"),
                           verdict[c.get("passed")], html.escape(c.get("note", ""))])
    det = summary.get("lr_sensitivity_detail", {})
    sens_rows = [[html.escape(v), _f(summary["lr_sensitivity"].get(v)), _f(det.get(v, {}).get("best_loss")),
                  _f(det.get(v, {}).get("init_loss")), html.escape(cfg.get("variant_descriptions", {}).get(v, ""))]
                 for v in cfg["variants"]]
    run_rows = []
    for r in summary["runs"]:
        sp = r.get("spike_score") or {}
        run_rows.append([html.escape(r["variant"]), f"{r['lr']:g}", str(r["seed"]), _f(r.get("val_loss")),
                         _f(r.get("final_loss")), _f(_logit(r), ".4g"), "yes" if r.get("diverged") else "no",
                         _f(sp.get("loss"), ".2f"), _f(sp.get("grad_norm"), ".2f"), _f(r.get("time_s"), ".0f"),
                         html.escape(str(r.get("error") or ""))])
    figs = "".join(f'<img alt="{n}" src="data:image/png;base64,{base64.b64encode(b).decode()}">'
                   for n, b in images.items())
    env = cfg.get("environment", {})
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>qknorm study</title>
<style>{_CSS}</style></head><body>
<h1>QK-norm stability study</h1>
<p class="note">Profile <b>{html.escape(cfg['profile'])}</b>: {len(cfg['variants'])} variants x {len(cfg['lrs'])}
peak LRs x {len(cfg['seeds'])} seed(s), {tr['steps']} steps each ({html.escape(tr['schedule'])} schedule after
{tr['warmup_steps']} warmup steps, batch {tr['batch_size']} x {tr['seq_len']} tokens, AdamW
(beta2 {tr['beta2']}, weight decay {tr['weight_decay']}), clip {tr['clip']}, {html.escape(tr['dtype'])}).
Model shape: {html.escape(json.dumps(cfg['model_shape']))}. Data: {html.escape(str(cfg['data']['source']))}.
torch {html.escape(str(env.get('torch')))} on {html.escape(str(env.get('gpu') or env.get('device')))};
wall time {cfg.get('wall_time_s', 0):.0f} s; {html.escape(cfg.get('date', ''))}.</p>
<h2>What this shows</h2><p>{html.escape(what_this_shows(summary))}</p>
<h2>Checks</h2>{_table(['check', 'measured', 'threshold', 'result', 'note'], check_rows)}
<h2>LR sensitivity per variant</h2>
<p class="note">E over the LR grid of [min(loss(lr), l0) - l*] on the final validation loss (Wortsman et al.
2023, arXiv 2309.14322); l0 = loss at initialization, l* = best loss on the grid; a diverged run counts as l0.
Lower = flatter = less sensitive to the learning rate.</p>
{_table(['variant', 'LR sensitivity', f'best val loss ({_UNIT})', 'l0', 'norms'], sens_rows)}
<h2>Plots</h2>{figs}
<h2>All runs</h2>
<p class="note">max logit: the largest attention logit seen at any stats step of the run. Spike scores: percent
of steps whose loss (grad norm) is >= 7 std from the rolling mean of the previous 100 steps (OLMo 2's rule with a
window for short runs).</p>
{_table(['variant', 'LR', 'seed', 'val loss', 'train loss', 'max logit', 'diverged', 'loss spikes %',
         'grad spikes %', 'time s', 'error'], run_rows)}
</body></html>
"""


def write_report(out_dir, summary: Optional[Dict[str, Any]] = None) -> Path:
    """Write the PNG plots and report.html into `out_dir`; returns the report's path."""
    out = Path(out_dir)
    if summary is None:
        from .study import SUMMARY_FILE

        summary = json.loads((out / SUMMARY_FILE).read_text())
    paths = write_plots(out, summary)
    page = render_html(summary, {p.name: p.read_bytes() for p in paths})
    report = out / "report.html"
    report.write_text(page, encoding="utf-8")
    return report
