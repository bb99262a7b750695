"""Benchmarks behind `qknorm bench WHAT` (cli/bench.py registers them; bench/*.py are thin wrappers).

Each benchmark module exposes `HELP`, `add_arguments(parser)` and `run(args) -> int`. Shared pieces:
environment.py (device, date, versions, command line recorded with every result), equal_models.py (describe
each model from its modules; refuse to compare unequal ones), timing.py (CUDA events over back-to-back calls),
output.py (--out checked before any work, atomic writes).
"""
