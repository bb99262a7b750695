"""The training loop: AdamW + warmup/cosine, clipping, z-loss, grad accumulation, diagnostics, checkpoints.

    result = train(get_config("llama", "debug"), TrainConfig(steps=200, lr=3e-3), load_tokens(), out_dir="runs/x")

One step (0-based index s): lr = lr_at(s); the global batch Batcher.batch(s) (a pure function of seed and s)
is split into `grad_accum` micro-batches; loss = CE (+ z_loss * mean(logsumexp(logits)^2)); the gradient
norm is measured before clipping; loss and norm come back with one device sync and a non-finite value skips
the step or stops the run (`on_nan`). Every `stats_every` steps a no-grad pass on <= 4 sequences of the batch
records per-layer max attention logit and q/k RMS (diagnostics.stats_pass; max / mean over the ranks of a
data-parallel run).

With `out_dir`: metrics.jsonl (a line a step, strict JSON: non-finite numbers are null), checkpoints/
(train/checkpoints/), and at the end model.safetensors + config.json (qknorm.load_model reads them).
`resume=True` continues from the newest usable checkpoint to bit-identical weights (CPU, same settings).
SIGTERM/SIGINT finish the current step, write a checkpoint and return (`stop_reason`); a second SIGINT aborts.

Data parallelism hooks in through a `Runtime` (train/runtime.py): rank/world size, model wrapping, metric
reduction, rank-0-only writes. Here nothing calls torch.distributed directly.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from ..config import ModelConfig
from ..diagnostics import stats_pass, summarize
from ..errors import ConfigError
from ..model import TransformerLM
from .batcher import Batcher
from .checkpoints.layout import CKPT_DIR
from .checkpoints.resume import load_training_checkpoint, save_training_checkpoint
from .checkpoints.rng import capture_rng_state, restore_rng_state
from .config import FREE_ON_RESUME, OnNaN, TrainConfig
from .export import export_model
from .metrics_log import METRICS_FILE, MetricsLog
from .optim import build_optimizer, lr_at, set_lr
from .rundir import check_out_dir
from .runtime import Runtime
from .runtimes import make_runtime
from .signals import StopRequest
from .step import autocast_factory, evaluate, forward_backward, val_batches
from .tokens import TokenData

__all__ = ["TrainResult", "train", "STATS_SEQS"]

STATS_SEQS = 4  # sequences of the batch the stats pass sees


@dataclasses.dataclass
class TrainResult:
    history: List[Dict[str, Any]]  # one record a step (see module docstring of metrics keys)
    init_loss: float  # loss at step 0, before any update
    final_loss: float  # mean loss of the last max(1, steps // 20) steps (NaN/inf if diverged)
    val_loss: Optional[float]  # last validation loss; None without validation data
    max_attn_logit: float  # max over recorded steps and layers (NaN if no stats were recorded)
    diverged: bool  # NaN/Inf loss, or final loss above init_loss (metrics.is_diverged)
    steps_done: int
    model: TransformerLM  # final model, on CPU
    stop_reason: Optional[str] = None  # None = ran all steps; else why it stopped early
    tokens_per_s: float = 0.0  # training throughput of this process's run (global tokens / wall time)
    summary: Dict[str, Any] = dataclasses.field(default_factory=dict)  # diagnostics.summarize(history)


def train(model_config: ModelConfig, cfg: TrainConfig, data: TokenData, *, out_dir: str | Path | None = None,
          resume: bool = False, callback: Optional[Callable[[Dict[str, Any]], Optional[bool]]] = None,
          runtime: Optional[Runtime] = None, on_ready: Optional[Callable[[], None]] = None) -> TrainResult:
    """Train a fresh `TransformerLM(model_config)` (init from `cfg.seed`) on `data`; see the module docstring.

    `callback(record)` is called after every step with its metrics record (main process); returning True
    stops training after that step like SIGTERM does (a checkpoint is written when there is an out_dir).
    `on_ready()` is called once the set-up (data, model, resume, run directory) succeeded, just before the
    first step: the CLI prints its start note there, so bad input fails with its error line alone.
    """
    if data.vocab_size > model_config.vocab_size:
        raise ConfigError(f"vocab_size={model_config.vocab_size} of the model is smaller than the data's "
                          f"vocabulary ({data.vocab_size} tokens, {data.source}); set vocab_size >= {data.vocab_size}")
    if resume and out_dir is None:
        raise ConfigError("resume=True needs out_dir (the run directory holding checkpoints/)")
    rt = runtime or make_runtime(cfg.device, cfg.parallel)
    device = torch.device(cfg.device)
    local_batch = cfg.batch_size // rt.world_size
    if cfg.batch_size % rt.world_size or local_batch % cfg.grad_accum:
        raise ConfigError(f"batch_size={cfg.batch_size} must split evenly over {rt.world_size} process(es) x "
                          f"grad_accum={cfg.grad_accum} micro-batches")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        check_out_dir(out, resume)
    batcher = Batcher(data.train, batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=cfg.seed, rank=rt.rank,
                      world_size=rt.world_size, name="training split")
    val = val_batches(data, cfg, rt)

    torch.manual_seed(cfg.seed)
    model = TransformerLM(model_config).to(device)
    wrapped = rt.wrap(model)
    optimizer = build_optimizer(model, cfg)
    start, init_loss, elapsed0 = 0, math.nan, 0.0
    ckpt_root = out / CKPT_DIR if out is not None else None
    if resume:
        # either checkpoint format (full, or sharded by a multi-process run), saved under any world size
        ckpt = load_training_checkpoint(rt, ckpt_root, wrapped, optimizer, model_config)
        restore_rng_state(ckpt.rng_state)
        start, init_loss = ckpt.step, float(ckpt.extra.get("init_loss", math.nan))
        elapsed0 = float(ckpt.extra.get("elapsed_s", 0.0))
        _warn_changed_settings(ckpt.train_config, cfg, ckpt.path)
    log = None
    if out is not None and rt.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create output directory {out}: {e.strerror or e}") from None
        log = MetricsLog(out / METRICS_FILE, resume_step=start if resume else None)
    history = log.history if log is not None else []

    autocast = autocast_factory(device, cfg.dtype)
    tokens_per_step = cfg.batch_size * cfg.seq_len
    stop_reason: Optional[str] = None
    last_ckpt = start if resume else -1

    def checkpoint(step_count: int) -> None:
        nonlocal last_ckpt
        if ckpt_root is None or step_count == last_ckpt:
            return
        # full checkpoint files in one process, sharded (torch.distributed.checkpoint) under torchrun
        save_training_checkpoint(rt, ckpt_root, step_count, wrapped, optimizer, model_config=model_config,
                                 train_config=cfg.to_dict(), rng_state=capture_rng_state(),
                                 extra={"init_loss": init_loss, "elapsed_s": elapsed0 + time.perf_counter() - t0},
                                 keep_last=cfg.keep_last)
        last_ckpt = step_count

    if on_ready is not None:
        on_ready()
    bar = _progress(cfg, rt, start)
    t0 = time.perf_counter()
    steps_done = start
    try:
        with StopRequest() as stop:
            for step in range(start, cfg.steps):
                lr = lr_at(step, cfg)
                set_lr(optimizer, lr)
                x, y = batcher.batch(step)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                record: Dict[str, Any] = {"step": step}
                if cfg.stats_every and (step % cfg.stats_every == 0 or step == cfg.steps - 1):
                    record.update(stats_pass(model, x[:STATS_SEQS], forward=wrapped, autocast=autocast,
                                                         runtime=rt))
                loss, gnorm = forward_backward(wrapped, x, y, cfg, rt, autocast)
                if step == 0 and not resume:
                    init_loss = loss
                finite = math.isfinite(loss) and math.isfinite(gnorm)
                if finite:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                record.update(loss=loss, lr=lr, grad_norm=gnorm, tokens=(step + 1) * tokens_per_step)
                if not finite:
                    record["skipped"] = True
                    if cfg.on_nan is OnNaN.STOP:
                        stop_reason = (f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at "
                                       f"step {step} (loss={loss}, grad_norm={gnorm}); the update was not applied")
                if val is not None and (step == cfg.steps - 1 or (cfg.eval_every and (step + 1) % cfg.eval_every
                                                                   == 0)) and stop_reason is None:
                    record["val_loss"] = evaluate(wrapped, val, autocast, rt)
                record["time_s"] = elapsed0 + time.perf_counter() - t0
                history.append(record)
                if log is not None:
                    log.write(record)
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0 or step == cfg.steps - 1:
                        bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)
                if stop_reason is not None:
                    break
                steps_done = step + 1
                want_stop = bool(callback(record)) if callback is not None and rt.is_main else False
                if stop.signame is not None:
                    want_stop = True
                if rt.broadcast_flag(want_stop):
                    stop_reason = f"stopped by {stop.signame}" if stop.signame else "stopped by the callback"
                    checkpoint(step + 1)
                    break
                if cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0:
                    checkpoint(step + 1)
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    train_time = time.perf_counter() - t0
    completed = stop_reason is None
    if completed and cfg.ckpt_every:
        checkpoint(cfg.steps)
    if completed and out is not None:
        export_model(rt, wrapped, out)  # rank 0 writes; under FSDP the full state is gathered first
    rt.barrier()
    summary = summarize(history, init_loss, steps=cfg.steps)
    vals = [r["val_loss"] for r in history if "val_loss" in r]
    done_tokens = (steps_done - start) * tokens_per_step
    return TrainResult(
        history=history, init_loss=init_loss, final_loss=summary["final_loss"], val_loss=vals[-1] if vals else None,
        max_attn_logit=summary["max_attn_logit"], diverged=summary["diverged"], steps_done=steps_done,
        model=rt.unwrap(wrapped).to("cpu"), stop_reason=stop_reason,
        tokens_per_s=done_tokens / train_time if train_time > 0 else 0.0, summary=summary)


def _warn_changed_settings(saved: Dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    now = cfg.to_dict()
    changed = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in now
               if k in saved and k not in FREE_ON_RESUME and saved[k] != now[k]]
    if changed:
        warnings.warn(f"resuming {path.name} with changed training settings ({'; '.join(changed)}): the result "
                      "will differ from an uninterrupted run", RuntimeWarning, stacklevel=3)


def _progress(cfg: TrainConfig, rt: Runtime, start: int):
    if not (cfg.progress and rt.is_main):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    # disable=None: no bar when stderr is not a terminal (logs, CI, pool workers)
    return tqdm(total=cfg.steps, initial=start, file=sys.stderr, desc="train", unit="step", mininterval=0.5,
                dynamic_ncols=True, leave=False, disable=None)
