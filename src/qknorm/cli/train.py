"""`qknorm train`: train a preset on the default corpus or your data, with stability diagnostics.

    qknorm train --preset qwen3 --steps 300 --lr 3e-3 --out runs/q
    qknorm train --preset llama --set qk_norm=head --set d_model=128 --data my_texts/ --out runs/l
    qknorm train --preset llama --out runs/l --resume            # continue from the newest checkpoint

Writes OUT/metrics.jsonl (a JSON object a step), OUT/checkpoints/ (with --ckpt-every, and on SIGTERM/SIGINT),
and at the end OUT/model.safetensors + OUT/config.json (`qknorm.load_model(OUT)`). Prints one summary line.
Exit status: 0 done; 1 stopped on a non-finite loss/gradient; 2 bad input; 128+signal when stopped by one
(a checkpoint is written first; continue with --resume).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import warnings
from pathlib import Path

from ..errors import ConfigError
from ..presets import PRESETS, SIZES
from ._common import non_negative_float, non_negative_int, parse_set, positive_float, positive_int

# the frozen public flags (tests/cli/test_train_cli.py checks the parser against this list)
FLAGS = ("--preset", "--size", "--set", "--data", "--tokenizer", "--steps", "--lr", "--batch-size", "--seq-len",
         "--seed", "--out", "--ckpt-every", "--resume", "--device", "--dtype", "--warmup", "--weight-decay",
         "--z-loss", "--grad-accum", "--clip", "--on-nan", "--eval-every", "--parallel", "--no-progress")

# flag dest -> TrainConfig field (and back, for error messages: FIELD_FLAGS)
_TRAIN_FLAGS = {"steps": "steps", "lr": "lr", "batch_size": "batch_size", "seq_len": "seq_len", "seed": "seed",
                "ckpt_every": "ckpt_every", "dtype": "dtype", "warmup": "warmup_steps",
                "weight_decay": "weight_decay", "z_loss": "z_loss", "grad_accum": "grad_accum", "clip": "clip",
                "on_nan": "on_nan", "eval_every": "eval_every", "parallel": "parallel"}


FIELD_FLAGS = {**{field: "--" + dest.replace("_", "-") for dest, field in _TRAIN_FLAGS.items()},
               "device": "--device", "out_dir": "--out", "resume=True": "--resume"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    sizes = "; ".join(f"{p}: {', '.join(s)}" for p, s in SIZES.items())
    p = subparsers.add_parser(
        "train", help="train a model with stability diagnostics",
        description="Train a preset (any QK-norm scope and norm placement via --set) and log per-step loss, "
                    "gradient norm, max attention logit and q/k RMS. Flags not given keep the TrainConfig "
                    "defaults (steps 200, lr 3e-3, warmup 20, batch 16, seq-len 64).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--preset", required=True, metavar="P", help=f"model family: {', '.join(PRESETS)}")
    m.add_argument("--size", default="debug", metavar="S", help=f"preset size (default debug). {sizes}")
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a model field (qk_norm=head, placement=reordered, d_model=128, "
                        "layer_types=sliding,full, n_kv_heads=none) or a training field (final_lr=0, "
                        "stats_every=5); repeatable")
    d = p.add_argument_group("data")
    d.add_argument("--data", metavar="PATH", help="text file, directory, glob, or *.bin/*.npy token file "
                   "(default: the embedded Python-stdlib corpus)")
    d.add_argument("--tokenizer", metavar="FILE", help="HF tokenizer.json for text data (default: bytes)")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=positive_int, metavar="N")
    t.add_argument("--lr", type=positive_float, metavar="X", help="peak learning rate")
    t.add_argument("--warmup", type=non_negative_int, metavar="N", help="linear warmup steps")
    t.add_argument("--batch-size", type=positive_int, metavar="B", help="GLOBAL batch size in sequences")
    t.add_argument("--seq-len", type=positive_int, metavar="T")
    t.add_argument("--grad-accum", type=positive_int, metavar="K", help="micro-batches per step")
    t.add_argument("--weight-decay", type=non_negative_float, metavar="W",
                   help="AdamW decay (norm gains, biases, embeddings excluded unless --set decay_norms=true)")
    t.add_argument("--z-loss", type=non_negative_float, metavar="Z", help="z-loss coefficient (e.g. 1e-4)")
    t.add_argument("--clip", type=non_negative_float, metavar="C", help="gradient-norm clip; 0 = off")
    t.add_argument("--seed", type=non_negative_int, metavar="S")
    t.add_argument("--on-nan", choices=("skip", "stop"), help="on a non-finite loss/gradient (default stop)")
    t.add_argument("--eval-every", type=non_negative_int, metavar="N", help="validate every N steps (0 = at end)")
    r = p.add_argument_group("run")
    r.add_argument("--out", metavar="DIR", help="run directory (default runs/<preset>-<size>)")
    r.add_argument("--ckpt-every", type=non_negative_int, metavar="N", help="checkpoint every N steps")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    r.add_argument("--device", default="auto", metavar="D", help="cpu, cuda, cuda:N, mps, or auto (default)")
    r.add_argument("--dtype", choices=("fp32", "bf16"), help="fp32 (default) or bf16 autocast")
    r.add_argument("--parallel", choices=("ddp", "fsdp"), help="under torchrun: DDP (default) or FSDP2")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def build_configs(args):
    """(ModelConfig, TrainConfig, vocab_size explicitly set?) from parsed arguments."""
    from ..presets import get_config
    from ..train.config import TrainConfig

    model_over, train_over = parse_set(args.overrides)
    for dest, field in _TRAIN_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            train_over[field] = value
    if args.device != "auto" or "device" not in train_over:
        train_over["device"] = _resolve_device(args.device)
    if args.no_progress:
        train_over["progress"] = False
    model_config = get_config(args.preset, args.size, **model_over)
    return model_config, TrainConfig(**train_over), "vocab_size" in model_over


def _resolve_device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args) -> int:
    from ..train.loop import train
    from ..train.rundir import check_out_dir
    from ..train.tokens import load_tokens

    with _one_line_warnings():
        model_config, cfg, vocab_given = build_configs(args)
        out = Path(args.out or f"runs/{args.preset}-{args.size}")
        check_out_dir(out, args.resume)
        data = load_tokens(args.data, tokenizer=args.tokenizer)
        notes = []
        if data.vocab_size > model_config.vocab_size:
            if vocab_given:
                raise ConfigError(f"--set vocab_size={model_config.vocab_size} is smaller than the data's "
                                  f"vocabulary ({data.vocab_size})")
            model_config = model_config.replace(vocab_size=data.vocab_size)
            notes.append(f"vocab_size set to the data's vocabulary: {data.vocab_size}")
        notes.append(f"{args.preset}/{args.size}: {model_config.num_params() / 1e6:.2f}M params, qk_norm="
                     f"{model_config.qk_norm.value}, placement={model_config.placement.value}; {cfg.steps} steps, "
                     f"lr {cfg.lr:g}, batch {cfg.batch_size}x{cfg.seq_len}; data: {data.source}; out: {out}")
        # the notes come once train() has checked everything (device, data length, checkpoint, run dir):
        # bad input found there is reported by its error line alone
        result = train(model_config, cfg, data, out_dir=out, resume=args.resume,
                       on_ready=lambda: [_note(n) for n in notes])
    if result.stop_reason and result.stop_reason.startswith("stopped by SIG"):
        signame = result.stop_reason.split()[-1]
        _note(f"{result.stop_reason} after step {result.steps_done}; checkpoint written to {out}/checkpoints; "
              "continue with --resume")
        return 128 + int(getattr(signal, signame, signal.SIGTERM))
    if result.stop_reason:
        print(f"qknorm train: error: {result.stop_reason}; stopped (on_nan=stop); checkpoints in {out} are "
              "the last good state", file=sys.stderr)
        return 1
    val = f"{result.val_loss:.4f}" if result.val_loss is not None else "n/a"
    flag = " (DIVERGED: final loss above initial loss)" if result.diverged else ""
    if _is_main():
        print(f"qknorm train: {result.steps_done} steps, final loss {result.final_loss:.4f}{flag}, val loss {val}, "
              f"max attention logit {result.max_attn_logit:.4g}, {result.tokens_per_s:,.0f} tokens/s -> {out}")
    return 0


def _is_main() -> bool:
    """Rank 0 of a torchrun job (or a plain single process): the one that prints notes and the summary."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def _note(msg: str) -> None:
    if _is_main():
        print(f"qknorm train: {msg}", file=sys.stderr)


@contextlib.contextmanager
def _one_line_warnings():
    """Warnings (e.g. a skipped damaged checkpoint) as single 'qknorm train: warning: ...' lines."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"qknorm train: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield
