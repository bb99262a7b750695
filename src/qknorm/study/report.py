"""The study report: a self-contained report.html (plots embedded as base64) from a `StudySummary`.

    path, no_plots = write_report("study_out")   # reads study_out/summary.json and study_out/runs/*.json
    write_report(out_dir, summary)               # or from the summary run_study just built

It leads with the leaderboard (one row per variant x optimizer with 95% CIs over seeds, sortable by any column
with a few lines of inline JavaScript), then the conclusions in words (verdicts.py: derived from the CIs) and a
plain-language reading of the QK-norm checks (`what_this_shows`), the loss-vs-LR and logit-vs-LR plots (one
panel per optimizer), the checks, the LR sensitivity and optimum per arm (with a warning where the grid does
not bracket it), the other plots (plots.py; a note instead when matplotlib is missing), the runs left out of
LR sensitivity, and every run.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .analysis import check_logit_pair
from .ci import CI_METHOD
from .layout import REPORT_FILE, SUMMARY_FILE, write_atomic
from .plots import MISSING_PLOTS, PLOTS, UNIT, plots_available, write_plots
from .study_config import StudyConfig
from .summary import StudySummary
from .table import format_notes, plural, sampling_note
from .verdicts import conclusions

__all__ = ["write_report", "render_html", "what_this_shows", "leaderboard_html"]


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
    div = {v: sum(r.diverged for r in summary.runs_of(v)) for v in summary.labels}
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


_CSS = """body{font-family:system-ui,sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.pass{color:#080;
font-weight:bold}.fail{color:#b00;font-weight:bold}img{max-width:100%;margin:1em 0}.note{color:#666;font-size:13px}
li{margin:0.3em 0}table.sortable th{cursor:pointer;user-select:none}table.sortable th:after{content:" \\2195";color:#aaa}
table.sortable td:nth-child(2),table.sortable th:nth-child(2){text-align:left}.ci{color:#777;font-size:12px}"""

# click a header: sort by its column (numbers by data-v, missing values last); click again: reverse
_SORT_JS = """document.querySelectorAll("table.sortable").forEach(t=>t.querySelectorAll("th").forEach((th,i)=>
th.addEventListener("click",()=>{const b=t.tBodies[0],d=th.dataset.dir==="asc"?-1:1;th.dataset.dir=d>0?"asc":"desc";
const k=r=>{const c=r.cells[i],v=c.dataset.v!==undefined?c.dataset.v:c.textContent,n=parseFloat(v);
return v===""?null:(isNaN(n)?v:n)};[...b.rows].sort((x,y)=>{const a=k(x),c=k(y);if(a===null||c===null)
return (a===null)-(c===null);return (a<c?-1:a>c?1:0)*d}).forEach(r=>b.appendChild(r))})));"""


def _table(header: List[str], rows: List[List[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _spread(mean, lo, hi, many: bool) -> str:
    return _f(mean) + (f" [{_f(lo)}–{_f(hi)}]" if many and mean is not None else "")


def _cell(value, spec: str = ".3f", ci=None, extra: str = "") -> str:
    """A sortable cell: the value (its number in data-v), its CI below in gray, any extra text."""
    v = "" if value is None else ("1e308" if value == "inf" or (isinstance(value, float) and math.isinf(value))
                                  else repr(float(value)))
    text = _f(value, spec) + (f'<br><span class="ci">[{_f(ci[0], spec)}, {_f(ci[1], spec)}]</span>' if ci else "")
    return f'<td data-v="{v}">{text}{extra}</td>'


_BOARD_HEAD = ["variant", "optimizer", "best val loss [95% CI]", "best LR", "LR sensitivity [95% CI]",
               "max logit @ top LR (max, min over seeds)", "attn entropy @ top LR [95% CI] (lowest layer)",
               "log Z drift @ top LR [95% CI]", "spikes @ top LR (loss/grad %)", "step time vs baseline [95% CI]",
               "diverged / runs", "status"]


def leaderboard_html(summary: StudySummary) -> str:
    """The sortable leaderboard table (every number with its interval where there is one)."""
    rows = []
    for r in summary.analysis.leaderboard:
        logit = _cell(r.max_attn_logit_top_lr, ".4g", extra=(
            f'<span class="ci"> ({_f(r.max_attn_logit_top_lr_min, ".4g")})</span>'
            if r.max_attn_logit_top_lr_min is not None and r.max_attn_logit_top_lr_min != r.max_attn_logit_top_lr
            else "") + (f'<br><span class="ci">before the cap {r.attn_softcap:g}</span>' if r.attn_softcap else ""))
        lowest = (f'<span class="ci"> ({_f(r.attn_entropy_min_layer_top_lr)})</span>'
                  if r.attn_entropy_min_layer_top_lr is not None else "")
        spikes = (f"{_f(r.loss_spike_score_top_lr, '.2f')} / {_f(r.grad_spike_score_top_lr, '.2f')}")
        status = r.status if r.status == "ok" else f'<span class="fail">{html.escape(r.status)}</span>'
        edge = '<br><span class="fail">grid edge</span>' if r.optimum_inside_grid is False else ""
        note = f'<br><span class="ci">{html.escape(r.note)}</span>' if r.note else ""
        rows.append("<tr>" + "".join([
            f"<td>{html.escape(r.variant)}</td>", f"<td>{html.escape(r.optimizer)}</td>",
            _cell(r.best_val_loss, ci=r.best_val_loss_ci95), _cell(r.best_lr, "g", extra=edge),
            _cell(r.lr_sensitivity, ci=r.lr_sensitivity_ci95), logit,
            _cell(r.attn_entropy_top_lr, ci=r.attn_entropy_top_lr_ci95, extra=lowest),
            _cell(r.log_z_drift_top_lr, "+.3f", ci=r.log_z_drift_top_lr_ci95),
            f'<td data-v="{r.loss_spike_score_top_lr if r.loss_spike_score_top_lr is not None else ""}">{spikes}</td>',
            _cell(r.step_time_ratio, ".2f", ci=r.step_time_ratio_ci95),
            f'<td data-v="{r.diverged}">{r.diverged} / {r.runs}</td>', f"<td>{status}{note}</td>"]) + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in _BOARD_HEAD)
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _board_note(summary: StudySummary) -> str:
    top = max(summary.lrs)
    basis = {r.step_time_basis for r in summary.analysis.leaderboard} - {None}
    time = ("process CPU time per step (one torch thread per run; robust to a loaded machine)" if basis == {"cpu"}
            else "wall time per step")
    return (f"One row per variant x optimizer; click a column header to sort. Uncertainty: "
            f"{html.escape(summary.config.uncertainty or CI_METHOD)}. Best val loss: at the best grid LR, "
            f"min(val loss, l0) averaged over seeds (a diverged run counts as l0). Top LR = {top:g}: max attention "
            f"logit (the largest over seeds; softcap's before its cap), mean attention entropy over layers at the "
            "last stats pass (nats; in brackets the lowest layer's: near 0 = one-hot attention), output log Z "
            "(mean logsumexp of the logits) at the end minus at step 0, OLMo 2 spike scores (window 100). Step "
            f"time: {time} against the baseline with the same optimizer, over every LR and seed.")


def _sensitivity_rows(summary: StudySummary) -> List[List[str]]:
    cfg, sens, many = summary.config, summary.analysis.lr_sensitivity, len(summary.seeds) > 1
    where = {True: "inside the grid", False: '<span class="fail">at a grid edge</span>', None: "unknown"}
    rows = []
    for v in summary.labels:
        s = sens.get(v)
        if s is None:
            rows.append([html.escape(v)] + ["–"] * 6)
            continue
        point = next((p for p in s.curve if p.lr == s.optimum.best_lr), None)
        rows.append([html.escape(v), _spread(s.value, s.lo, s.hi, many and len(s.per_seed) > 1),
                     _spread(s.best_loss, point.lo if point else None, point.hi if point else None, many),
                     _f(s.optimum.best_lr, "g"), where[s.optimum.inside] + (
                         f' <span class="note">({html.escape(s.optimum.note)})</span>' if s.optimum.note else ""),
                     _f(s.init_loss), html.escape(cfg.variant_descriptions.get(v.split("/")[0], ""))])
    return rows


def _run_rows(summary: StudySummary) -> List[List[str]]:
    rows = []
    for r in summary.runs:
        sp = r.spike_score
        status = r.status.value if r.status.value == "ok" else f'<span class="fail">{r.status.value}</span>'
        rows.append([html.escape(r.variant), html.escape(r.optimizer), f"{r.lr:g}", str(r.seed), _f(r.val_loss),
                     _f(r.final_loss),
                     _f(r.logit, ".4g"), status, _f(sp.loss, ".2f"), _f(sp.grad_norm, ".2f"), _f(r.time_s, ".0f"),
                     _f(r.cpu_s, ".1f"), _f(r.flops_per_s / 1e9 if r.flops_per_s else None, ".1f"), _f(r.mfu, ".2f"),
                     html.escape(str(r.error or ""))])
    return rows


def speed_note(cfg: StudyConfig) -> str:
    """What the speed columns mean, the probed peak and the estimate against the wall time (docs/study_speed.md)."""
    machine, est = cfg.machine, cfg.estimate
    if not machine.get("peak_flops"):
        return ""
    text = (f"GFLOP/s: training FLOPs of a step (6 N + 12 L H T per token) over its median time (CPU time on CPU); "
            f"MFU: that over this machine's probed peak, {machine['peak_flops'] / 1e9:.1f} GFLOP/s "
            f"({machine.get('peak_probe', '')}).")
    if est:
        text += (f" Estimated before training: {est['wall_s']:.0f} s wall for {est['runs']} runs on "
                 f"{est['parallel']} cores; this invocation took {cfg.wall_time_s:.0f} s.")
    return text


def render_html(summary: StudySummary, images: Dict[str, bytes], *, plots_note: str = "") -> str:
    cfg = summary.config
    tr = cfg.train
    many = len(summary.seeds) > 1
    verdict = {True: '<span class="pass">PASS</span>', False: '<span class="fail">FAIL</span>', None: "n/a"}
    check_rows = [[html.escape(c.description), _f(c.value, ".3g"), _f(c.threshold, "g"), verdict[c.passed],
                   html.escape(c.note)] for c in summary.analysis.checks.values()]
    figs_list = [f'<img alt="{n}" src="data:image/png;base64,{base64.b64encode(b).decode()}">'
                 for n, b in images.items()]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in format_notes(summary))
    env = cfg.environment
    reused = cfg.reused_runs
    wall = f"wall time {cfg.wall_time_s:.0f} s" + (
        f" for this invocation, which reused {plural(reused, 'finished run')} of an earlier one" if reused else "")
    spread = " (mean [min–max] over seeds)" if many else ""
    words = "".join(f"<h3>{html.escape(h)}</h3><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in sentences)
                    + "</ul>" for h, sentences in conclusions(summary.analysis.leaderboard, summary.variants,
                                                              summary.optimizers))
    first, rest = "".join(figs_list[:2]), "".join(figs_list[2:])
    if plots_note:
        first, rest = f'<p class="fail">No plots: {html.escape(plots_note)}.</p>', ""
    opts = summary.optimizers
    grid = " x ".join([plural(len(cfg.variants), "variant")] + ([plural(len(opts), "optimizer")] if len(opts) > 1
                                                                 else []) + [plural(len(cfg.lrs), "peak LR"),
                                                                             plural(len(cfg.seeds), "seed")])
    optim = ("AdamW" if opts == ["adamw"] else " and ".join({"adamw": "AdamW", "muon": "Muon"}.get(o, o) for o in opts)
             + " (Muon on the hidden matrices, AdamW on embeddings, head, norms and gains)")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>qknorm study</title>
<style>{_CSS}</style></head><body>
<h1>Attention stability study</h1>
<p class="note">{html.escape(cfg.label or cfg.profile + ' profile')}: {grid},
{tr.steps} steps each
({html.escape(cfg.schedule)} schedule after {tr.warmup_steps} warmup steps, batch {tr.batch_size} x
{tr.seq_len} tokens, {html.escape(optim)} (beta2 {tr.beta2}, weight decay {tr.weight_decay}),
clip {tr.clip},
{html.escape(tr.dtype.value)}). Model shape: {html.escape(json.dumps(dict(cfg.model_shape)))}. Data:
{html.escape(str(cfg.data.source))}. torch {html.escape(str(env.torch))} on
{html.escape(str(env.hardware))}; {wall}; {html.escape(cfg.date)}.</p>
<h2>Leaderboard</h2>
<p class="note">{_board_note(summary)}</p>
{leaderboard_html(summary)}
<h2>What this shows</h2>{words}<h3>The QK-norm checks</h3><p>{html.escape(what_this_shows(summary))}</p>
<h2>Loss and attention logits vs learning rate</h2>{first}
<h2>Checks</h2>{_table(['check', 'measured', 'threshold', 'result', 'note'], check_rows)}
<h2>LR sensitivity and optimum per variant</h2>
<p class="note">LR sensitivity: E over the LR grid of [min(loss(lr), l0) - l*] on the final validation loss
(Wortsman et al. 2023, arXiv 2309.14322); l0 = loss at initialization, l* = best loss on the grid; a diverged run
counts as l0; failed and cut runs are left out (the value is then undefined). Lower = flatter = less sensitive to
the learning rate. It depends on where the grid starts unless the best LR is inside the grid.</p>
{_table(['variant', f'LR sensitivity{spread}', f'best val loss ({UNIT}){spread}', 'best LR', 'optimum', 'l0',
         'norms'], _sensitivity_rows(summary))}
<ul class="note">{notes}</ul>
<h2>More plots</h2>{rest}
<h2>All runs</h2>
<p class="note">Status: ok; diverged (metrics.judge_divergence: a non-finite loss or gradient, a mean loss over
the last 5% of steps more than max(4 x its per-step noise, 0.1 nat) above the first 5%'s, or above ln(vocab);
summary.json keeps each verdict's numbers); failed (raised an error or its
worker process died: nothing measured); cut (stopped or skipped by the time budget). {html.escape(sampling_note(summary))}.
Spike scores: percent of steps whose loss (grad norm) is >= 7 std from the rolling mean of the previous 100 steps
(OLMo 2's rule with a window for short runs). {html.escape(speed_note(cfg))}</p>
{_table(['variant', 'optimizer', 'LR', 'seed', 'val loss', 'train loss', 'max logit', 'status', 'loss spikes %',
         'grad spikes %', 'time s', 'CPU s', 'GFLOP/s', 'MFU', 'error'], _run_rows(summary))}
<script>{_SORT_JS}</script>
</body></html>
"""


def write_report(out_dir, summary: Optional[StudySummary] = None, *, redraw: bool = True) -> Tuple[Path, str]:
    """Write the PNG plots (when matplotlib imports) and report.html into `out_dir`; returns the report's path and
    why it has no plots ("" when it has them). Plots that cannot be drawn leave a report without them that says
    why: the study's numbers are its point, and the main job never dies at its end. `redraw=False`: the caller
    knows the plots on disk show `summary`; they are embedded as they are when all of them exist."""
    out = Path(out_dir)
    if summary is None:
        summary = StudySummary.from_json(json.loads((out / SUMMARY_FILE).read_text()))
    images: Dict[str, bytes] = {}
    note = "" if plots_available() else MISSING_PLOTS
    drawn = [out / name for name in PLOTS]
    if not note and not redraw and all(p.is_file() for p in drawn):
        images = {p.name: p.read_bytes() for p in drawn}
    elif not note:
        try:
            images = {p.name: p.read_bytes() for p in write_plots(out, summary)}
        except Exception as e:  # noqa: BLE001 - reported in the page and returned
            note = f"the plots could not be drawn ({type(e).__name__}: {e})"
    report = out / REPORT_FILE
    write_atomic(report, render_html(summary, images, plots_note=note))
    return report, note
