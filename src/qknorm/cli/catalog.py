"""`qknorm catalog`: the QK-norm design of every supported family, read from its bundled published config.

    qknorm catalog                              # the table, Markdown (docs/catalog.md is this output)
    qknorm catalog --format html                # or json
    qknorm catalog --build qwen3-0.6b --out m/  # a small random model of that design, for `qknorm inspect m/`

The table and the shrinking live in the library (qknorm/catalog); this module only parses and prints.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..errors import ConfigError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "catalog", help="the QK-norm design of every supported family (bundled configs, no download)",
        description="One table of the QK-norm design of every family qknorm reads, from each family's published "
                    "config.json (bundled); or, with --build, a small random model of one of them.")
    p.add_argument("--format", choices=("markdown", "html", "json"), default="markdown", help="table format")
    p.add_argument("--build", metavar="NAME", help="write a small random model of this bundled config (its file "
                   "name without .json) to --out, as a Hugging Face directory")
    p.add_argument("--out", metavar="DIR", help="directory for --build (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights of --build (default 0)")
    return p


def run(args) -> int:
    from .. import catalog
    from ..interop.hf import to_hf
    from ..model import TransformerLM

    if args.build is None:
        if args.out is not None:
            raise ConfigError("--out needs --build NAME")
        sys.stdout.write(catalog.render([e.row() for e in catalog.entries()], args.format))
        return 0
    names = sorted(p.stem for p in catalog.CONFIG_DIR.glob("*.json"))
    if args.build not in names:
        raise ConfigError(f"--build {args.build!r} is not a bundled config; choose one of: {', '.join(names)}")
    if args.out is None:
        raise ConfigError("--build needs --out DIR")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not an empty directory")
    entry = catalog.read_entry(catalog.CONFIG_DIR / f"{args.build}.json")
    torch.manual_seed(args.seed)
    model = TransformerLM(catalog.small_config(entry.config))
    to_hf(model, out)
    print(f"wrote {out}: {entry.model_type} ({entry.source}) at {model.num_params():,} parameters")
    return 0
