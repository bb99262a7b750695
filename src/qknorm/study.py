"""The QK-norm stability study: norm variants x a peak-learning-rate grid x seeds, trained in parallel.

    plan = make_plan(profile="default")               # variants, LR grid, seeds, model shape, train settings
    summary = run_study(plan, "study_out")            # trains every run, writes runs/*.json and summary.json

Variants (DESIGN.md) share ONE model shape per profile, so only the norms (and each family's norm numerics)
differ between them:
  baseline  llama preset: pre-norm RMSNorm, no QK-norm
  qknorm    llama preset + per-head QK RMSNorm (the Qwen3 form): the only difference to baseline
  olmo2     olmo2 preset: reordered norms (on the sub-layer outputs) + full-width QK-norm, fp32 weight multiply
  gemma3    gemma3 preset: sandwich norms with 1+w gains, per-head QK-norm, sqrt(d) embedding scale, GeGLU,
            tied head. The sliding window is switched off and the query scale is head_dim**-0.5, so every
            variant attends over the same span with the same score scale.
  postln    postln preset: classic post-LN (LayerNorm with bias), no QK-norm
Each family keeps its own RoPE theta (1e4..1e6); at the study's sequence lengths this changes little.

Measured per run (qknorm.train.loop.train): initial loss, final train loss, validation loss, max attention
logit over the run (exact, from the loop's stats pass), divergence (NaN/Inf or final loss above the initial
one), the OLMo 2 spike score of the loss and gradient-norm series (7 std; windows 1000 and 100). Per variant:
the LR sensitivity of Wortsman et al. 2023 (arXiv 2309.14322), E_lr[min(l(lr), l0) - l*] on the validation
loss, averaged over seeds. The two checks of the study compare `baseline` and `qknorm` on measured numbers.

Runs go to `workers` spawned processes (one torch thread each), so the result of a run depends only on its
spec, never on which worker ran it. A run that raises is recorded with its error text and `diverged: true`;
a worker process that dies is replaced and its run retried once.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .errors import ConfigError

__all__ = ["VARIANTS", "PROFILES", "Profile", "make_plan", "run_study", "run_one", "summarize_runs",
           "format_table", "check_out_dir", "WORTSMAN_GRID", "CHECK_LR_MIN", "run_name"]

WORTSMAN_GRID = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
CHECK_LR_MIN = 3e-2  # the logit check compares baseline and qknorm at peak LRs >= this
LOGIT_RATIO_MIN = 10.0  # baseline max logit / qknorm max logit must be at least this
SENSITIVITY_RATIO_MAX = 0.6  # qknorm LR sensitivity / baseline LR sensitivity must be at most this
PLAN_FILE, SUMMARY_FILE, RUNS_DIR = "plan.json", "summary.json", "runs"


@dataclasses.dataclass(frozen=True)
class Variant:
    preset: str
    overrides: Dict[str, Any]
    description: str


VARIANTS: Dict[str, Variant] = {
    "baseline": Variant("llama", {}, "pre-norm RMSNorm, no QK-norm (Llama)"),
    "qknorm": Variant("llama", {"qk_norm": "head"}, "pre-norm + per-head QK RMSNorm (Qwen3 form)"),
    "olmo2": Variant("olmo2", {}, "reordered norms + full-width QK-norm (OLMo 2 numerics)"),
    "gemma3": Variant("gemma3", {"sliding_window": None, "query_pre_attn_scalar": None},
                      "sandwich norms + per-head QK-norm (Gemma 3 numerics, no sliding window)"),
    "postln": Variant("postln", {}, "classic post-LN (LayerNorm), no QK-norm"),
}


@dataclasses.dataclass(frozen=True)
class Profile:
    """A study size: model shape shared by every variant, training settings, the grid and the defaults."""

    shape: Dict[str, Any]
    variants: tuple
    lrs: tuple
    seeds: int
    steps: int
    warmup_frac: float  # warmup steps = round(warmup_frac * steps)
    schedule: str  # "cosine" (warmup, cosine to final_lr) or "constant" (warmup, then the peak LR)
    batch_size: int
    seq_len: int
    dtype: str = "fp32"
    stats_every: int = 10
    eval_batches: int = 8
    workers: int = 2
    device: str = "cpu"
    description: str = ""


_ALL = tuple(VARIANTS)
_CPU_SHAPE = dict(d_model=128, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=64, d_ff=512)
_GPU_SHAPE = dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, head_dim=64, d_ff=1024)

PROFILES: Dict[str, Profile] = {
    "quick": Profile(shape=_CPU_SHAPE, variants=("baseline", "qknorm"), lrs=(3e-3, 1e-2, 3e-2, 1e-1),
                     seeds=1, steps=300, warmup_frac=0.1, schedule="constant", batch_size=16, seq_len=64,
                     description="first look: baseline vs qknorm, 4 LRs, 2-core CPU in ~2 minutes"),
    "default": Profile(shape=_CPU_SHAPE, variants=_ALL, lrs=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1), seeds=1,
                       steps=300, warmup_frac=0.1, schedule="constant", batch_size=16, seq_len=64,
                       description="all five variants, 6 LRs, 2-core CPU in ~8 minutes"),
    "gpu": Profile(shape=_GPU_SHAPE, variants=_ALL, lrs=WORTSMAN_GRID, seeds=1, steps=1200, warmup_frac=0.05,
                   schedule="cosine", batch_size=64, seq_len=256, dtype="bf16", stats_every=25, workers=8,
                   device="cuda", description="all five variants, Wortsman's 7-point grid, ~5 minutes on one "
                   "H100/H200 (8 runs at once measured 2.4M tokens/s together on an H200)"),
    # the gpu profile's code path (bf16 autocast, cosine, several workers) at a size a CPU runs in seconds
    "smoke": Profile(shape=dict(d_model=64, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=32, d_ff=128),
                     variants=_ALL, lrs=(1e-3, 1e-1), seeds=1, steps=6, warmup_frac=0.34, schedule="cosine",
                     batch_size=4, seq_len=32, dtype="bf16", stats_every=2, eval_batches=1, workers=2,
                     description="the gpu profile's code path at a tiny size (tests, CPU dry runs)"),
}


# ---------------------------------------------------------------------------------------------- the plan
def parse_variants(text: str) -> tuple:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in names if v not in VARIANTS]
    if not names or bad:
        shown = repr(bad[0]) if bad else repr(text)
        raise ConfigError(f"--variants: unknown variant {shown}; choose from: {', '.join(VARIANTS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--variants: {text!r} names a variant twice")
    return names


def parse_lrs(text: str) -> tuple:
    out = []
    for item in (t.strip() for t in text.split(",")):
        try:
            lr = float(item)
        except ValueError:
            lr = math.nan
        if not (math.isfinite(lr) and 0 < lr < 10):
            raise ConfigError(f"--lrs: {item!r} is not a learning rate; give comma-separated numbers in (0, 10), "
                              "e.g. 1e-3,3e-2")
        out.append(lr)
    if len(set(out)) != len(out):
        raise ConfigError(f"--lrs: {text!r} repeats a learning rate")
    return tuple(sorted(out))


def make_plan(profile: str = "default", *, variants: Optional[Sequence[str]] = None,
              lrs: Optional[Sequence[float]] = None, seeds: Optional[int] = None, seed: int = 0,
              steps: Optional[int] = None, device: Optional[str] = None, data: Optional[str] = None,
              tokenizer: Optional[str] = None, workers: Optional[int] = None) -> Dict[str, Any]:
    """The full description of a study (JSON-able): what `run_study` runs and what identifies its results."""
    if profile not in PROFILES:
        raise ConfigError(f"--profile: unknown profile {profile!r}; choose from: {', '.join(PROFILES)}")
    p = PROFILES[profile]
    variants = tuple(variants) if variants is not None else p.variants
    for v in variants:
        if v not in VARIANTS:
            raise ConfigError(f"--variants: unknown variant {v!r}; choose from: {', '.join(VARIANTS)}")
    lrs = tuple(sorted(lrs)) if lrs is not None else p.lrs
    if not lrs:
        raise ConfigError("--lrs: give at least one learning rate, e.g. 1e-3,3e-2")
    for name, value, lo in (("--seeds", seeds, 1), ("--seed", seed, 0), ("--steps", steps, 1),
                            ("--workers", workers, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < lo):
            raise ConfigError(f"{name}={value!r} must be an integer >= {lo}")
    steps = steps or p.steps
    warmup = min(steps - 1, max(1, round(p.warmup_frac * steps))) if steps > 1 else 0
    train = dict(steps=steps, warmup_steps=warmup, batch_size=p.batch_size, seq_len=p.seq_len,
                 final_lr=None if p.schedule == "constant" else 1e-5, weight_decay=0.0, beta1=0.9, beta2=0.95,
                 adam_eps=1e-8, clip=1.0, z_loss=0.0, dtype=p.dtype, stats_every=p.stats_every,
                 eval_batches=p.eval_batches, eval_every=0, on_nan="stop", device=device or p.device)
    return {
        "profile": profile,
        "variants": list(variants),
        "lrs": list(lrs),
        "seeds": [seed + i for i in range(seeds or p.seeds)],
        "shape": dict(p.shape),
        "schedule": p.schedule,
        "train": train,
        "data": data,
        "tokenizer": tokenizer,
        "workers": workers or p.workers,
    }


def run_name(variant: str, lr: float, seed: int) -> str:
    return f"{variant}_lr{lr:g}_s{seed}"


def plan_fingerprint(plan: Dict[str, Any]) -> str:
    """What identifies a study's results: everything in the plan except how many workers ran it."""
    ident = {k: v for k, v in plan.items() if k != "workers"}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def model_config_for(plan: Dict[str, Any], variant: str, vocab_size: int):
    from .presets import get_config

    v = VARIANTS[variant]
    return get_config(v.preset, "debug", **{**plan["shape"], "vocab_size": vocab_size, **v.overrides})


def run_specs(plan: Dict[str, Any], vocab_size: int) -> List[Dict[str, Any]]:
    """One spec a run. Order: baseline and qknorm first (the checks need them), then seed, LR, variant."""
    first = [v for v in plan["variants"] if v in ("baseline", "qknorm")]
    rest = [v for v in plan["variants"] if v not in first]
    specs = []
    for group in (first, rest):
        for seed in plan["seeds"]:
            for lr in sorted(plan["lrs"], reverse=True):  # high LRs first: they are the interesting ones
                for variant in group:
                    train = dict(plan["train"], lr=lr, seed=seed, progress=False)
                    if train["final_lr"] is None:  # constant schedule: cosine from lr to lr
                        train["final_lr"] = lr
                    specs.append({"variant": variant, "lr": lr, "seed": seed, "name": run_name(variant, lr, seed),
                                  "model": model_config_for(plan, variant, vocab_size).to_dict(), "train": train,
                                  "data": plan["data"], "tokenizer": plan["tokenizer"]})
    return specs


# ---------------------------------------------------------------------------------------------- one run
_DATA_CACHE: Dict[tuple, Any] = {}


def _load_data(data: Optional[str], tokenizer: Optional[str]):
    key = (data, tokenizer)
    if key not in _DATA_CACHE:
        from .train.data import load_tokens

        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_tokens(data, tokenizer=tokenizer)
    return _DATA_CACHE[key]


def _finite(x) -> Optional[float]:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def run_one(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Train the run `spec` describes; return its record (numbers, `error`) and its per-step `history`."""
    import torch

    from .config import ModelConfig
    from .train.loop import TrainConfig, train

    t0 = time.perf_counter()
    rec: Dict[str, Any] = {k: spec[k] for k in ("variant", "lr", "seed")}
    deadline = spec.get("deadline")
    if deadline is not None and time.time() > deadline:
        return _failed(rec, "skipped: the study's time budget (--max-minutes) was spent", t0)
    try:
        data = _load_data(spec["data"], spec["tokenizer"])
        mcfg = ModelConfig.from_dict(spec["model"])
        tcfg = TrainConfig(**spec["train"])
        torch.manual_seed(tcfg.seed)
        stop = (lambda _r: time.time() > deadline) if deadline is not None else None
        res = train(mcfg, tcfg, data, callback=stop)
    except Exception as e:  # recorded, never fatal to the study
        return _failed(rec, f"{type(e).__name__}: {e}", t0, trace=traceback.format_exc(limit=4))
    s = res.summary
    rec.update(
        init_loss=_finite(res.init_loss), final_loss=_finite(res.final_loss), val_loss=_finite(res.val_loss),
        max_attn_logit=_finite(res.max_attn_logit), max_attn_logit_nonfinite=not math.isfinite(res.max_attn_logit),
        diverged=bool(res.diverged), steps=res.steps_done, time_s=round(time.perf_counter() - t0, 2),
        tokens_per_s=round(res.tokens_per_s, 1),
        spike_score={"loss": _finite(s.get("loss_spike_score_w100")), "grad_norm": _finite(s.get("grad_spike_score_w100")),
                     "loss_w1000": _finite(s.get("loss_spike_score")),
                     "grad_norm_w1000": _finite(s.get("grad_spike_score"))},
        error=None if res.stop_reason is None or res.diverged else f"stopped early: {res.stop_reason}",
        stop_reason=res.stop_reason)
    if res.stop_reason is not None and "callback" in res.stop_reason:
        if res.steps_done < tcfg.steps:  # the budget ran out mid-run (on the last step the run is complete)
            rec.update(error=f"stopped at step {res.steps_done}: the study's time budget (--max-minutes) was "
                       "spent", cut=True)
        else:
            rec.update(error=None, stop_reason=None)
    rec["history"] = _history(res.history)
    return rec


def _failed(rec: Dict[str, Any], error: str, t0: float, trace: Optional[str] = None) -> Dict[str, Any]:
    skipped = error.startswith("skipped")
    rec.update(init_loss=None, final_loss=None, val_loss=None, max_attn_logit=None, max_attn_logit_nonfinite=False,
               diverged=not skipped, cut=skipped, steps=0, time_s=round(time.perf_counter() - t0, 2),
               tokens_per_s=0.0, spike_score={}, error=error, stop_reason=None, history={})
    if trace:
        rec["traceback"] = trace
    return rec


def _history(history: List[Dict[str, Any]]) -> Dict[str, list]:
    """Column form of the loop's per-step records (non-finite values as None)."""
    def col(key, rows):
        return [_finite(r.get(key)) for r in rows]

    stats = [r for r in history if "max_attn_logit" in r]
    return {
        "step": [r["step"] for r in history], "loss": col("loss", history), "lr": col("lr", history),
        "grad_norm": col("grad_norm", history),
        "stats_step": [r["step"] for r in stats], "max_attn_logit": col("max_attn_logit", stats),
        "attn_logit_per_layer": [[_finite(v) for v in r.get("attn_logit_per_layer", [])] for r in stats],
        "q_rms": [[_finite(v) for v in r.get("q_rms", [])] for r in stats],
        "k_rms": [[_finite(v) for v in r.get("k_rms", [])] for r in stats],
        "val_step": [r["step"] for r in history if "val_loss" in r],
        "val_loss": [_finite(r["val_loss"]) for r in history if "val_loss" in r],
    }


# ---------------------------------------------------------------------------------------------- many runs
def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def _worker_main(conn, runner: Callable) -> None:
    """A worker process: receive specs, send back records, until it receives None."""
    _worker_init()
    while True:
        spec = conn.recv()
        if spec is None:
            return
        conn.send(_guarded(runner, spec))


def _execute(specs: List[Dict[str, Any]], runner: Callable, workers: int,
             on_done: Callable[[Dict[str, Any]], None]) -> None:
    """Run every spec; `on_done(record)` in the parent as each finishes.

    workers == 1 runs in this process (one torch thread). Otherwise `workers` spawned processes take one
    spec at a time; a worker that dies (segfault, out of memory) is replaced and its run retried once, then
    recorded as failed — the parent always knows which run a dead worker held."""
    if workers == 1:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for spec in specs:
                on_done(_guarded(runner, spec))
        finally:
            torch.set_num_threads(threads)
        return
    ctx = multiprocessing.get_context("spawn")
    queue = collections.deque(specs)
    attempts: Dict[str, int] = collections.Counter()
    running: Dict[Any, tuple] = {}  # parent end of the pipe -> (process, spec)

    def start_worker():
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child, runner), daemon=True)
        proc.start()
        child.close()
        return parent, proc

    def dispatch(conn, proc) -> None:
        if queue:
            spec = queue.popleft()
            conn.send(spec)
            running[conn] = (proc, spec)
        else:
            conn.send(None)
            conn.close()
            proc.join(timeout=10)

    try:
        for _ in range(min(workers, len(queue))):
            dispatch(*start_worker())
        while running:
            for conn in multiprocessing.connection.wait(list(running)):
                proc, spec = running.pop(conn)
                try:
                    rec = conn.recv()
                except (EOFError, OSError):  # the worker died holding `spec`
                    proc.join(timeout=10)
                    attempts[spec["name"]] += 1
                    if attempts[spec["name"]] < 2:
                        queue.appendleft(spec)
                    else:
                        rec = {k: spec[k] for k in ("variant", "lr", "seed")}
                        on_done(_failed(rec, f"the worker process died twice running it (exit code "
                                             f"{proc.exitcode})", time.perf_counter()))
                    conn.close()
                    if queue:
                        dispatch(*start_worker())
                    continue
                on_done(rec)
                dispatch(conn, proc)
    finally:
        for proc, _ in running.values():
            proc.terminate()


def _guarded(runner: Callable, spec: Dict[str, Any]) -> Dict[str, Any]:
    """`runner(spec)`, with anything it raises turned into a failed-run record."""
    t0 = time.perf_counter()
    try:
        rec = runner(spec)
    except BaseException as e:  # noqa: BLE001 - a run never takes the study down
        if isinstance(e, KeyboardInterrupt):
            raise
        return _failed({k: spec[k] for k in ("variant", "lr", "seed")}, f"{type(e).__name__}: {e}", t0,
                       trace=traceback.format_exc(limit=4))
    rec.setdefault("history", {})
    return rec


# ---------------------------------------------------------------------------------------------- aggregation
def _mean(xs: Sequence[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _sens_loss(r: Dict[str, Any]) -> Optional[float]:
    """The loss LR sensitivity is computed on: validation loss (train loss when there is no validation)."""
    if r.get("diverged") or r.get("error"):
        return None
    return r["val_loss"] if r.get("val_loss") is not None else r.get("final_loss")


def lr_sensitivities(runs: Sequence[Dict[str, Any]], variants: Sequence[str], lrs: Sequence[float],
                     seeds: Sequence[int], vocab_size: int) -> Dict[str, Dict[str, Any]]:
    """Per variant: Wortsman's LR sensitivity per seed and its mean over seeds; l0 = the mean initial loss.

    A run that diverged or failed counts as l0. A seed whose grid has a point with no finished run (skipped or
    cut short by --max-minutes, or absent) has no value: counting a run that never ran as l0 would make the
    variant look LR-sensitive; those grid points are listed under `incomplete`."""
    from .metrics import lr_sensitivity

    out = {}
    for v in variants:
        vr = [r for r in runs if r["variant"] == v]
        l0 = _mean([r.get("init_loss") for r in vr]) or math.log(vocab_size)
        per_seed, incomplete = {}, []
        for s in seeds:
            done = {r["lr"]: r for r in vr if r["seed"] == s and not r.get("cut")}
            missing = [lr for lr in lrs if lr not in done]
            if missing:
                incomplete += [{"seed": s, "lr": lr} for lr in missing]
                continue
            by_lr = {lr: _sens_loss(r) for lr, r in done.items()}
            if any(x is not None for x in by_lr.values()):
                per_seed[s] = lr_sensitivity({lr: by_lr.get(lr) for lr in lrs}, l0)
        best = [x for x in (_sens_loss(r) for r in vr) if x is not None]
        out[v] = {"value": _mean(list(per_seed.values())), "per_seed": per_seed, "init_loss": l0,
                  "best_loss": min(best) if best else None, "incomplete": incomplete}
    return out


def _logit_at(runs, variant: str, lr: float, pick) -> Optional[float]:
    vals = [(math.inf if r.get("max_attn_logit_nonfinite") else r.get("max_attn_logit"))
            for r in runs if r["variant"] == variant and r["lr"] == lr]
    vals = [v for v in vals if v is not None]
    return pick(vals) if vals else None


def compute_checks(runs: Sequence[Dict[str, Any]], sens: Dict[str, Dict[str, Any]],
                   lrs: Sequence[float]) -> Dict[str, Dict[str, Any]]:
    """The study's two checks, on measured numbers of `baseline` and `qknorm`.

    max_logit_ratio: at every grid LR >= 3e-2, (smallest baseline max attention logit over seeds) /
    (largest qknorm one) — conservative over seeds; passes when the ratio is >= 10 at some LR >= 3e-2 (the
    acceptance criterion: "at a peak LR >= 3e-2"); the per-LR ratios are stored too.
    lr_sensitivity_ratio: qknorm's LR sensitivity / baseline's; passes when <= 0.6.
    """
    have = {r["variant"] for r in runs}
    checks: Dict[str, Dict[str, Any]] = {}
    top = [lr for lr in lrs if lr >= CHECK_LR_MIN * (1 - 1e-9)]
    c1: Dict[str, Any] = {"description": f"baseline max attention logit >= {LOGIT_RATIO_MIN:g}x qknorm's at a peak "
                          f"LR >= {CHECK_LR_MIN:g}", "threshold": LOGIT_RATIO_MIN, "per_lr": [], "passed": None}
    if not {"baseline", "qknorm"} <= have or not top:
        c1["note"] = "not evaluated: needs the baseline and qknorm variants and a grid LR >= 3e-2"
    else:
        scored = []
        for lr in top:
            b = _logit_at(runs, "baseline", lr, min)
            q = _logit_at(runs, "qknorm", lr, max)
            ratio = b / q if b is not None and q else None
            c1["per_lr"].append({"lr": lr, "baseline": _json_num(b), "qknorm": _json_num(q),
                                 "ratio": _json_num(ratio)})
            if ratio is not None and not math.isnan(ratio):
                scored.append((ratio, lr))
        if scored:
            ratio, lr = max(scored)
            c1.update(lr=lr, value=_json_num(ratio), passed=ratio >= LOGIT_RATIO_MIN)
        else:
            c1["note"] = "not evaluated: no finite max attention logit at LR >= 3e-2"
    checks["max_logit_ratio"] = c1
    c2: Dict[str, Any] = {"description": f"qknorm LR sensitivity <= {SENSITIVITY_RATIO_MAX:g}x baseline's",
                          "threshold": SENSITIVITY_RATIO_MAX, "passed": None}
    sb = sens.get("baseline", {}).get("value")
    sq = sens.get("qknorm", {}).get("value")
    c2.update(baseline=sb, qknorm=sq)
    if sb is None or sq is None:
        c2["note"] = "not evaluated: needs finished baseline and qknorm runs"
    elif sb <= 0:
        c2["note"] = "not evaluated: the baseline's LR sensitivity is 0 (a flat grid), the ratio is undefined"
    else:
        c2.update(value=sq / sb, passed=sq / sb <= SENSITIVITY_RATIO_MAX)
    checks["lr_sensitivity_ratio"] = c2
    return checks


def _json_num(x: Optional[float]):
    """Floats for JSON: None stays None, +inf becomes the string "inf" (strict JSON has no Infinity)."""
    if x is None:
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return None if math.isnan(x) else float(x)


def summarize_runs(runs: Sequence[Dict[str, Any]], plan: Dict[str, Any], vocab_size: int) -> Dict[str, Any]:
    """lr_sensitivity (variant -> float), its details, and the checks, from run records."""
    sens = lr_sensitivities(runs, plan["variants"], plan["lrs"], plan["seeds"], vocab_size)
    return {
        "lr_sensitivity": {v: sens[v]["value"] for v in plan["variants"]},
        "lr_sensitivity_detail": {v: {**d, "per_seed": {str(k): x for k, x in d["per_seed"].items()}}
                                  for v, d in sens.items()},
        "checks": compute_checks(runs, sens, plan["lrs"]),
    }


# ---------------------------------------------------------------------------------------------- the table
def _fmt(x, spec=".3f") -> str:
    if x is None:
        return "-"
    if x == "inf" or (isinstance(x, float) and math.isinf(x)):
        return "inf"
    return format(x, spec)


def format_table(summary: Dict[str, Any]) -> str:
    """The printed summary: one row a variant, then the checks with their numbers and PASS/FAIL."""
    runs, lrs = summary["runs"], summary["config"]["lrs"]
    top = max(lrs)
    rows = [("variant", "best val loss (at LR)", "LR sensitivity", f"max logit @ LR {top:g}", "diverged")]
    for v in summary["config"]["variants"]:
        vr = [r for r in runs if r["variant"] == v]
        ok = [r for r in vr if _sens_loss(r) is not None]
        best = min(ok, key=_sens_loss) if ok else None
        top_logit = _logit_at(vr, v, top, max)
        cut = sum(bool(r.get("cut")) for r in vr)
        sens = _fmt(summary["lr_sensitivity"].get(v)) if not cut else f"- ({cut} runs cut)"
        rows.append((v, f"{_fmt(_sens_loss(best))} ({best['lr']:g})" if best else "-", sens, _fmt(top_logit, ".4g"),
                     f"{sum(bool(r.get('diverged')) for r in vr)}/{len(vr)}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines.extend(format_checks(summary["checks"]))
    return "\n".join(lines)


def format_checks(checks: Dict[str, Dict[str, Any]]) -> List[str]:
    out = []
    c1, c2 = checks["max_logit_ratio"], checks["lr_sensitivity_ratio"]
    verdict = {True: "PASS", False: "FAIL", None: "N/A "}
    if c1["passed"] is None:
        out.append(f"[{verdict[None]}] {c1['description']}: {c1.get('note', '')}")
    else:
        at = next(p for p in c1["per_lr"] if p["lr"] == c1["lr"])
        others = ", ".join(f"{_fmt(p['ratio'], '.3g')}x at {p['lr']:g}" for p in c1["per_lr"] if p is not at)
        out.append(f"[{verdict[c1['passed']]}] {c1['description']}: at LR {c1['lr']:g} baseline "
                   f"{_fmt(at['baseline'], '.4g')} vs qknorm {_fmt(at['qknorm'], '.4g')} = "
                   f"{_fmt(c1['value'], '.3g')}x" + (f" (also {others})" if others else ""))
    if c2["passed"] is None:
        out.append(f"[{verdict[None]}] {c2['description']}: {c2.get('note', '')}")
    else:
        out.append(f"[{verdict[c2['passed']]}] {c2['description']}: qknorm {c2['qknorm']:.3f} / baseline "
                   f"{c2['baseline']:.3f} = {c2['value']:.2f}x")
    return out


# ---------------------------------------------------------------------------------------------- the study
def check_out_dir(out: Path, plan: Dict[str, Any], force: bool) -> None:
    """Refuse to write into a non-empty directory unless it holds this same study (or `force`)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    if force or not out.is_dir() or not any(out.iterdir()):
        return
    try:
        old = json.loads((out / PLAN_FILE).read_text())
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or old.get("fingerprint") != plan_fingerprint(plan):
        what = "a different study" if isinstance(old, dict) else "files that are not a qknorm study"
        raise ConfigError(f"--out {out} is not empty and holds {what}; choose another --out or pass --force "
                          "to overwrite")


def _environment(device: str) -> Dict[str, Any]:
    import torch

    env = {"torch": torch.__version__, "python": platform.python_version(), "device": device,
           "cpu_count": os.cpu_count(), "platform": platform.platform()}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def run_study(plan: Dict[str, Any], out_dir, *, runner: Callable = run_one, force: bool = False,
              max_minutes: Optional[float] = None, report: bool = True,
              log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> Dict[str, Any]:
    """Run every (variant, lr, seed) of `plan` and write `out_dir`/{plan.json, runs/*.json, summary.json} and,
    with `report`, report.html and the PNG plots. Returns the summary (also printed by the CLI)."""
    from . import __version__
    from .train.data import load_tokens

    out = Path(out_dir)
    check_out_dir(out, plan, force)
    data = load_tokens(plan["data"], tokenizer=plan["tokenizer"])  # bad data fails here, before any run
    specs = run_specs(plan, data.vocab_size)
    source = data.source
    del data
    try:
        out.mkdir(parents=True, exist_ok=True)
        if force and (out / RUNS_DIR).is_dir():
            shutil.rmtree(out / RUNS_DIR)
        (out / RUNS_DIR).mkdir(exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {out}: cannot create the output directory ({e.strerror or e})") from None
    (out / PLAN_FILE).write_text(json.dumps({"fingerprint": plan_fingerprint(plan), "plan": plan}, indent=1))
    t0 = time.time()
    if max_minutes is not None:
        for s in specs:
            s["deadline"] = t0 + 60.0 * max_minutes
    n, runs = len(specs), []
    log(f"qknorm study: {n} runs ({len(plan['variants'])} variants x {len(plan['lrs'])} LRs x "
        f"{len(plan['seeds'])} seeds, {plan['train']['steps']} steps each) on {plan['workers']} worker(s), "
        f"device {plan['train']['device']}")

    def on_done(rec: Dict[str, Any]) -> None:
        history = rec.pop("history", {}) or {}
        rec.pop("traceback", None) if not rec.get("error") else None
        name = run_name(rec["variant"], rec["lr"], rec["seed"])
        (out / RUNS_DIR / f"{name}.json").write_text(json.dumps(
            {"variant": rec["variant"], "lr": rec["lr"], "seed": rec["seed"], **history}))
        runs.append(rec)
        status = ("FAILED " + rec["error"]) if rec.get("error") and rec.get("final_loss") is None else (
            f"val {_fmt(rec.get('val_loss'))} max logit {_fmt(rec.get('max_attn_logit'), '.4g')}"
            + (" DIVERGED" if rec.get("diverged") else ""))
        log(f"  [{len(runs):>3}/{n}] {name:<24} {status}  ({rec.get('time_s', 0):.0f}s, "
            f"{time.time() - t0:.0f}s elapsed)")

    _execute(specs, runner, plan["workers"], on_done)
    order = {(s["variant"], s["lr"], s["seed"]): i for i, s in enumerate(
        sorted(specs, key=lambda s: (plan["variants"].index(s["variant"]), s["lr"], s["seed"])))}
    runs.sort(key=lambda r: order[(r["variant"], r["lr"], r["seed"])])
    vocab = specs[0]["model"]["vocab_size"]
    summary = {
        "runs": runs,
        **summarize_runs(runs, plan, vocab),
        "config": {
            "profile": plan["profile"], "variants": plan["variants"], "lrs": plan["lrs"], "seeds": plan["seeds"],
            "variant_descriptions": {v: VARIANTS[v].description for v in plan["variants"]},
            "model_shape": {**plan["shape"], "vocab_size": vocab},
            "models": {v: next(s["model"] for s in specs if s["variant"] == v) for v in plan["variants"]},
            "train": {**plan["train"], "schedule": plan["schedule"]},
            "spike_score": {"n_std": 7.0, "window": 100, "window_w1000": 1000,
                            "definition": "percent of values >= 7 std from the rolling mean of the previous "
                                          "`window` values (OLMo 2); 'loss'/'grad_norm' use window 100"},
            "lr_sensitivity_loss": "validation loss at the end of training; diverged/failed runs count as l0",
            "data": {"source": source, "path": plan["data"], "tokenizer": plan["tokenizer"]},
            "workers": plan["workers"], "fingerprint": plan_fingerprint(plan), "qknorm": __version__,
            "environment": _environment(plan["train"]["device"]),
            "wall_time_s": round(time.time() - t0, 1),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        },
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
    if report:
        from .report import write_report

        write_report(out, summary)
    return summary
