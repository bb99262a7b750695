"""`qknorm bench train`: one training step of our OLMo 2 372M against HF Olmo2ForCausalLM, one run, equal models.

One step = forward + backward + fused AdamW, B=8, T=2048, bf16 weights (train_models.py has the models).
Variants (--variants, comma-separated):
  hf, hf_compile, hf_liger        HF transformers eager / torch.compile / Liger-Kernel OLMo 2 patch
  ours, ours_compile              qknorm TransformerLM (fused Triton QK-norm + RoPE on CUDA), eager / compiled
  <any of hf, hf_compile, ours, ours_compile>_noqk   the same model without QK-norm
Before anything is timed, every variant is described on the meta device and the run refuses (exit 2, one
line naming both) when two compared models differ in parameter count, head_dim or head counts; variants
with and without QK-norm must differ by exactly the QK-norm gains.
Prints the tables (ms/step, tokens/s, peak GB, parameters, speed vs each HF variant, QK-norm cost); with
--out DIR writes DIR/train_step.json (after every variant, "complete" at the end) and DIR/train_step.md.
Nothing is written without --out.

    qknorm bench train --out results/                 # a CUDA GPU; ~5 min for all nine variants on an H200
    qknorm bench train --cpu-smoke --out /tmp/smoke   # CPU, a tiny non-debug shape, eager variants: seconds
"""
from __future__ import annotations

import gc
import time
from typing import Dict, List

import torch

from ..cli._common import non_negative_int, positive_int
from ..errors import ConfigError
from . import environment, train_models
from .equal_models import UnequalModelsError, describe, require_equal, require_same_but_qk_norm
from .output import check_out, write_json, write_text
from .timing import Timer
from .train_report import render

HELP = "one training step of our OLMo 2 372M vs HF (eager, compile, Liger), with and without QK-norm"
FILES = ("train_step.json", "train_step.md")


def add_arguments(p) -> None:
    p.add_argument("--variants", default=None, metavar="LIST",
                   help=f"comma-separated, from: {', '.join(train_models.VARIANTS)} (default: all; with "
                        f"--cpu-smoke: {','.join(train_models.SMOKE_VARIANTS)})")
    p.add_argument("--steps", type=positive_int, default=10, help="timed steps per variant (default 10)")
    p.add_argument("--warmup", type=non_negative_int, default=3,
                   help="untimed steps first (compilation happens here; default 3)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write train_step.json and train_step.md there (default: print only, write nothing)")
    p.add_argument("--force", action="store_true", help="replace train_step.* already in --out")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="CPU, fp32, the tiny shape d_model=96, 3 heads, 2 steps: checks that the benchmark runs")


def parse_variants(text, smoke: bool) -> List[train_models.Variant]:
    names = [n.strip() for n in (text or ",".join(train_models.SMOKE_VARIANTS if smoke else train_models.VARIANTS))
             .split(",") if n.strip()]
    bad = [n for n in names if n not in train_models.VARIANTS]
    if bad or not names:
        raise ConfigError(f"--variants {','.join(bad) or repr(text)}: not a variant; choose from: "
                          f"{', '.join(train_models.VARIANTS)}")
    return [train_models.VARIANTS[n] for n in dict.fromkeys(names)]


def check_plan(records: Dict[str, object], variants) -> None:
    """The equal-model rule over the planned records (see equal_models.py)."""
    with_qk = [(v.name, records[v.name]) for v in variants if v.qk_norm]
    without = [(v.name, records[v.name]) for v in variants if not v.qk_norm]
    require_equal(with_qk)
    require_equal(without)
    if with_qk and without:
        require_same_but_qk_norm(with_qk[0], without[0])


def time_variant(v, shape, device, dtype, timer: Timer, warmup: int, planned) -> dict:
    if device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, loss_fn = train_models.build(v, shape, device, dtype)
    got = describe(model)
    if got != planned:  # e.g. a patch that changed the model: the plan was checked, this is what runs
        raise UnequalModelsError(f"refusing to time {v.name}: it built {got.short()}, but its plan had "
                                 f"{planned.short()}")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    ids = torch.randint(0, shape.vocab_size, (shape.batch, shape.seq_len), device=device,
                        generator=torch.Generator(device=device).manual_seed(0))

    def step():
        loss_fn(ids).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t0 = time.perf_counter()
    for _ in range(warmup):  # compilation happens here
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    ms = timer(step)
    peak = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None
    del model, loss_fn, opt
    return dict(ms=ms, tok_s=shape.batch * shape.seq_len / (ms * 1e-3), peak_GB=peak, warmup_s=warmup_s,
                **planned.as_dict())


def _setup(args):
    """(device, dtype, shape, timer, warm-up steps) after the checks that come before any work."""
    if args.cpu_smoke:
        return "cpu", torch.float32, train_models.SMOKE, Timer(device="cpu", iters=1, repeats=2, warmup=0), 1
    if not torch.cuda.is_available():
        raise ConfigError("no CUDA device: this benchmark times GPU training steps; use --cpu-smoke for a CPU check "
                          "that it runs")
    timer = Timer(device="cuda", iters=1, repeats=args.steps, warmup=0)  # events around each step
    return "cuda", torch.bfloat16, train_models.ANCHOR_372M, timer, args.warmup


def _one(v, res, shape, device, dtype, timer, warmup, planned) -> None:
    """Time variant v into its section of res; an error (a missing optional package, an OOM) is recorded and
    the other variants go on; unequal models never do."""
    section = res["variants"] if v.qk_norm else res["variants_without_qk_norm"]
    try:
        r = time_variant(v, shape, device, dtype, timer, warmup, planned)
        peak = "-" if r["peak_GB"] is None else f"{r['peak_GB']:.1f}"
        print(f"{v.name:18s} {r['ms']:9.1f} ms/step {r['tok_s']:>11,.0f} tok/s  peak {peak} GB  "
              f"(warm-up {r['warmup_s']:.0f} s)", flush=True)
    except UnequalModelsError:
        raise
    except Exception as e:  # noqa: BLE001
        r = dict(error=repr(e)[:300], **planned.as_dict())
        print(f"{v.name:18s} error {repr(e)[:200]}", flush=True)
    section[v.name] = r


def run(args) -> int:
    variants = parse_variants(args.variants, args.cpu_smoke)
    out = check_out(args.out, FILES, force=args.force)
    device, dtype, shape, timer, warmup = _setup(args)
    planned = {v.name: train_models.plan(v, shape, dtype) for v in variants}
    check_plan(planned, variants)  # before anything is timed or written
    for name, r in planned.items():
        print(f"{name:18s} {r.short()}", flush=True)
    env = environment.collect(device, vars(args))
    res = dict(benchmark="train_step", **env.as_dict(), timer=timer.as_dict(), warmup_steps=warmup,
               shape=shape.as_dict(), dtype=str(dtype).replace("torch.", ""),
               optimizer=f"AdamW (fused={device == 'cuda'})", models={n: r.as_dict() for n, r in planned.items()},
               variants={}, variants_without_qk_norm={}, complete=False)
    for v in variants:
        _one(v, res, shape, device, dtype, timer, warmup, planned[v.name])
        if out:
            write_json(out / FILES[0], res)  # a run cut short keeps what it measured
    res["complete"] = True
    table = render(res)
    print(table, flush=True)
    if out:
        write_json(out / FILES[0], res)
        write_text(out / FILES[1], table)
        print(f"wrote {out / FILES[0]} and {out / FILES[1]}")
    return 0
