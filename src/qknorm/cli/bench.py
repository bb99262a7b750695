"""`qknorm bench WHAT [options]`: kernel and end-to-end training-step benchmarks.

  qknorm bench kernel [--out DIR] [--cpu-smoke] ...   fused QK-RMSNorm + RoPE vs the bandwidth floor (a copy
                                                      of the same bytes), eager, torch.compile, Liger; the
                                                      attention sub-layer's QK-norm cost
  qknorm bench train  [--out DIR] [--cpu-smoke] ...   one training step of our OLMo 2 372M vs HF (eager,
                                                      compile, Liger), with and without QK-norm

Both need a CUDA GPU; --cpu-smoke runs tiny shapes on CPU (Triton interpreted) to check that they work.
Results are written only with --out DIR; without it they are printed and nothing is written (no
environment variable such as $OUT is read). `qknorm bench WHAT --help` lists each benchmark's options.
"""
from __future__ import annotations

import argparse
import importlib

# Each benchmark is a module with HELP, add_arguments(parser) and run(args) -> int: the CLI owns parsing.
BENCHES = {"kernel": "qknorm.benchmarks.kernel", "train": "qknorm.benchmarks.train_step",
           "generate": "qknorm.benchmarks.generate"}


def add_parser(sub):
    p = sub.add_parser("bench", help="kernel / training-step benchmarks (CUDA GPU; --cpu-smoke on CPU)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benches = p.add_subparsers(dest="what", metavar="WHAT", title="benchmarks")
    benches.required = True
    for name, module_name in BENCHES.items():
        mod = importlib.import_module(module_name)
        bp = benches.add_parser(name, help=mod.HELP, description=mod.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(bp)
        bp.set_defaults(_bench=mod.run)
    return p


def run(args) -> int:
    return int(args._bench(args) or 0)
