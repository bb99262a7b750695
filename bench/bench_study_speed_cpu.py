"""Step cost of study runs on CPU: AdamW and Muon runs of the stabilizers profile's setting, timed as the study
times them (`qknorm.study.run.run_one`: median process CPU time of a step, one torch thread), so a loaded
machine skews it least. Runs with the code on PYTHONPATH, so the same script times two checkouts (before/after).

    PYTHONPATH=src python bench/bench_study_speed_cpu.py --steps 40 --rounds 2 [--compile]
    ONEDNN_MAX_CPU_ISA=AVX2 PYTHONPATH=src python bench/bench_study_speed_cpu.py ...   # bf16 emulated, as AVX2-only

Prints one JSON line per (round, optimizer): step_cpu_ms, cpu_s, steps, and what the run chose (Newton-Schulz
dtype, compile) where the checkout records it. Results: bench/results/study_speed_2026-12-07.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform

import torch

from qknorm.study.plan import make_plan, run_specs
from qknorm.study.run import run_one
from qknorm.data.tokens import load_tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--optimizers", default="adamw,muon")
    ap.add_argument("--variant", default="qknorm")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--compile", action="store_true", help="compiled runs (checkouts that have the setting)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as a study worker
    data = load_tokens()
    opts = tuple(args.optimizers.split(","))
    plan = make_plan("stabilizers", variants=(args.variant,), lrs=(args.lr,), seeds=1, steps=args.steps,
                     optimizers=opts)
    specs = run_specs(plan, data.vocab_size, data.fingerprint().short)
    if args.compile:
        import dataclasses
        specs = [dataclasses.replace(s, train=s.train.replace(compile=True)) for s in specs]
    print(json.dumps({"torch": torch.__version__, "python": platform.python_version(),
                      "capability": torch.backends.cpu.get_cpu_capability(),
                      "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
                      "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"), "load": os.getloadavg()}))
    try:  # checkouts with study/speed.py: the study's FLOPs formula and peak probe
        from qknorm.study.speed import probe_peak, step_flops
        peak = probe_peak("cpu", "fp32").flops_per_s
        flops = step_flops(specs[0].model, specs[0].train)
        print(json.dumps({"peak_flops": peak, "step_flops": flops}))
    except ImportError:
        peak = flops = None
    for rnd in range(args.rounds):
        for spec in specs:
            rec = run_one(spec)
            fps = flops / (rec.step_cpu_ms / 1e3) if flops and rec.step_cpu_ms else None
            print(json.dumps({"round": rnd, "optimizer": spec.optimizer, "status": rec.status.value,
                              "step_cpu_ms": rec.step_cpu_ms, "step_ms": rec.step_ms, "cpu_s": rec.cpu_s,
                              "steps": rec.steps, "muon_ns_dtype": getattr(rec, "muon_ns_dtype", None),
                              "gflops": round(fps / 1e9, 1) if fps else None,
                              "mfu": round(fps / peak, 3) if fps and peak else None,
                              **{k: getattr(rec, k) for k in ("compile_graphs", "compile_graph_breaks",
                                                              "compile_recompiles") if hasattr(rec, k)}}),
                  flush=True)


if __name__ == "__main__":
    main()
