"""`qknorm bench kernel`: the fused QK-RMSNorm + RoPE against the bandwidth floor and its contenders, one run.

For each (shape, scope), forward and forward+backward: the floor (a torch copy of the same bytes), eager
HF-style PyTorch, torch.compile, Liger-Kernel (when importable), our op, our op compiled, and our two kernels
launched directly. GPU time from CUDA events around --iters back-to-back calls (default 100), median of
--repeats batches. Then a launch-config sweep of our kernels and the attention sub-layer's QK-norm cost.
Shapes are (B, T, H, Hkv, D), bf16; the first two rows are the acceptance shape q (8, 4096, 32, 128),
k (8, 4096, 8, 128) at both scopes. kernel_contenders.py defines every contender and the floor.
Prints the tables; with --out DIR writes DIR/qk_norm_rope.json (rows with floor_fwd_ms, ours_fwd_ms,
floor_fwdbwd_ms, ours_fwdbwd_ms, ... per shape and scope) and DIR/qk_norm_rope.md. Nothing is written
without --out.

    qknorm bench kernel --out results/          # a CUDA GPU; ~2 min on an H200 (--nshapes 2: the acceptance rows)
    qknorm bench kernel --cpu-smoke             # tiny shapes on CPU, Triton interpreted: checks that it runs
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

import torch

from ..cli._common import positive_int
from ..errors import ConfigError
from . import environment
from .attention_layer import bench_layer
from .kernel_contenders import eager, floor_fns, fwd_bwd_fn, kernel_fns, load_liger, make_inputs, ours, rel_error
from .kernel_report import markdown
from .kernel_sweep import sweep
from .output import check_out, write_json, write_text
from .timing import Timer, cpu_smoke_timer

HELP = "fused QK-RMSNorm + RoPE vs the bandwidth floor, eager, torch.compile, Liger; attention sub-layer"
FILES = ("qk_norm_rope.json", "qk_norm_rope.md")
SHAPES = [((8, 4096, 32, 8, 128), "head"), ((8, 4096, 32, 8, 128), "full"),
          ((8, 4096, 32, 8, 64), "head"), ((8, 4096, 16, 16, 256), "head")]
LAYERS = [(4, 4096, 4096, 32, 8, 128), (8, 2048, 2048, 16, 8, 128), (8, 2048, 1024, 8, 8, 128)]
SMOKE_SHAPES = [((1, 8, 4, 2, 64), "head"), ((1, 8, 4, 2, 80), "full")]
SMOKE_LAYERS = [(1, 8, 64, 4, 2, 16)]


def add_arguments(p) -> None:
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write qk_norm_rope.json and qk_norm_rope.md there (default: print only, write nothing)")
    p.add_argument("--force", action="store_true", help="replace qk_norm_rope.* already in --out")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU, Triton interpreted: checks it runs")
    p.add_argument("--iters", type=positive_int, default=100, help="back-to-back calls per timed batch (default 100)")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed batches; the median is reported (default 3)")
    p.add_argument("--nshapes", type=positive_int, default=None,
                   help="only the first N shapes (2: the acceptance rows)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile contenders")
    p.add_argument("--no-sweep", action="store_true", help="skip the launch-config sweep")
    p.add_argument("--no-layer", action="store_true", help="skip the attention sub-layer table")


def bench_shape(shape, scope, device, timer: Timer, compile_: bool, liger_make) -> dict:
    x = make_inputs(shape, scope, device)
    B, T, H, Hkv, D = shape
    row = {"shape": list(shape), "scope": scope, "q_shape": [B, T, H, D], "k_shape": [B, T, Hkv, D],
           "dtype": str(x.q.dtype).replace("torch.", ""), "bytes_qk": x.nbytes}
    floor_fwd, floor_fwdbwd = floor_fns(x)
    row["floor_fwd_ms"], row["floor_fwdbwd_ms"] = timer(floor_fwd), timer(floor_fwdbwd)
    contenders = [("eager", eager, False), ("ours", ours, True)]
    if compile_:
        contenders += [("compile", torch.compile(eager, dynamic=False), False),
                       ("ours_compile", torch.compile(ours, dynamic=False), True)]
    if liger_make is not None:
        contenders.append(("liger", liger_make(x.qw, x.kw, scope), False))
    for name, fn, fp32_tables in contenders:
        t0 = time.time()
        try:
            row[name + "_relerr"] = rel_error(fn, x, fp32_tables)
            fwd, fwd_bwd = fwd_bwd_fn(fn, x, fp32_tables)
            row[name + "_fwd_ms"], row[name + "_fwdbwd_ms"] = timer(fwd), timer(fwd_bwd)
        except Exception as e:  # noqa: BLE001  (one contender failing must not lose the others)
            row[name + "_error"] = repr(e)[:300]
            traceback.print_exc()
        row[name + "_wall_s"] = round(time.time() - t0, 1)
    try:
        kfwd, kfwd_bwd = kernel_fns(x)
        row["ours_kernels_fwd_ms"], row["ours_kernels_fwdbwd_ms"] = timer(kfwd), timer(kfwd_bwd)
    except Exception as e:  # noqa: BLE001
        row["ours_kernels_error"] = repr(e)[:300]
        traceback.print_exc()
    return row


def _setup(args):
    """(device, shapes, layers, timer, compile?) after the checks that must come before any work."""
    if args.cpu_smoke:
        if "qknorm.ops.triton_qk_norm_rope" not in sys.modules:
            os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated
        return "cpu", SMOKE_SHAPES, SMOKE_LAYERS, cpu_smoke_timer(), False
    if not torch.cuda.is_available():
        raise ConfigError("no CUDA device: this benchmark times GPU kernels; use --cpu-smoke for a CPU check that "
                          "it runs")
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    timer = Timer(device="cuda", iters=args.iters, repeats=args.repeats, warmup=10)
    return "cuda", SHAPES, LAYERS, timer, not args.no_compile


def run(args) -> int:
    out = check_out(args.out, FILES, force=args.force)
    device, shapes, layers, timer, compile_ = _setup(args)
    shapes = shapes[: args.nshapes] if args.nshapes else shapes
    t0 = time.time()
    env = environment.collect(device, vars(args))
    liger_make, liger_note = load_liger() if device == "cuda" else (None, "not used on CPU")
    res = dict(benchmark="qk_norm_rope", **env.as_dict(), timer=timer.as_dict(), dtype="bfloat16",
               liger_note=liger_note, qkrope=[], sweep=[], layer=[], complete=False)

    def save():
        if out:
            write_json(out / FILES[0], res)

    for shape, scope in shapes:
        row = bench_shape(shape, scope, device, timer, compile_, liger_make)
        print(json.dumps(row), f"[{time.time() - t0:.0f}s]", flush=True)
        res["qkrope"].append(row)
        save()
    first = res["qkrope"][0]
    res["copy_TBps"] = 2 * first["bytes_qk"] / (first["floor_fwd_ms"] * 1e-3) / 1e12
    if not args.no_sweep:
        for shape, scope in shapes[:2]:
            res["sweep"] += sweep(shape, scope, device, timer)
        print(f"sweep done [{time.time() - t0:.0f}s]", flush=True)
        save()
    if not args.no_layer:
        layer_timer = Timer(device=device, iters=max(1, timer.iters // 5), repeats=timer.repeats,
                            warmup=min(timer.warmup, 3))
        for shape in layers:
            row = bench_layer(shape, device, layer_timer)
            print(json.dumps(row), f"[{time.time() - t0:.0f}s]", flush=True)
            res["layer"].append(row)
        res["layer_timer"] = layer_timer.as_dict()
    res["wall_s"], res["complete"] = round(time.time() - t0, 1), True
    md = markdown(res)
    print(md, flush=True)
    if out:
        save()
        write_text(out / FILES[1], md)
        print(f"wrote {out / FILES[0]} and {out / FILES[1]}", flush=True)
    return 0
