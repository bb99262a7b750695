"""`qknorm convert`: Hugging Face checkpoints <-> our model directories, and OLMo-core checkpoints in, exactly.

    qknorm convert --from-hf path/to/Qwen3-0.6B --out runs/qwen3       # HF dir -> ours (config.json + safetensors)
    qknorm convert --to-hf runs/olmo2-debug --out export/olmo2          # ours -> a dir transformers loads
    qknorm convert --from-hf DIR --out DIR --check --dtype bf16
    qknorm convert --from-olmo-core runs/olmo2/step10000 --out ours/    # OLMo-core trainer step dir -> ours

--from-olmo-core reads the step directory's model_and_optim/ (torch.distributed.checkpoint, any number of
ranks) and config.json (interop/olmo_core.py); OLMo-core is not imported. --max-seq-len sets the converted
model's max_seq_len (--from-hf: instead of config.json's max_position_embeddings, which OLMo-core's HF export
writes as -1, "unknown"; the defaults are in interop/hf_config.py and interop/olmo_core.py).

Reading an HF directory needs only safetensors. `--check` (needs transformers) runs both models in float32 on
the same random tokens *before* anything is written, prints the per-block divergence report, and writes nothing
(exit 1) when a stage differs by more than --tol. Errors print one line and exit 2; an existing non-empty
--out is never touched without --overwrite.
"""
from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from ..interop.hf_families import SUPPORTED_MODEL_TYPES
from ..progress import for_model
from ._common import one_line_warnings, positive_float, positive_int

# library arguments -> this command's flags (errors are reported with the flag the user typed)
FIELD_FLAGS = {"overwrite=True": "--overwrite", "allow_folded=True": "--allow-folded", "qknorm.from_hf": "--from-hf"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "convert", help="convert Hugging Face checkpoints to our format and back",
        description="Convert an HF checkpoint directory of a supported model type (--from-hf: "
                    f"{', '.join(SUPPORTED_MODEL_TYPES)}) or an OLMo-core trainer checkpoint (--from-olmo-core) to a "
                    "qknorm model directory, or a qknorm model directory to one transformers loads (--to-hf).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", metavar="DIR", help="HF checkpoint directory (config.json + *.safetensors)")
    src.add_argument("--to-hf", metavar="DIR", help="qknorm model directory (config.json + model.safetensors), a "
                     "training checkpoint (RUN/checkpoints/step_N) or a run directory")
    src.add_argument("--from-olmo-core", metavar="DIR", help="OLMo-core checkpoint step directory "
                     "(model_and_optim/ + config.json with the model config under 'model')")
    p.add_argument("--out", metavar="DIR", required=True, help="output directory (must be empty or new)")
    p.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="dtype of the written weights (default: as stored)")
    p.add_argument("--check", action="store_true",
                   help="compare against transformers in float32 before writing; print the per-block report")
    p.add_argument("--tol", type=positive_float, default=1e-5, metavar="REL",
                   help="relative error a stage may have under --check (default 1e-5)")
    p.add_argument("--seq-len", type=positive_int, default=64, metavar="T", help="tokens used by --check (64)")
    p.add_argument("--max-seq-len", type=positive_int, metavar="N",
                   help="max_seq_len of the converted model (--from-hf / --from-olmo-core; default: the "
                        "checkpoint's, or the family default when it is unknown)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an existing non-empty --out")
    p.add_argument("--allow-folded", action="store_true",
                   help="accept Gemma norm weights that look already folded to 1 + w (see interop/hf_keys.py)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress on stderr (shown for large models: a line per stage with elapsed time)")
    return p


def _check_out(out: Path, src: Path, overwrite: bool) -> None:
    if out.resolve() == src.resolve():
        raise CheckpointError(f"{out}: --out must differ from the source directory")
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{out}: exists and is not empty; pass --overwrite to replace its model files")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("--check needs transformers (pip install 'qknorm[hf]'); run without --check to convert "
                          "with safetensors only") from None
    transformers.logging.set_verbosity_error()
    return transformers


def _check(ours, hf_dir: Path, args) -> bool:
    from ..interop.divergence import compare_with_hf

    tf = _transformers()
    try:
        hf = tf.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    except Exception as e:  # transformers' own errors: report them in one line
        raise CheckpointError(f"{hf_dir}: transformers cannot load it ({e.__class__.__name__}: {e})") from None
    ours = ours if ours.embed.weight.dtype == torch.float32 else copy.deepcopy(ours).float()
    T = min(args.seq_len, ours.config.max_seq_len)
    ids = torch.randint(0, ours.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(0))
    report = compare_with_hf(ours, hf, ids, tol=args.tol)
    print(f"check against transformers {tf.__version__} (float32, {tuple(ids.shape)} random tokens):")
    print(report)
    return report.ok


def run(args: argparse.Namespace) -> int:
    from ..io.model_dir import save_model
    from ..io.tokenizer_files import copy_tokenizer_files
    from ..interop.hf import resolve_dtype, to_hf
    from ..interop.hf_config import infer_family
    from ..pretrained import OLMO_CORE, open_model

    src = Path(args.from_hf or args.to_hf or args.from_olmo_core)
    out = Path(args.out)
    if args.to_hf and args.max_seq_len:
        raise ConfigError("--max-seq-len applies to --from-hf and --from-olmo-core (the model's own config is "
                          "written with --to-hf)")
    if args.from_olmo_core and args.check:
        raise ConfigError("--check compares against transformers; with --from-olmo-core convert without it")
    _check_out(out, src, args.overwrite)
    dtype = resolve_dtype(args.dtype)
    prog = for_model("qknorm convert", src, enabled=not args.no_progress)
    # the flag names the source's kind: each is read by its own reader (and fails with its own error)
    source_kind = OLMO_CORE if args.from_olmo_core else "hf" if args.from_hf else "qknorm"
    with one_line_warnings("qknorm convert"), prog.stage("reading the model"):  # e.g. a run's newest checkpoint
        opened = open_model(src, kind=source_kind, max_seq_len=args.max_seq_len, allow_folded=args.allow_folded)
    model, src = opened.model, opened.path
    if args.from_olmo_core:
        model = model.to(dtype) if dtype else model
        kind = "qknorm, from OLMo-core"
    elif args.from_hf:
        if args.check:
            with prog.stage("checking against transformers"):
                ok = _check(model, src, args)
            if not ok:
                print(f"qknorm convert: {src} does not match transformers within rel {args.tol:g}; nothing written")
                return 1
        model = model.to(dtype) if dtype else model
        kind = "qknorm"
    else:
        if dtype:
            model = model.to(dtype)
        infer_family(model.config)  # fail early, in one line, when transformers cannot represent it
        if args.check:
            with tempfile.TemporaryDirectory(prefix=".qknorm-check-") as tmp, \
                    prog.stage("checking against transformers"):
                to_hf(model, Path(tmp) / "hf")
                ok = _check(model, Path(tmp) / "hf", args)
            if not ok:
                print(f"qknorm convert: the export of {src} does not match within rel {args.tol:g}; nothing written")
                return 1
        kind = f"transformers {infer_family(model.config).model_type}"
    tokenizer = opened.tokenizer
    try:
        with prog.stage("writing"):
            if args.from_hf or args.from_olmo_core:
                save_model(model, out)
            else:
                to_hf(model, out, overwrite=args.overwrite)
            if tokenizer is not None:  # the tokenizer travels with the model (with its chat template, if any)
                copy_tokenizer_files(tokenizer, out)
    except OSError as e:
        raise CheckpointError(f"{out}: cannot write ({e.strerror or e})") from None
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({kind}, {n:,} parameters, {str(model.embed.weight.dtype).removeprefix('torch.')}"
          + (", with tokenizer.json)" if tokenizer is not None else ")"))
    return 0
