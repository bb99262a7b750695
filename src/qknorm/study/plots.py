"""The study's PNG plots (matplotlib, Agg backend), drawn from a `StudySummary` and the runs' histories.

  loss_vs_lr.png             final validation loss vs peak LR per variant (log x; diverged runs at l0 as x;
                             with several seeds the mean, and bars from the min to the max over seeds)
  max_logit_vs_lr.png        max attention logit over the run vs peak LR per variant (log-log; with several
                             seeds the mean, bars min to max)
  max_logit_over_steps.png   max attention logit over training, baseline vs qknorm at their highest stable LRs
  loss_curves.png            training loss curves of every variant, one panel per LR that has a finished run
With several optimizers every figure has one row of panels per optimizer (the variants compared within one
optimizer, as the leaderboard does).

matplotlib is optional (`pip install 'qknorm[plots]'`): `plots_available()` says whether it imports, and the
report is written without plots when it does not.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional

from .curve import loss_curve, spread
from .layout import read_histories
from .records import RunHistory, RunRecord, RunStatus, arm_label, run_name
from .summary import StudySummary

__all__ = ["PLOTS", "write_plots", "plots_available", "UNIT", "MISSING_PLOTS"]

MISSING_PLOTS = ("matplotlib is not installed: report.html has no plots (pip install 'qknorm[plots]', then rerun "
                 "the same command: finished runs are reused and the report is redrawn in seconds)")


def plots_available() -> bool:
    """Whether matplotlib imports (the plots' only optional dependency)."""
    try:
        __import__("matplotlib")
    except ImportError:
        return False
    return True


PLOTS = ("loss_vs_lr.png", "max_logit_vs_lr.png", "max_logit_over_steps.png", "loss_curves.png")
_COLORS = {"baseline": "#d62728", "qknorm": "#1f77b4", "olmo2": "#2ca02c", "gemma3": "#9467bd", "postln": "#ff7f0e",
           "qknorm_full": "#17becf", "qk_layernorm": "#8c564b", "qk_l2": "#e377c2", "softcap": "#bcbd22",
           "qk_clip": "#7f7f7f", "z_loss": "#393b79", "sigma_reparam": "#000000",
           "clip_qkv": "#aec7e8"}
_DASHED = ("qknorm_full", "qk_layernorm", "qk_l2", "softcap", "qk_clip", "z_loss", "sigma_reparam", "clip_qkv")
UNIT = "nats/token"
_WORTSMAN_LOGIT = 1e4  # every run of Wortsman et al. 2023 with a max attention logit above this diverged
_OPT_NAMES = {"adamw": "AdamW", "muon": "Muon"}
Histories = Dict[str, RunHistory]  # by run name


def _color(v: str) -> str:
    return _COLORS.get(v, "#555555")


def _style(v: str) -> Dict[str, object]:
    """Color and line style of a variant (the stabilizers on the llama block dashed, the families solid)."""
    return {"color": _color(v), "ls": "--" if v in _DASHED else "-"}


def _opt_title(summary: StudySummary, opt: str) -> str:
    """"" for a one-optimizer study (its figures read as before), else "AdamW: "."""
    return f"{_OPT_NAMES.get(opt, opt)}: " if len(summary.optimizers) > 1 else ""


def _l0(summary: StudySummary) -> Optional[float]:
    l0s = [s.init_loss for s in summary.analysis.lr_sensitivity.values() if s.init_loss]
    return sum(l0s) / len(l0s) if l0s else None


def _errorbar(ax, xs, mean, lo, hi, many: bool, **kw) -> None:
    """A line through the means; with several seeds, bars from the min to the max over seeds."""
    if many and xs:
        ax.errorbar(xs, mean, yerr=[[m - a for m, a in zip(mean, lo)], [b - m for m, b in zip(mean, hi)]],
                    marker="o", capsize=3, **kw)
    else:
        ax.plot(xs, mean, marker="o", **kw)


def _finish(ax, lrs: List[float], missing: List[str], *, logy: bool) -> bool:
    """Log axes with the grid's LRs as ticks, legend and a note on variants with nothing to show; a gray note
    instead on an empty panel. Returns whether anything was plotted."""
    if not ax.get_legend_handles_labels()[0]:
        _nothing(ax, "no finished run")
        return False
    ax.set_xscale("log")
    ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])  # the grid, labelled as the user typed it
    ax.set_xticks([], minor=True)
    if logy:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a point
    if missing:
        ax.annotate("no finished run: " + ", ".join(missing), (0.99, 0.01), xycoords="axes fraction",
                    ha="right", va="bottom", fontsize=8, color="gray")
    return True


def _plot_loss_vs_lr(ax, summary: StudySummary, opt: str) -> None:
    many = len(summary.seeds) > 1
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel(f"final validation loss ({UNIT})")
    seeds = f" (mean of {len(summary.seeds)} seeds, bars: min to max)" if many else ""
    ax.set_title(f"{_opt_title(summary, opt)}Final loss vs peak learning rate{seeds}\n(lower and flatter is "
                 "better)", fontsize=11)
    l0 = _l0(summary)
    marked, missing = False, []
    for v in summary.variants:
        vr = summary.runs_of(arm_label(v, opt))
        ok = [p for p in loss_curve([r for r in vr if not r.diverged], summary.lrs, l0 or math.inf) if p.n]
        if ok:
            _errorbar(ax, [p.lr for p in ok], [p.mean for p in ok], [p.lo for p in ok], [p.hi for p in ok], many,
                      label=v, lw=1.8, ms=5, **_style(v))
        bad = [r.lr for r in vr if r.diverged]
        if bad and l0 is not None:
            ax.plot(bad, [l0] * len(bad), "x", color=_color(v), ms=10, mew=2.5,
                    label="diverged (plotted at l0)" if not marked else None)
            marked = True
        if not ok and not bad:
            missing.append(v)
    starred = False
    for v in summary.variants:  # each variant's best grid LR
        sens = summary.analysis.lr_sensitivity.get(arm_label(v, opt))
        best = sens.optimum if sens is not None else None
        if best is not None and best.best_lr is not None:
            ax.plot([best.best_lr], [best.best_loss], "*", color=_color(v), ms=15, mec="black", mew=0.8, zorder=5)
            starred = True
    if starred:
        ax.plot([], [], "*", color="white", mec="black", ms=12, label="best LR of each variant")
    if not _finish(ax, summary.lrs, missing, logy=False):
        return
    means = [r.sens_loss for r in summary.runs if r.sens_loss is not None and r.optimizer == opt]
    if means:  # zoom on the measured losses; show l0 only when a diverged run is plotted there
        lo, hi = min(means), max(means)
        pad = 0.08 * (hi - lo) + 0.03
        ax.set_ylim(lo - pad, (l0 + 0.25) if marked and l0 is not None else hi + pad)
    if l0 is not None and marked:
        ax.axhline(l0, color="gray", ls="--", lw=1)
        ax.annotate(f"l0 = loss at init ({l0:.2f})", (0.01, l0), xycoords=("axes fraction", "data"),
                    va="bottom", fontsize=8, color="gray")
    elif l0 is not None:
        ax.set_title(ax.get_title().replace("better)", f"better; loss at init l0 = {l0:.2f}, above the plot)"),
                     fontsize=11)


def _plot_logit_vs_lr(ax, summary: StudySummary, opt: str) -> None:
    top = 1.0
    many = len(summary.seeds) > 1
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("max attention logit over the run (q·k·scale, unitless)")
    seeds = f" (mean of {len(summary.seeds)} seeds, bars: min to max)" if many else ""
    ax.set_title(f"{_opt_title(summary, opt)}Attention-logit growth vs peak learning rate{seeds}\n(sampled: a lower "
                 "bound of each run's maximum; before any softcap)", fontsize=11)
    missing = []
    for v in summary.variants:
        by_lr: Dict[float, List[float]] = {}
        for r in summary.runs_of(arm_label(v, opt)):
            if r.logit is not None and r.status.measured:
                by_lr.setdefault(r.lr, []).append(r.logit)
        fin = [(lr, spread(xs)) for lr, xs in sorted(by_lr.items()) if all(math.isfinite(x) for x in xs)]
        top = max([top] + [st[2] for _, st in fin])
        if fin:
            _errorbar(ax, [lr for lr, _ in fin], [st[0] for _, st in fin], [st[1] for _, st in fin],
                      [st[2] for _, st in fin], many, label=v, lw=1.8, ms=5, **_style(v))
        inf = [lr for lr, xs in by_lr.items() if not all(math.isfinite(x) for x in xs)]
        if inf:
            ax.plot(inf, [top * 3] * len(inf), "^", color=_color(v), ms=9, label=f"{v}: non-finite logit")
        if not fin and not inf:
            missing.append(v)
    if _finish(ax, summary.lrs, missing, logy=True):
        ax.axhline(_WORTSMAN_LOGIT, color="gray", ls=":", lw=1)
        ax.annotate("1e4: every run above this diverged in Wortsman et al. 2023", (0.01, _WORTSMAN_LOGIT),
                    xycoords=("axes fraction", "data"), va="bottom", fontsize=8, color="gray")


def _highest_stable(runs: List[RunRecord]) -> Optional[RunRecord]:
    ok = [r for r in runs if r.sens_loss is not None]
    return max(ok, key=lambda r: (r.lr, -r.seed)) if ok else None


def _plot_logit_over_steps(ax, summary: StudySummary, hist: Histories, opt: str) -> None:
    pair = [v for v in ("baseline", "qknorm") if v in summary.variants] or summary.variants
    runs = {v: summary.runs_of(arm_label(v, opt)) for v in pair}
    shown = False
    for v in pair:
        r = _highest_stable(runs[v])
        if r is None:
            continue
        # the variant at its own highest stable LR, and at the other's when they differ
        lrs = sorted({r.lr} | {o.lr for o in (_highest_stable(runs[w]) for w in pair) if o is not None})
        for i, lr in enumerate(lrs[::-1][:2]):
            h = hist.get(run_name(v, lr, r.seed, opt))
            if not h or not h.stats_step:
                continue
            xs = [s for s, y in zip(h.stats_step, h.max_attn_logit) if y is not None]
            ys = [y for y in h.max_attn_logit if y is not None]
            ax.plot(xs, ys, color=_color(v), ls="-" if i == 0 else "--", lw=1.8, label=f"{v}, LR {lr:g}")
            shown = True
    ax.set_xlabel("training step")
    ax.set_ylabel("max attention logit (unitless)")
    ax.set_title(f"{_opt_title(summary, opt)}Max attention logit during training, at the highest stable LRs")
    ax.grid(True, which="both", alpha=0.3)
    if shown:
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    else:
        _nothing(ax, "no finished run recorded its max attention logit")


def _smooth(ys: List[Optional[float]], k: int) -> List[float]:
    out, window = [], []
    for y in ys:
        window.append(math.nan if y is None else y)
        window = window[-k:]
        fin = [w for w in window if math.isfinite(w)]
        out.append(sum(fin) / len(fin) if fin else math.nan)
    return out


def _curve_lrs(summary: StudySummary, hist: Histories) -> List[float]:
    """Up to 4 grid LRs, spread over the grid, among those with a recorded loss curve (first seed)."""
    seed = summary.seeds[0]
    lrs = sorted(lr for lr in summary.lrs if any((hist.get(run_name(v, lr, seed, o)) or RunHistory()).loss
                                                    for v, o in summary.arms))
    return lrs if len(lrs) <= 4 else [lrs[i] for i in sorted({round(j * (len(lrs) - 1) / 3) for j in range(4)})]


def _nothing(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="gray")


def _plot_loss_curves(fig, summary: StudySummary, hist: Histories) -> None:
    lrs = _curve_lrs(summary, hist)
    grid = fig.subplots(len(summary.optimizers), max(1, len(lrs)), sharey=True, squeeze=False)
    l0 = math.log(summary.config.vocab_size)
    seed = summary.seeds[0]
    if not lrs:
        _nothing(grid[0][0], "no run recorded a loss curve")
    lo = math.inf
    for axes, opt in zip(grid, summary.optimizers):
        for ax, lr in zip(axes, lrs):
            for v in summary.variants:
                h = hist.get(run_name(v, lr, seed, opt))
                if not h or not h.loss:
                    continue
                ys = _smooth(h.loss, max(1, len(h.loss) // 40))
                lo = min([lo] + [y for y in ys if math.isfinite(y)])
                r = next((x for x in summary.runs_of(arm_label(v, opt)) if x.lr == lr and x.seed == seed), None)
                tag = f" ({r.status.value})" if r is not None and r.status is not RunStatus.OK else ""
                ax.plot(h.step, ys, lw=1.4, label=v + tag, **_style(v))
            ax.set_title(f"{_opt_title(summary, opt)}peak LR {lr:g}")
            ax.set_xlabel("training step")
            ax.grid(True, alpha=0.3)
        shown = [ax for ax in axes if ax.get_legend_handles_labels()[0]]
        if shown:  # one legend a row, outside its last panel: never hides a curve
            shown[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        axes[0].set_ylabel(f"training loss ({UNIT}, moving average)")
    if math.isfinite(lo):
        grid[0][0].set_ylim(lo - 0.1, l0 + 0.5)
    fig.suptitle(f"Training loss curves (seed {seed})")


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_plots(out: Path, summary: StudySummary, hist: Optional[Histories] = None) -> List[Path]:
    """Draw the four plots into `out`; histories are read from out/runs/ unless given."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    hist = read_histories(out, summary.runs) if hist is None else hist
    paths = [out / name for name in PLOTS]
    n_opt = len(summary.optimizers)
    for path, draw, size in zip(paths[:3], (_plot_loss_vs_lr, _plot_logit_vs_lr, None),
                                ((9, 5), (9, 5), (7.5, 5))):
        fig, axes = plt.subplots(n_opt, 1, figsize=(size[0], size[1] * n_opt), squeeze=False)
        for ax, opt in zip(axes[:, 0], summary.optimizers):
            if draw is None:
                _plot_logit_over_steps(ax, summary, hist, opt)
            else:
                draw(ax, summary, opt)
        _save(fig, path)
        plt.close(fig)
    n = max(1, len(_curve_lrs(summary, hist)))
    fig = plt.figure(figsize=(3.6 * n + 1, 4.4 * n_opt))
    _plot_loss_curves(fig, summary, hist)
    _save(fig, paths[3])
    plt.close(fig)
    return paths
