"""The scaling study's figures (matplotlib, Agg), the two Wortsman et al. 2023 (arXiv 2309.14322) lead with:

  scaling_loss_vs_lr.png      final validation loss vs peak LR, one curve per model size, one panel per arm
                              (variant; "variant/optimizer" for other optimizers), panels sharing both axes; the
                              loss is Wortsman's clipped one (min(loss, l0), a diverged run at l0), the mean over
                              seeds with bars from the min to the max; a star at each size's best grid LR
  scaling_sensitivity.png     LR sensitivity vs non-embedding parameters (log x), per arm: each seed's value
                              (small dots), the mean with its 95% CI, and the fitted line (scaling.py)
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List

from .plots import UNIT
from .scaling import ScalingSummary, fmt_params

__all__ = ["SCALING_PLOTS", "write_scaling_plots"]

SCALING_PLOTS = ("scaling_loss_vs_lr.png", "scaling_sensitivity.png")
_ARM_COLORS = {"baseline": "#d62728", "qknorm": "#1f77b4"}


def _size_label(name: str, params: int) -> str:
    return f"{name} ({fmt_params(params)})"


def _loss_vs_lr(plt, summary: ScalingSummary, path: Path) -> None:
    labels = list(summary.analysis.fits)
    fig, axes = plt.subplots(1, max(1, len(labels)), figsize=(5.2 * max(1, len(labels)) + 1.6, 4.8), sharex=True,
                             sharey=True, squeeze=False)
    cmap = plt.get_cmap("viridis")
    n = len(summary.sizes)
    l0s, losses, lrs = [], [], sorted({lr for s in summary.sizes for lr in s.summary.lrs})
    for ax, label in zip(axes[0], labels):
        for i, size in enumerate(summary.sizes):
            sens = size.summary.analysis.lr_sensitivity.get(label)
            if sens is None:
                continue
            l0s.append(sens.init_loss)
            pts = [p for p in sens.curve if p.n]
            color = cmap(i / max(1, n - 1) * 0.85)
            xs, ys = [p.lr for p in pts], [p.mean for p in pts]
            losses += ys
            ax.errorbar(xs, ys, yerr=[[p.mean - p.lo for p in pts], [p.hi - p.mean for p in pts]], marker="o",
                        ms=4, capsize=2, lw=1.8, color=color, label=_size_label(size.name, size.params_nonembed))
            div = [p for p in pts if p.diverged]
            ax.plot([p.lr for p in div], [p.mean for p in div], "x", color=color, ms=9, mew=2)
            if sens.optimum.best_lr is not None:
                ax.plot([sens.optimum.best_lr], [sens.optimum.best_loss], "*", color=color, ms=14, mec="black",
                        mew=0.7, zorder=5)
        ax.set_xscale("log")
        ax.set_xticks(lrs, [f"{lr:g}" for lr in lrs])
        ax.set_xticks([], minor=True)
        ax.set_title(label, fontsize=12)
        ax.set_xlabel("peak learning rate")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel(f"final validation loss ({UNIT})")
    if l0s:
        l0 = sum(l0s) / len(l0s)
        for ax in axes[0]:
            ax.axhline(l0, color="gray", ls="--", lw=1)
        axes[0][0].annotate(f"l0 = loss at init ({l0:.2f}); x: a seed diverged (counted as l0)", (0.02, l0),
                            xycoords=("axes fraction", "data"), va="bottom", fontsize=8, color="gray")
        if losses:
            axes[0][0].set_ylim(min(losses) - 0.1, max(max(losses), l0) + 0.2)
    axes[0][-1].legend(title="model size (non-embedding params)", fontsize=8, title_fontsize=8, loc="upper left",
                       bbox_to_anchor=(1.01, 1.0))
    seeds = len(summary.config.seeds)
    fig.suptitle(f"Final loss vs learning rate, one curve per model size (mean of {seeds} seeds, bars min to max; "
                 "stars: each size's best LR)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sensitivity(plt, summary: ScalingSummary, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    params = [s.params_nonembed for s in summary.sizes]
    for k, (label, fit) in enumerate(summary.analysis.fits.items()):
        color = _ARM_COLORS.get(label, f"C{k + 2}")
        rows = summary.analysis.rows_of(label)
        for r in rows:
            ax.plot([r.params_nonembed] * len(r.lr_sensitivity_per_seed), r.lr_sensitivity_per_seed, ".",
                    color=color, alpha=0.5, ms=6)
        have = [r for r in rows if r.board.lr_sensitivity is not None]
        xs, ys = [r.params_nonembed for r in have], [r.board.lr_sensitivity for r in have]
        err = [[y - (r.board.lr_sensitivity_ci95 or (y, y))[0] for r, y in zip(have, ys)],
               [(r.board.lr_sensitivity_ci95 or (y, y))[1] - y for r, y in zip(have, ys)]]
        ci = (f" [{fit.slope_ci95[0]:+.3f}, {fit.slope_ci95[1]:+.3f}]" if fit.slope_ci95 else "")
        slope = f"slope {fit.slope:+.3f}{ci} per 10x" if fit.slope is not None else "no fit"
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=4, lw=0, elinewidth=1.5, color=color,
                    label=f"{label} (mean, 95% CI): {slope}")
        if fit.slope is not None and params:
            fx = [min(params), max(params)]
            ax.plot(fx, [fit.intercept + fit.slope * math.log10(x) for x in fx], "--", color=color, lw=1.2)
    ax.set_xscale("log")
    ax.set_xticks(params, [fmt_params(p) for p in params])
    ax.set_xticks([], minor=True)
    ax.set_xlabel("non-embedding parameters")
    ax.set_ylabel("LR sensitivity (Wortsman et al.; lower = flatter)")
    ax.set_title("LR sensitivity vs model size (dots: each seed; dashed: least-squares fit)", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_scaling_plots(out: Path, summary: ScalingSummary) -> List[Path]:
    """Draw both figures into `out`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    paths = [out / name for name in SCALING_PLOTS]
    _loss_vs_lr(plt, summary, paths[0])
    _sensitivity(plt, summary, paths[1])
    return paths
