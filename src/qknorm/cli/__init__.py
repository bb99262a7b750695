"""The `qknorm` command line: one module per subcommand (cli/<name>.py with `add_parser` and `run`).

Errors a user can act on (ConfigError, CheckpointError, DataError, bad files) print one line on stderr and
exit with status 2; there is never a traceback for them.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from ..errors import QKNormError

COMMANDS = ("study", "train", "convert", "inspect", "bench")


def build_parser() -> argparse.ArgumentParser:
    from ._common import OneLineParser

    parser = OneLineParser(prog="qknorm", description="QK-normalization: models, HF interop, kernels, "
                                     "and a study of what QK-norm buys on your data.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        mod = importlib.import_module(f"{__name__}.{name}")  # a missing module is a bug: let it raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except QKNormError as e:
        print(f"qknorm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qknorm {args.command}: interrupted", file=sys.stderr)
        return 130
