"""The scaling study's report.html (plots embedded) and printed table, from a `ScalingSummary`.

The page leads with Wortsman et al.'s figure (final loss vs LR, one curve per size, per variant; LR sensitivity
vs parameters: scaling_plots.py), then the trend in words (scaling.trend_sentences: a direction only where the
slope's 95% interval excludes zero), the table of every (variant, size), the fits, how they were computed, and
links to each size's own study report.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import List, Optional, Tuple

from .layout import REPORT_FILE, write_atomic
from .plots import MISSING_PLOTS, plots_available
from .scaling import ScalingSummary, trend_sentences
from .scaling_plots import write_scaling_plots

__all__ = ["write_scaling_report", "render_scaling_html", "format_scaling_table"]


def _f(x: Optional[float], spec: str = ".3f") -> str:
    if x is None:
        return "-"
    return "inf" if isinstance(x, float) and math.isinf(x) else format(x, spec)


def _ci(ci, spec: str = ".3f") -> str:
    return f" [{_f(ci[0], spec)}, {_f(ci[1], spec)}]" if ci else ""


_HEAD = ["variant", "size", "params", "tokens a run", "best LR", "best val loss [95% CI]",
         "LR sensitivity [95% CI]", "per seed", "max logit @ top LR", "diverged / runs"]


def _rows(summary: ScalingSummary) -> List[List[str]]:
    out = []
    for r in summary.analysis.rows:
        b = r.board
        edge = " (grid edge)" if b.optimum_inside_grid is False else ""
        out.append([r.label, r.size, f"{r.params_nonembed:,}", f"{r.tokens:,}", _f(b.best_lr, "g") + edge,
                    _f(b.best_val_loss) + _ci(b.best_val_loss_ci95), _f(b.lr_sensitivity) + _ci(b.lr_sensitivity_ci95),
                    ", ".join(_f(x) for x in r.lr_sensitivity_per_seed) or "-",
                    _f(b.max_attn_logit_top_lr, ".4g") + (f" (LR {b.top_lr:g})" if b.top_lr else ""),
                    f"{b.diverged} / {b.runs}"])
    return out


def _fit_rows(summary: ScalingSummary) -> List[List[str]]:
    rows = [[k, _f(f.slope, "+.4f") + _ci(f.slope_ci95, "+.4f"), "yes" if f.resolved else "no", str(f.n_points),
             str(f.n_sizes), str(f.df)] for k, f in summary.analysis.fits.items()]
    d = summary.analysis.difference
    if d is not None:
        resolved = d.ci95 is not None and (d.ci95[0] > 0 or d.ci95[1] < 0)
        rows.append([f"{d.a} - {d.b}", _f(d.difference, "+.4f") + _ci(d.ci95, "+.4f"), "yes" if resolved else "no",
                     "", "", ""])
    return rows


def format_scaling_table(summary: ScalingSummary) -> str:
    """The printed summary: one line per (variant, size), the fits, the trend in words."""
    widths = [10, 9, 10, 10, 17, 22, 22, 14, 18, 10]
    keep = [0, 1, 2, 4, 5, 6, 8, 9]
    head = "  ".join(_HEAD[i][:widths[i]].ljust(widths[i]) for i in keep)
    lines = [head] + ["  ".join(row[i].ljust(widths[i]) for i in keep) for row in _rows(summary)]
    lines.append("")
    lines += [f"slope of LR sensitivity per 10x parameters, {row[0]}: {row[1]} (resolved: {row[2]})"
              for row in _fit_rows(summary)]
    lines += [""] + trend_sentences(summary.analysis)
    return "\n".join(lines)


def _table(header: List[str], rows: List[List[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:0.5em 0}
.note{color:#666;font-size:13px}li{margin:0.3em 0}.fail{color:#b00;font-weight:bold}"""


def render_scaling_html(summary: ScalingSummary, images: List[Tuple[str, bytes]], plots_note: str = "") -> str:
    cfg, tr = summary.config, summary.config.train
    figs = "".join(f'<img alt="{html.escape(n)}" src="data:image/png;base64,{base64.b64encode(b).decode()}">'
                   for n, b in images)
    if plots_note:
        figs = f'<p class="fail">No plots: {html.escape(plots_note)}.</p>'
    sizes = "; ".join(f"{s.name}: {json.dumps(dict(s.model_shape))}, {s.params_nonembed:,} non-embedding "
                      f"parameters, LRs {', '.join(f'{x:g}' for x in s.lrs)}" for s in cfg.sizes)
    links = "".join(f'<li><a href="{html.escape(s.dir)}/report.html">{html.escape(s.name)}</a>: the full study '
                    f'at this size (leaderboard, checks, logits, loss curves, every run)</li>' for s in cfg.sizes)
    words = "".join(f"<li>{html.escape(x)}</li>" for x in trend_sentences(summary.analysis))
    env, est = cfg.environment, cfg.estimate_s
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>qknorm scaling study</title>
<style>{_CSS}</style></head><body>
<h1>Does QK-norm matter more as models grow?</h1>
<p class="note">{html.escape(cfg.label or cfg.profile)}: {len(cfg.sizes)} model sizes x
{html.escape(', '.join(cfg.variants))} x {len(cfg.seeds)} seeds, {tr.steps} steps each
({html.escape(cfg.schedule)} schedule after {tr.warmup_steps} warmup steps, batch {tr.batch_size} x
{tr.seq_len} tokens: the same tokens at every size), {html.escape(tr.dtype.value)}. Data:
{html.escape(str(cfg.data.source))}. torch {html.escape(str(env.torch))} on
{html.escape(str(env.hardware))}; wall time {cfg.wall_time_s:.0f} s
(estimated before it started: {_f(est / 60 if est else None, '.1f')} min,
{html.escape(cfg.estimate_method or 'no estimate')});
{html.escape(cfg.date)}.</p>
<p>Wortsman et al. 2023 (arXiv 2309.14322, Fig. 1) train the same models with and without qk-layernorm at several
sizes over one learning-rate grid: without it the final loss degrades at high learning rates more as the model
grows (LR sensitivity grows with size); with it the curves stay flat. These are the same two figures, measured
here.</p>
{figs}
<h2>What this shows</h2><ul>{words}</ul>
<p class="note">A trend is stated only where the 95% interval of the fitted slope excludes zero; otherwise it is
reported as not resolved at these sizes. Small models trained briefly: the published effect appears at 10M+
parameters and long training.</p>
<h2>Every variant at every size</h2>
{_table(_HEAD, _rows(summary))}
<h2>Fitted slopes</h2>
<p class="note">{html.escape(cfg.scaling_fit_method or '')}. The difference of two slopes gets the interval
sqrt(se_a^2 + se_b^2) x t with the smaller of the two fits' degrees of freedom.</p>
{_table(['arm', 'slope per 10x params [95% CI]', 'interval excludes 0', 'points', 'sizes', 'df'],
        _fit_rows(summary))}
<h2>How it was measured</h2>
<ul class="note"><li>LR sensitivity (Wortsman et al.): E over the LR grid of [min(loss(lr), l0) - l*] on the
final validation loss, per seed; l0 = loss at initialization, l* = best loss on the grid;
{html.escape(str(cfg.lr_sensitivity_loss or ''))}.
Uncertainty: {html.escape(str(cfg.uncertainty or ''))}.</li>
<li>Sizes: {html.escape(sizes)}. Non-embedding parameters exclude the token embedding and the output head.</li>
<li>Max attention logit: the largest over seeds at the top grid LR (sampled by the stats pass: a lower bound).</li>
</ul>
<h2>Each size's study</h2><ul>{links}</ul>
</body></html>
"""


def write_scaling_report(out_dir, summary: ScalingSummary) -> Tuple[Path, str]:
    """Draw the figures (when matplotlib imports) and write report.html into `out_dir`; returns its path and why
    it has no plots ("" when it has them)."""
    out = Path(out_dir)
    note, images = ("" if plots_available() else MISSING_PLOTS), []
    if not note:
        try:
            images = [(p.name, p.read_bytes()) for p in write_scaling_plots(out, summary)]
        except Exception as e:  # noqa: BLE001 - reported in the page and returned
            note = f"the plots could not be drawn ({type(e).__name__}: {e})"
    path = out / REPORT_FILE
    write_atomic(path, render_scaling_html(summary, images, note))
    return path, note
