"""The retrofit's record: retrofit_report.json (the numbers), healing_curve.png and retrofit_report.html (a
self-contained page: the numbers in words and tables, the plot embedded).

Every KL is the mean next-token KL(P_original || P_model) on held-out windows, and every loss the mean
cross-entropy there, in nats per token; `kl_healed`/`val_loss_healed` are null without healing.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..io.files import atomic_write_bytes
from ..version import __version__
from ..progress import StageTime, fmt_seconds
from .calibrate import LayerFit
from .heal import HealResult

__all__ = ["REPORT_JSON", "REPORT_HTML", "CURVE_PNG", "RetrofitReport", "write_report"]

REPORT_JSON, REPORT_HTML, CURVE_PNG = "retrofit_report.json", "retrofit_report.html", "healing_curve.png"
_FORMAT = "qknorm-retrofit"


@dataclasses.dataclass(frozen=True)
class RetrofitReport:
    source: Dict[str, Any]  # Pretrained.record(): path, format, sha256 of the weight files, tokenizer
    scope: str  # head | full
    export: str  # "hf/<model_type>" (transformers loads the output directory) or "qknorm" (our format)
    data: str  # where the calibration, healing and held-out tokens came from
    settings: Dict[str, Any]  # RetrofitConfig.to_dict()
    eval_tokens: int
    kl_naive: float  # QK-norm inserted with gains 1
    kl_calibrated: float  # with the calibrated gains (the model before healing)
    kl_healed: Optional[float]
    val_loss_original: float
    val_loss_naive: float
    val_loss_retrofitted: float
    val_loss_healed: Optional[float]
    calibration_kept: str  # "fitted", or "naive" when the fitted gains did worse end to end (held-out KL)
    layers: List[LayerFit]
    heal: Optional[HealResult]
    seconds: Dict[str, float]  # calibrate (its four stages), heal (the updates alone), total
    # the model written: "calibrated" (no healing, or healing measured worse) or "healed"; and in words, why
    kept: str = "calibrated"
    kept_because: str = "no healing"
    stages: List[StageTime] = dataclasses.field(default_factory=list)  # every stage's wall and CPU seconds
    peak_rss_mb: Optional[float] = None  # the process's peak resident memory when the report was made, MiB

    def to_json(self) -> Dict[str, Any]:
        layers = [{"layer": f.layer, "attn_kl_naive": f.kl_naive, "attn_kl_rms_matched": f.kl_rms_matched,
                   "attn_kl_fitted": f.kl_fitted, "fit_steps": f.steps, "q_scale_mean": float(f.q_scale.mean()),
                   "k_scale_mean": float(f.k_scale.mean()), "q_scale": [float(v) for v in f.q_scale],
                   "k_scale": [float(v) for v in f.k_scale]} for f in self.layers]
        heal = None
        if self.heal is not None:
            heal = {"objective": self.heal.objective, "seconds": self.heal.seconds,
                    "curve": {"step": [s.step for s in self.heal.steps], "loss": [s.loss for s in self.heal.steps],
                              "lr": [s.lr for s in self.heal.steps]},
                    "evals": [dataclasses.asdict(e) for e in self.heal.evals],
                    "divergence": self.heal.verdict.to_json() if self.heal.verdict is not None else None}
        out = {"format": _FORMAT, "units": "nats per token (KL: mean over held-out positions of "
                                           "KL(P_original || P_model) of the next token)"}
        for f in dataclasses.fields(self):
            if f.name not in ("layers", "heal", "stages"):
                out[f.name] = getattr(self, f.name)
        out.update(layers=layers, heal=heal, stages=[dataclasses.asdict(t) for t in self.stages],
                   qknorm=__version__, torch=torch.__version__, python=platform.python_version(),
                   machine=platform.machine(),
                   created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        return out


def write_report(out: Path, report: RetrofitReport) -> List[Path]:
    """retrofit_report.json, the healing curve (when healed) and retrofit_report.html into `out`."""
    paths = [out / REPORT_JSON]
    atomic_write_bytes(out / REPORT_JSON, (json.dumps(_finite(report.to_json()), indent=1) + "\n").encode())
    png = None
    if report.heal is not None and report.heal.steps:
        png = _plot(out / CURVE_PNG, report)
        paths.append(png)
    atomic_write_bytes(out / REPORT_HTML, _html(report, png).encode())
    return paths + [out / REPORT_HTML]


def _finite(x: Any) -> Any:
    """Strict JSON: non-finite floats as null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def _plot(path: Path, r: RetrofitReport) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    h = r.heal
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ev = h.evals
    a1.plot([e.step for e in ev], [e.kl for e in ev], "o-", color="#1f77b4", label="held-out KL")
    a1.axhline(r.kl_naive, color="#d62728", ls="--", label=f"gains 1 (naive): {r.kl_naive:.3g}")
    a1.set_yscale("log")
    a1.set_xlabel("healing step")
    a1.set_ylabel("next-token KL to the original (nats/token)")
    # the objective on each training batch, beside what it is comparable with: KL (distill) or loss (lm)
    on = a1 if h.objective == "distill" else a2
    on.plot([s.step for s in h.steps], [s.loss for s in h.steps], color="#aaaaaa", lw=0.8, zorder=1,
            label="training batch (the healing objective)")
    a1.legend(fontsize=8)
    a2.plot([e.step for e in ev], [e.val_loss for e in ev], "o-", color="#1f77b4", label="held-out loss")
    a2.axhline(r.val_loss_original, color="#2ca02c", ls="--", label=f"original: {r.val_loss_original:.3f}")
    a2.set_xlabel("healing step")
    a2.set_ylabel("cross-entropy (nats/token)")
    a2.legend(fontsize=8)
    fig.suptitle(f"Healing after QK-norm retrofit (scope {r.scope}, {h.objective} objective)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _f(x: Optional[float], spec: str = ".4f") -> str:
    return "–" if x is None else format(x, spec)


def _html(r: RetrofitReport, png: Optional[Path]) -> str:
    mark = {k: " (written)" if r.kept == k else "" for k in ("calibrated", "healed")}
    rows = [("original", "0", r.val_loss_original), ("QK-norm, gains 1 (naive)", _f(r.kl_naive), r.val_loss_naive),
            (f"QK-norm, calibrated gains ({r.calibration_kept}){mark['calibrated']}", _f(r.kl_calibrated),
             r.val_loss_retrofitted)]
    if r.heal is not None:
        rows.append((f"healed ({len(r.heal.steps)} steps, {r.heal.objective}){mark['healed']}", _f(r.kl_healed),
                     r.val_loss_healed))
    table = "".join(f"<tr><td>{html.escape(a)}</td><td>{b}</td><td>{_f(c)}</td></tr>" for a, b, c in rows)
    layers = "".join(f"<tr><td>{f.layer}</td><td>{_f(f.kl_naive)}</td><td>{_f(f.kl_rms_matched)}</td>"
                     f"<td>{_f(f.kl_fitted)}</td><td>{float(f.q_scale.mean()):.3g}</td>"
                     f"<td>{float(f.k_scale.mean()):.3g}</td></tr>" for f in r.layers)
    stages = "".join(f"<tr><td>{html.escape(t.name)}</td><td>{fmt_seconds(t.seconds)}</td>"
                     f"<td>{fmt_seconds(t.cpu_seconds)}</td></tr>" for t in r.stages)
    img = ""
    if png is not None:
        img = f'<img alt="healing curve" src="data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()}">'
    where = "a transformers directory (" + r.export[3:] + ")" if r.export.startswith("hf/") else "qknorm's format " \
        "(transformers has no family with these numerics)"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>QK-norm retrofit</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:2px 10px;text-align:right}}
td:first-child{{text-align:left}}table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}</style>
</head><body><h1>QK-norm retrofit (scope {html.escape(r.scope)})</h1>
<p>Source: <code>{html.escape(str(r.source.get('path')))}</code> ({html.escape(str(r.source.get('format')))}).
Data: {html.escape(r.data)}; {r.eval_tokens:,} held-out tokens. Output in {html.escape(where)}.</p>
<p>KL = mean over held-out positions of KL(P<sub>original</sub> || P<sub>model</sub>) of the next token; loss =
cross-entropy; both in nats per token.</p>
<table><tr><th>model</th><th>KL to original</th><th>held-out loss</th></tr>{table}</table>
<p>Written: the {html.escape(r.kept)} model ({html.escape(r.kept_because)}).</p>
<h2>Healing</h2>{img or "<p>No healing steps were run.</p>"}
<h2>Calibration, per layer</h2><p>Mean attention KL (nats per query) between the original's attention
distributions and the retrofitted layer's, on the original's q and k; gains: mean scale of q and k.</p>
<table><tr><th>layer</th><th>gains 1</th><th>rms-matched</th><th>fitted</th><th>q scale</th><th>k scale</th></tr>
{layers}</table>
<h2>Stages</h2><table><tr><th>stage</th><th>wall</th><th>CPU</th></tr>{stages}</table>
<p>Peak memory (resident): {_f(r.peak_rss_mb, ".0f")} MiB.</p></body></html>
"""
