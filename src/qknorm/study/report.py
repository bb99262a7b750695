"""The study report: a self-contained report.html (plots embedded as base64) from a `StudySummary`.

    path, no_plots = write_report("study_out")   # reads study_out/summary.json and study_out/runs/*.json
    write_report(out_dir, summary)               # or from the summary run_study just built

It leads with a plain-language reading of the measured numbers (`what_this_shows`), then the checks, the LR
sensitivity and optimum per variant (with a warning where the grid does not bracket it), the plots (plots.py;
a note instead when matplotlib is missing), the runs left out of LR sensitivity, and every run.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .analysis import check_logit_pair
from .layout import REPORT_FILE, SUMMARY_FILE, write_atomic
from .plots import MISSING_PLOTS, UNIT, plots_available, write_plots
from .summary import StudySummary
from .table import format_notes, plural, sampling_note

__all__ = ["write_report", "render_html", "what_this_shows"]


def _f(x, spec=".3f") -> str:
    if x is None:
        return "–"
    if x == "inf" or (isinstance(x, float) and math.isinf(x)):
        return "inf"
    return format(x, spec) if isinstance(x, (int, float)) else html.escape(str(x))


def what_this_shows(summary: StudySummary) -> str:
    """A plain-language reading of the measured numbers (no claim the numbers do not support)."""
    checks = summary.analysis.checks
    c1, c2 = checks["max_logit_ratio"], checks["lr_sensitivity_ratio"]
    parts = []
    if c1.passed is not None:
        at = check_logit_pair(c1)
        parts.append(
            f"At peak learning rate {c1.lr:g}, the model without QK-norm (baseline) reached a maximum attention "
            f"logit of {_f(at['baseline'], '.4g')}, against {_f(at['qknorm'], '.4g')} for the same model with "
            f"QK-norm: {_f(c1.value, '.3g')} times larger"
            + (" — the attention-logit growth that QK-norm is meant to prevent." if c1.passed else
               ", below the 10x this study looks for."))
    if c2.passed is not None:
        parts.append(
            f"Across the learning-rate grid, QK-norm's LR sensitivity (how much the final loss worsens away from "
            f"the best LR; Wortsman et al. 2023) was {c2.qknorm:.3f} against {c2.baseline:.3f} for the "
            f"baseline ({c2.value:.2f}x)" + (", so a wider range of learning rates trains well with QK-norm."
                                               if c2.value < 1 else
                                               ": on this data QK-norm did not make training less sensitive."))
    edge = [v for v, s in summary.analysis.lr_sensitivity.items() if s.optimum.inside is False]
    if edge:
        parts.append("For " + ", ".join(edge) + " the best learning rate is at an end of the grid, so the optimum "
                     "was not measured and the LR sensitivity depends on where the grid starts.")
    div = {v: sum(r.diverged for r in summary.runs_of(v)) for v in summary.variants}
    if any(div.values()):
        parts.append("Runs that diverged (non-finite or exploding loss): "
                     + ", ".join(f"{v} {n}" for v, n in div.items() if n) + ".")
    else:
        parts.append("No run diverged: without QK-norm, high learning rates made the loss stall higher rather "
                     "than blow up, at this scale." if c1.passed else "No run diverged.")
    failed = sum(r.failed for r in summary.runs)
    if failed:
        parts.append(f"{plural(failed, 'run')} failed (raised an error or lost its worker process): they measured "
                     "nothing and are left out of LR sensitivity, not counted as divergence.")
    sens = {v: s.value for v, s in summary.analysis.lr_sensitivity.items()}
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


def _spread(mean, lo, hi, many: bool) -> str:
    return _f(mean) + (f" [{_f(lo)}–{_f(hi)}]" if many and mean is not None else "")


def _sensitivity_rows(summary: StudySummary) -> List[List[str]]:
    cfg, sens, many = summary.config, summary.analysis.lr_sensitivity, len(summary.seeds) > 1
    where = {True: "inside the grid", False: '<span class="fail">at a grid edge</span>', None: "unknown"}
    rows = []
    for v in summary.variants:
        s = sens.get(v)
        if s is None:
            rows.append([html.escape(v)] + ["–"] * 6)
            continue
        point = next((p for p in s.curve if p.lr == s.optimum.best_lr), None)
        rows.append([html.escape(v), _spread(s.value, s.lo, s.hi, many and len(s.per_seed) > 1),
                     _spread(s.best_loss, point.lo if point else None, point.hi if point else None, many),
                     _f(s.optimum.best_lr, "g"), where[s.optimum.inside] + (
                         f' <span class="note">({html.escape(s.optimum.note)})</span>' if s.optimum.note else ""),
                     _f(s.init_loss), html.escape(cfg.get("variant_descriptions", {}).get(v, ""))])
    return rows


def _run_rows(summary: StudySummary) -> List[List[str]]:
    rows = []
    for r in summary.runs:
        sp = r.spike_score
        status = r.status.value if r.status.value == "ok" else f'<span class="fail">{r.status.value}</span>'
        rows.append([html.escape(r.variant), f"{r.lr:g}", str(r.seed), _f(r.val_loss), _f(r.final_loss),
                     _f(r.logit, ".4g"), status, _f(sp.loss, ".2f"), _f(sp.grad_norm, ".2f"), _f(r.time_s, ".0f"),
                     html.escape(str(r.error or ""))])
    return rows


def render_html(summary: StudySummary, images: Dict[str, bytes], *, plots_note: str = "") -> str:
    cfg = summary.config
    tr = cfg["train"]
    many = len(summary.seeds) > 1
    verdict = {True: '<span class="pass">PASS</span>', False: '<span class="fail">FAIL</span>', None: "n/a"}
    check_rows = [[html.escape(c.description), _f(c.value, ".3g"), _f(c.threshold, "g"), verdict[c.passed],
                   html.escape(c.note)] for c in summary.analysis.checks.values()]
    figs = "".join(f'<img alt="{n}" src="data:image/png;base64,{base64.b64encode(b).decode()}">'
                   for n, b in images.items())
    if plots_note:
        figs = f'<p class="fail">No plots: {html.escape(plots_note)}.</p>'
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in format_notes(summary))
    env = cfg.get("environment", {})
    reused = cfg.get("reused_runs") or 0
    wall = f"wall time {cfg.get('wall_time_s', 0):.0f} s" + (
        f" for this invocation, which reused {plural(reused, 'finished run')} of an earlier one" if reused else "")
    spread = " (mean [min–max] over seeds)" if many else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>qknorm study</title>
<style>{_CSS}</style></head><body>
<h1>QK-norm stability study</h1>
<p class="note">{html.escape(cfg.get('label') or cfg['profile'] + ' profile')}: {plural(len(cfg['variants']), 'variant')}
x {plural(len(cfg['lrs']), 'peak LR')} x {plural(len(cfg['seeds']), 'seed')}, {tr['steps']} steps each
({html.escape(tr['schedule'])} schedule after {tr['warmup_steps']} warmup steps, batch {tr['batch_size']} x
{tr['seq_len']} tokens, AdamW (beta2 {tr['beta2']}, weight decay {tr['weight_decay']}), clip {tr['clip']},
{html.escape(tr['dtype'])}). Model shape: {html.escape(json.dumps(cfg['model_shape']))}. Data:
{html.escape(str(cfg['data']['source']))}. torch {html.escape(str(env.get('torch')))} on
{html.escape(str(env.get('gpu') or env.get('device')))}; {wall}; {html.escape(cfg.get('date', ''))}.</p>
<h2>What this shows</h2><p>{html.escape(what_this_shows(summary))}</p>
<h2>Checks</h2>{_table(['check', 'measured', 'threshold', 'result', 'note'], check_rows)}
<h2>LR sensitivity and optimum per variant</h2>
<p class="note">LR sensitivity: E over the LR grid of [min(loss(lr), l0) - l*] on the final validation loss
(Wortsman et al. 2023, arXiv 2309.14322); l0 = loss at initialization, l* = best loss on the grid; a diverged run
counts as l0; failed and cut runs are left out (the value is then undefined). Lower = flatter = less sensitive to
the learning rate. It depends on where the grid starts unless the best LR is inside the grid.</p>
{_table(['variant', f'LR sensitivity{spread}', f'best val loss ({UNIT}){spread}', 'best LR', 'optimum', 'l0',
         'norms'], _sensitivity_rows(summary))}
<ul class="note">{notes}</ul>
<h2>Plots</h2>{figs}
<h2>All runs</h2>
<p class="note">Status: ok; diverged (a measured non-finite or exploding loss); failed (raised an error or its
worker process died: nothing measured); cut (stopped or skipped by the time budget). {html.escape(sampling_note(summary))}.
Spike scores: percent of steps whose loss (grad norm) is >= 7 std from the rolling mean of the previous 100 steps
(OLMo 2's rule with a window for short runs).</p>
{_table(['variant', 'LR', 'seed', 'val loss', 'train loss', 'max logit', 'status', 'loss spikes %',
         'grad spikes %', 'time s', 'error'], _run_rows(summary))}
</body></html>
"""


def write_report(out_dir, summary: Optional[StudySummary] = None) -> Tuple[Path, str]:
    """Write the PNG plots (when matplotlib imports) and report.html into `out_dir`; returns the report's path and
    why it has no plots ("" when it has them). Plots that cannot be drawn leave a report without them that says
    why: the study's numbers are its point, and the main job never dies at its end."""
    out = Path(out_dir)
    if summary is None:
        summary = StudySummary.from_json(json.loads((out / SUMMARY_FILE).read_text()))
    images: Dict[str, bytes] = {}
    note = "" if plots_available() else MISSING_PLOTS
    if not note:
        try:
            images = {p.name: p.read_bytes() for p in write_plots(out, summary)}
        except Exception as e:  # noqa: BLE001 - reported in the page and returned
            note = f"the plots could not be drawn ({type(e).__name__}: {e})"
    report = out / REPORT_FILE
    write_atomic(report, render_html(summary, images, plots_note=note))
    return report, note
