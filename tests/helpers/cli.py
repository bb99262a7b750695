"""Run a `qknorm` subcommand in-process and capture what it printed: for CLI tests that check exit codes and the
one-line errors on stderr without the cost of a subprocess."""
from __future__ import annotations

from typing import List, Sequence, Tuple

from qknorm.cli import main


def run_cli(command: str, args: Sequence[str], capsys) -> Tuple[int, str, List[str]]:
    """(exit code, stdout, stderr lines) of `qknorm COMMAND ARGS`; argparse's own rejections (SystemExit) count
    as the exit code they carry."""
    capsys.readouterr()
    try:
        code = main([command, *args])
    except SystemExit as e:  # argparse rejects a bad flag value itself (one line, status 2)
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()
