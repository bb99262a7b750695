"""`qknorm bench WHAT [options]`: kernel, attention-layer and end-to-end training benchmarks.

  qknorm bench kernel [--out DIR] [--cpu-smoke]   fused QK-RMSNorm+RoPE vs eager, torch.compile, Liger, the
                                                  bandwidth floor; and the attention sub-layer overhead
  qknorm bench train  [--out DIR] [--cpu-smoke]   one training step of our OLMo 2 372M vs HF (eager, compile,
                                                  Liger), tokens/s and peak memory
Options after WHAT go to that benchmark (`qknorm bench kernel --help`).
"""
from __future__ import annotations

import argparse
import importlib

from ..errors import ConfigError

BENCHES = {"kernel": "qknorm.benchmarks.kernel", "train": "qknorm.benchmarks.train_step"}


def add_parser(sub):
    p = sub.add_parser("bench", help="kernel / layer / training-step benchmarks (GPU; --cpu-smoke on CPU)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", metavar="WHAT", help=f"one of: {', '.join(BENCHES)}")
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p


def run(args) -> int:
    if args.what not in BENCHES:
        raise ConfigError(f"bench WHAT={args.what!r} is not allowed; choose one of: {', '.join(BENCHES)}")
    return int(importlib.import_module(BENCHES[args.what]).main(args.rest) or 0)
