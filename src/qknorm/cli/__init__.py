"""The `qknorm` command line: one module per subcommand (cli/<name>.py with `add_parser` and `run`, and a
`FIELD_FLAGS` table when its flags set library fields).

Errors a user can act on (ConfigError, CheckpointError, DataError, bad files) print one line on stderr and
exit with status 2; there is never a traceback for them. Library errors name config fields (`seq_len=...`);
the CLI owns the flags, so it rewrites a field into its flag (`--seq-len=...`) with the command's FIELD_FLAGS.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from ..errors import QKNormError
from ..version import __version__
from ._common import OneLineParser, print_line, to_flags

COMMANDS = ("study", "train", "convert", "inspect", "bench", "generate", "retrofit", "catalog")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="qknorm", description="QK-normalization: models, HF interop, kernels, "
                                     "and a study of what QK-norm buys on your data.")
    parser.add_argument("--version", action="version", version=f"qknorm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        mod = importlib.import_module(f"{__name__}.{name}")  # a missing module is a bug: let it raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run, _flags=getattr(mod, "FIELD_FLAGS", {}))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except QKNormError as e:
        print_line(f"qknorm {args.command}: error: {to_flags(str(e), args._flags)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qknorm {args.command}: interrupted", file=sys.stderr)
        return 130
