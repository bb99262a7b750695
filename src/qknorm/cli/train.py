"""`qknorm train`: train a preset on the default corpus or your data, with stability diagnostics.

    qknorm train --preset qwen3 --steps 300 --lr 3e-3 --out runs/q
    qknorm train --preset llama --set qk_norm=head --set d_model=128 --data my_texts/ --out runs/l
    qknorm train --out runs/l --resume                     # continue exactly: model, settings, data from run.json
    qknorm train --init-from runs/l --steps 500 --out runs/l2    # a new run from a model (ours, a checkpoint, HF)

Writes OUT/run.json (the run's record: model, training settings, data and its fingerprint), OUT/tokenizer.json
(with --tokenizer), OUT/metrics.jsonl (a JSON object a step), OUT/checkpoints/ (with --ckpt-every, and on
SIGTERM/SIGINT), and at the end OUT/model.safetensors + OUT/config.json (`qknorm.load_model(OUT)`); with
--tensorboard also OUT/tb/ (the metrics as TensorBoard event files; needs the tensorboard extra). Prints one
summary line with the logit-growth verdict `qknorm inspect` gives.

--init-from DIR starts a new run (fresh optimizer and schedule) from the weights of a qknorm model, run or
checkpoint directory, or an HF directory of a supported family; the model config is the source's (shape
changes are refused; see train/init_from.py for which --set fields may change), its tokenizer.json is the
run's unless --tokenizer names another (refused unless --allow-changes), and run.json's origin records the
source's path and the sha256 of its weight files.

--resume restores everything the run recorded; a flag that contradicts the record (other data, another
preset or shape, a changed training setting other than steps/evaluation/checkpointing/device/parallel/tp) is
an error naming the recorded value, unless --allow-changes says the change is intended (then a warning line).
Checkpoints reshard, so a run resumes under any process count and tensor-parallel degree; a recorded --tp
that does not divide this launch's processes falls back to 1 (with a note) unless --tp is given.
Exit status: 0 done (also when the loss only wobbled: "no improvement"); 1 the run diverged by
metrics.judge_divergence (a non-finite loss or gradient; or the mean loss of the last 5% of steps, at least 5,
above the first window's by more than max(4 x the per-step noise, 0.1 nat), or above the uniform-prediction loss
ln(vocab); a run under 10 steps is judged on finiteness only), the message carrying the numbers and
OUT/divergence.json the whole verdict; 2 bad input; 128+signal when stopped by one (a checkpoint is written
first; continue with --resume).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..config import ModelConfig
from ..diagnostics import logit_verdict
from ..errors import ConfigError
from ..plain import plain
from ..presets import PRESETS, SIZES, get_config
from ..pretrained import open_model
from ..progress import for_model
from ..train.config import TrainConfig
from ..train.init_from import init_config, init_tokenizer, published_aux_coef
from ..io.names import DIVERGENCE_FILE
from ..train.loop import train
from ..train.resume import plan_resume, preset_model, preset_origin
from ..train.run_dir import RunDir
from ..train.stop import StopKind
from ..data.sources import is_token_file
from ..data.tokens import TokenData, load_tokens
from ..train.tensorboard_log import require_tensorboard
from ._common import (add_tensorboard_and_compile, non_negative_float, non_negative_int, parse_set, positive_float,
                      positive_int, print_line, one_line_warnings)

# the frozen public flags (tests/cli/test_train_cli.py checks the parser against this list)
FLAGS = ("--preset", "--size", "--set", "--data", "--tokenizer", "--steps", "--lr", "--batch-size", "--seq-len",
         "--seed", "--out", "--ckpt-every", "--resume", "--allow-changes", "--device", "--dtype", "--warmup",
         "--weight-decay", "--z-loss", "--grad-accum", "--clip", "--on-nan", "--eval-every", "--parallel",
         "--tp", "--no-progress", "--init-from", "--tensorboard",
         "--compile", "--no-compile")

# flag dest -> TrainConfig field (and back, for error messages: FIELD_FLAGS)
_TRAIN_FLAGS = {"steps": "steps", "lr": "lr", "batch_size": "batch_size", "seq_len": "seq_len", "seed": "seed",
                "ckpt_every": "ckpt_every", "dtype": "dtype", "warmup": "warmup_steps",
                "weight_decay": "weight_decay", "z_loss": "z_loss", "grad_accum": "grad_accum", "clip": "clip",
                "on_nan": "on_nan", "eval_every": "eval_every", "parallel": "parallel", "tp": "tp"}


FIELD_FLAGS = {**{field: "--" + dest.replace("_", "-") for dest, field in _TRAIN_FLAGS.items()},
               "device": "--device", "out_dir": "--out", "resume=True": "--resume",
               "allow_changes=True": "--allow-changes", "preset=NAME": "--preset NAME", "init_from": "--init-from",
               "tokenizer=": "--tokenizer="}


def add_parser(subparsers) -> argparse.ArgumentParser:
    sizes = "; ".join(f"{p}: {', '.join(s)}" for p, s in SIZES.items())
    p = subparsers.add_parser(
        "train", help="train a model with stability diagnostics",
        description="Train a preset (any QK-norm scope and norm placement via --set) and log per-step loss, "
                    "gradient norm, max attention logit and q/k RMS. Flags not given keep the TrainConfig "
                    "defaults (steps 200, lr 3e-3, warmup steps/10, batch 16, seq-len 64), or on --resume the "
                    "run's recorded values.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--init-from", metavar="DIR", help="start a new run from this model's weights: a qknorm model, "
                   "run or checkpoint directory, or an HF directory (the model config is the source's)")
    m.add_argument("--preset", metavar="P", help=f"model family: {', '.join(PRESETS)} (required for a new run)")
    m.add_argument("--size", metavar="S", help=f"preset size (default debug). {sizes}")
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
    t.add_argument("--warmup", type=non_negative_int, metavar="N", help="linear warmup steps (default steps/10)")
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
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint, "
                   "with the model, settings and data it recorded")
    r.add_argument("--allow-changes", action="store_true",
                   help="with --resume: accept flags that contradict the run's record (other data, settings); "
                        "with --init-from: another tokenizer, or --set fields that change the model's function")
    r.add_argument("--device", default="auto", metavar="D", help="cpu, cuda, cuda:N, mps, or auto (default)")
    r.add_argument("--dtype", choices=("fp32", "bf16"), help="fp32 (default) or bf16 autocast")
    r.add_argument("--parallel", choices=("ddp", "fsdp"), help="under torchrun: DDP (default) or FSDP2")
    r.add_argument("--tp", type=positive_int, metavar="N", help="under torchrun: tensor-parallel degree (default "
                   "1); with --parallel fsdp, processes/N data-parallel groups of N")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_tensorboard_and_compile(r, events_in="the metrics as TensorBoard event files in OUT/tb",
                                compile_what="the training forward/backward", compile_default=None)
    return p


@dataclasses.dataclass
class _Plan:
    """What `run` trains: the model and training configs, the data, and what the run records about itself."""

    model_config: ModelConfig
    cfg: TrainConfig
    data: TokenData
    origin: Dict[str, Any]
    notes: List[str]
    init_state: Optional[Dict[str, Any]] = None  # --init-from: the source's weights


def _flag_overrides(args) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(model fields, training fields) the command line sets explicitly (flags and --set)."""
    model_over, train_over = parse_set(args.overrides)
    for dest, field in _TRAIN_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            train_over[field] = value
    if args.device != "auto":
        train_over["device"] = args.device
    if args.no_progress:
        train_over["progress"] = False
    if args.compile is not None:
        train_over["compile"] = args.compile
    return model_over, train_over


def build_configs(args) -> Tuple[ModelConfig, TrainConfig, bool]:
    """(ModelConfig, TrainConfig, vocab_size explicitly set?) of a new run from the parsed arguments."""
    if args.preset is None:
        raise ConfigError(f"--preset is required for a new run; choose one of: {', '.join(PRESETS)}")
    model_over, train_over = _flag_overrides(args)
    train_over.setdefault("device", _resolve_device("auto"))
    return get_config(args.preset, args.size or "debug", **model_over), TrainConfig(**train_over), \
        "vocab_size" in model_over


def _fresh_plan(args) -> _Plan:
    _, cfg, _ = build_configs(args)  # a bad preset, size, flag or --set fails before the data is read
    model_over, _ = _flag_overrides(args)
    size = args.size or "debug"
    data = load_tokens(args.data, tokenizer=args.tokenizer)
    notes: List[str] = []
    config = preset_model(args.preset, size, model_over, data, notes)
    return _Plan(config, cfg, data, preset_origin(args.preset, size, model_over), notes)


def _init_plan(args) -> _Plan:
    """A new run from the weights in --init-from (train/init_from.py has the rules), everything checked."""
    if args.preset is not None or args.size is not None:
        flag = "--preset" if args.preset is not None else "--size"
        raise ConfigError(f"{flag}: with --init-from the model comes from {args.init_from}; leave {flag} out (--set "
                          "may change some fields)")
    model_over, train_over = _flag_overrides(args)
    train_over.setdefault("device", _resolve_device("auto"))
    cfg = TrainConfig(**train_over)  # a bad training flag fails before the source is read
    with for_model("qknorm train", args.init_from, enabled=not args.no_progress).stage("reading --init-from"):
        src = open_model(args.init_from)
    where = f"the model of --init-from {src.path}"
    config = init_config(src.model.config, model_over, allow_changes=args.allow_changes, where=where)
    notes: List[str] = []
    coef = published_aux_coef(src)  # an HF mixture-of-experts checkpoint's own balancing-loss coefficient
    if coef is not None and "router_aux_loss_coef" not in train_over:
        cfg = cfg.replace(router_aux_loss_coef=coef)
        notes.append(f"router_aux_loss_coef={coef:g}, as {src.path}'s config.json publishes (--set changes it)")
    if args.data is not None and is_token_file(Path(args.data)) and args.tokenizer is None:
        tokenizer = None  # already token ids: the model's tokenizer is not applied (nor copied into the run)
        if src.tokenizer is not None:
            notes.append(f"{args.data} is already tokenized: {src.tokenizer} is not applied nor copied into the run")
    else:
        tokenizer = init_tokenizer(src, args.tokenizer, allow_changes=args.allow_changes)
    data = load_tokens(args.data, tokenizer=tokenizer)  # ids beyond the model's vocabulary: train refuses them
    origin = {"init_from": src.record(), "overrides": plain(model_over)}
    return _Plan(config, cfg, data, origin, notes, init_state=src.model.state_dict())


def _resume_plan(args, run_dir: RunDir) -> _Plan:
    """The run as recorded in its run.json, with the command line's explicit changes (train/resume.py plans it;
    `train` checks the changes against the record)."""
    model_over, train_over = _flag_overrides(args)
    train_over.setdefault("device", _resolve_device("auto"))
    plan = plan_resume(run_dir, train_changes=train_over, model_changes=model_over, data=args.data,
                       tokenizer=args.tokenizer, preset=args.preset, size=args.size, allow_changes=args.allow_changes)
    return _Plan(plan.model_config, plan.cfg, plan.data, plan.origin, list(plan.notes))


def _resolve_device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run(args) -> int:
    with one_line_warnings("qknorm train"):
        if args.tensorboard:
            require_tensorboard()  # before any model or data is read
        if args.init_from is not None and args.resume:
            raise ConfigError("--init-from starts a new run from a model; --resume continues the run in --out: give "
                              "one of them")
        if args.out is None and (args.preset is None or args.init_from is not None):
            raise ConfigError("--out is required with --resume (the run directory)" if args.resume else
                              "--out is required with --init-from (the new run's directory)" if args.init_from
                              else f"--preset is required for a new run; choose one of: {', '.join(PRESETS)}")
        out = Path(args.out or f"runs/{args.preset}-{args.size or 'debug'}")
        run_dir = RunDir.check(out, args.resume)  # before any data or model is read; train takes it as checked
        plan = _init_plan(args) if args.init_from is not None else \
            _resume_plan(args, run_dir) if args.resume else _fresh_plan(args)
        c, cfg = plan.model_config, plan.cfg
        what = (f"{plan.origin['preset']}/{plan.origin.get('size', '')}".rstrip("/") if "preset" in plan.origin else
                f"model of {plan.origin['init_from']['path']}" if "init_from" in plan.origin else "recorded model")
        plan.notes.append(f"{what}: {c.num_params() / 1e6:.2f}M params, qk_norm={c.qk_norm.value}, placement="
                          f"{c.placement.value}; {cfg.steps} steps, lr {cfg.lr:g}, batch {cfg.batch_size}x"
                          f"{cfg.seq_len}{f', tp {cfg.tp}' if cfg.tp > 1 else ''}; data: {plan.data.source}; "
                          f"out: {out}")
        # the notes come once train() has checked everything (device, data length, checkpoint, run dir):
        # bad input found there is reported by its error line alone
        result = train(c, cfg, plan.data, out_dir=run_dir, resume=args.resume, origin=plan.origin,
                       allow_changes=args.allow_changes, on_ready=lambda: [_note(n) for n in plan.notes],
                       init_state=plan.init_state, tensorboard=args.tensorboard)
    return _report(result, out, c)


def _report(result, out: Path, config: ModelConfig) -> int:
    """The summary line (stdout) and the exit status."""
    stop = result.stop_reason
    if stop is not None and stop.kind is StopKind.SIGNAL:
        _note(f"{stop} after step {result.steps_done}; checkpoint written to {out}/checkpoints; continue with --resume")
    elif stop is not None and stop.kind is StopKind.CALLBACK:
        _note(f"{stop} after step {result.steps_done}; continue with --resume")
    elif stop is not None:
        _note(f"error: the run diverged: {stop}; stopped (on_nan=stop); checkpoints in {out} are the last good state")
    if stop is not None:
        return stop.exit_code
    val = f"{result.val_loss:.4f}" if result.val_loss is not None else "n/a"
    verdict = logit_verdict(result.max_attn_logit, qk_norm=config.qk_norm.value != "none") \
        if math.isfinite(result.max_attn_logit) else "no attention statistics recorded (stats_every=0)"
    loss = "" if result.diverged else f"; {result.verdict.describe()}"
    if _is_main():
        print_line(f"qknorm train: {result.steps_done} steps, final loss {result.final_loss:.4f}, val loss {val}, "
                   f"{result.tokens_per_s:,.0f} tokens/s -> {out}{loss}; {verdict}")
        if result.compile_report is not None:
            print_line(f"qknorm train: {result.compile_report.describe()}")
    if result.diverged:
        _note(f"error: the run diverged: {result.verdict.describe()} ({out}/{DIVERGENCE_FILE})")
        return 1
    return 0


def _is_main() -> bool:
    """Rank 0 of a torchrun job (or a plain single process): the one that prints notes and the summary."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def _note(msg: str) -> None:
    if _is_main():
        print_line(f"qknorm train: {msg}", file=sys.stderr)
