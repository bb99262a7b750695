"""The training loop: AdamW + warmup/cosine, clipping, z-loss, grad accumulation, diagnostics, checkpoints.

    result = train(get_config("llama", "debug"), TrainConfig(steps=200, lr=3e-3), load_tokens(), out_dir="runs/x")

One step (0-based index s): lr = lr_at(s); the global batch Batcher.batch(s) (a pure function of seed and s)
is split into `grad_accum` micro-batches; loss = CE (+ z_loss * mean(logsumexp(logits)^2)); the gradient
norm is measured before clipping; loss and norm come back with one device sync and a non-finite value skips
the step or stops the run (`on_nan`). Every `stats_every` steps a no-grad pass on <= 4 sequences of the batch
records per-layer max attention logit and q/k RMS (diagnostics.stats_pass; max / mean over the ranks of a
data-parallel run).

With `out_dir`: metrics.jsonl (a line a step, strict JSON: non-finite numbers are null), checkpoints/
(train/checkpoint.py), and at the end model.safetensors + config.json (qknorm.load_model reads them).
`resume=True` continues from the newest usable checkpoint to bit-identical weights (CPU, same settings).
SIGTERM/SIGINT finish the current step, write a checkpoint and return (`stop_reason`); a second SIGINT aborts.

Data parallelism hooks in through a `Runtime` (train/runtime.py): rank/world size, model wrapping, metric
reduction, rank-0-only writes. Here nothing calls torch.distributed directly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from .. import diagnostics
from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from ..model import TransformerLM
from .checkpoint import CKPT_DIR, MetricsLog, capture_rng_state, restore_rng_state
from .dist_checkpoint import export_model, load_training_checkpoint, save_training_checkpoint
from .data import Batcher, TokenData
from .optim import build_optimizer, lr_at, set_lr
from .runtime import PARALLEL_CHOICES, Runtime, StopRequest, make_runtime

__all__ = ["TrainConfig", "TrainResult", "train", "check_out_dir", "METRICS_FILE", "STATS_SEQS"]

METRICS_FILE = "metrics.jsonl"
STATS_SEQS = 4  # sequences of the batch the stats pass sees
_CHOICES = {"dtype": ("fp32", "bf16"), "on_nan": ("skip", "stop"), "parallel": PARALLEL_CHOICES}
_INT_MIN = {"steps": 1, "warmup_steps": 0, "batch_size": 1, "seq_len": 1, "grad_accum": 1, "seed": 0,
            "eval_every": 0, "eval_batches": 1, "stats_every": 0, "ckpt_every": 0, "keep_last": 1}
_POSITIVE = ("lr", "adam_eps")
_NON_NEGATIVE = ("final_lr", "weight_decay", "clip", "z_loss")
# settings that do not change the trajectory: a resume may change them without a warning
_FREE_ON_RESUME = ("steps", "eval_every", "eval_batches", "stats_every", "ckpt_every", "keep_last", "device",
                   "progress", "parallel")


@dataclasses.dataclass(kw_only=True)
class TrainConfig:
    """Training settings; every field is validated on construction (ConfigError names field and range)."""

    steps: int = 200  # optimizer steps
    lr: float = 3e-3  # peak learning rate, reached at the end of warmup
    final_lr: float = 1e-5  # cosine decays lr -> final_lr over the steps after warmup
    warmup_steps: int = 20  # linear warmup steps
    batch_size: int = 16  # GLOBAL batch (sequences per step over all processes and micro-batches)
    seq_len: int = 64  # tokens per sequence
    grad_accum: int = 1  # micro-batches per step; batch_size per process must divide by it
    weight_decay: float = 0.0  # torch AdamW decay (multiplied by the LR)
    decay_norms: bool = False  # also decay norm gains (QK-norm too), biases and embeddings
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    clip: float = 1.0  # max global gradient norm; 0 = no clipping (the norm is still reported)
    z_loss: float = 0.0  # coefficient of mean(logsumexp(logits)^2) (PaLM; Wortsman et al. use 1e-4)
    seed: int = 0  # model init and data order
    eval_every: int = 0  # validation every N steps; 0 = only at the end
    eval_batches: int = 8  # validation batches of batch_size sequences
    stats_every: int = 10  # attention/q-k/output-logit stats every N steps (and at the last); 0 = never
    ckpt_every: int = 0  # checkpoint every N steps (and at the end); 0 = none (SIGTERM still writes one)
    keep_last: int = 3  # checkpoints kept
    device: str = "cpu"  # "cpu", "cuda", "cuda:N", "mps"
    dtype: str = "fp32"  # "fp32", or "bf16" autocast (weights and optimizer stay fp32)
    on_nan: str = "stop"  # non-finite loss/grad: "stop" (last good checkpoint intact) or "skip" the step
    progress: bool = True  # tqdm bar on stderr (main process only)
    parallel: str = "ddp"  # under torchrun with >1 process: "ddp" or "fsdp" (FSDP2); no effect otherwise

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name, lo in _INT_MIN.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name}={v!r} must be an integer >= {lo}")
        for name in _POSITIVE + _NON_NEGATIVE + ("beta1", "beta2"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{name}={v!r} must be a finite number")
            setattr(self, name, float(v))
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be > 0")
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be >= 0")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be in [0, 1)")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not allowed; choose one of: {', '.join(allowed)}")
        for name in ("decay_norms", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be true or false")
        dev = self.device
        if not isinstance(dev, str) or not (dev in ("cpu", "cuda", "mps") or
                                            (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ConfigError(f"device={dev!r} is not allowed; choose one of: cpu, cuda, cuda:N, mps")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"grad_accum={self.grad_accum} must divide batch_size={self.batch_size}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


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


def _forward_loss(model, x: torch.Tensor, y: torch.Tensor, z_loss: float):
    """(cross-entropy, z-loss term or None) of one micro-batch; x, y (B, T)."""
    logits = model(x)  # (B, T, V)
    flat = logits.float().view(-1, logits.shape[-1])  # (B*T, V)
    ce = F.cross_entropy(flat, y.reshape(-1))
    if not z_loss:
        return ce, None
    return ce, z_loss * torch.logsumexp(flat, dim=-1).pow(2).mean()


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available on this machine; use device='cpu'")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device='mps' but MPS is not available on this machine; use device='cpu'")
    return torch.device(name)


def check_out_dir(out: str | Path, resume: bool) -> None:
    """A fresh run needs an absent or empty directory; a resumed one a checkpoints/ directory in it."""
    out = Path(out)
    if resume:
        if not (out / CKPT_DIR).is_dir():
            raise CheckpointError(f"{out}: nothing to resume (no {CKPT_DIR}/ directory; was it trained with "
                                  "ckpt_every=0?)")
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        names = sorted(p.name for p in out.iterdir())
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise ConfigError(f"output directory {out} is not empty ({shown}); resume the run there with --resume "
                          "or choose another output directory")


def train(model_config: ModelConfig, cfg: TrainConfig, data: TokenData, *, out_dir: str | Path | None = None,
          resume: bool = False, callback: Optional[Callable[[Dict[str, Any]], Optional[bool]]] = None,
          runtime: Optional[Runtime] = None, on_ready: Optional[Callable[[], None]] = None) -> TrainResult:
    """Train a fresh `TransformerLM(model_config)` (init from `cfg.seed`) on `data`; see the module docstring.

    `callback(record)` is called after every step with its metrics record (main process); returning True
    stops training after that step like SIGTERM does (a checkpoint is written when there is an out_dir).
    `on_ready()` is called once the set-up (data, model, resume, run directory) succeeded, just before the
    first step: the CLI prints its start note there, so bad input fails with its error line alone.
    """
    cfg.validate()
    if data.vocab_size > model_config.vocab_size:
        raise ConfigError(f"vocab_size={model_config.vocab_size} of the model is smaller than the data's "
                          f"vocabulary ({data.vocab_size} tokens, {data.source}); set vocab_size >= {data.vocab_size}")
    if resume and out_dir is None:
        raise ConfigError("resume=True needs out_dir (the run directory holding checkpoints/)")
    device = _device(cfg.device)
    rt = runtime or make_runtime(cfg.device, cfg.parallel)
    local_batch = cfg.batch_size // rt.world_size
    if cfg.batch_size % rt.world_size or local_batch % cfg.grad_accum:
        raise ConfigError(f"batch_size={cfg.batch_size} must split evenly over {rt.world_size} process(es) x "
                          f"grad_accum={cfg.grad_accum} micro-batches")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        check_out_dir(out, resume)
    batcher = Batcher(data.train, batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=cfg.seed, rank=rt.rank,
                      world_size=rt.world_size, name="training split")
    val = _val_batches(data, cfg, rt)

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

    autocast = _autocast_factory(device, cfg.dtype)
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
                    record.update(diagnostics.stats_pass(model, x[:STATS_SEQS], forward=wrapped, autocast=autocast,
                                                         runtime=rt))
                loss, gnorm = _forward_backward(wrapped, x, y, cfg, rt, autocast)
                if step == 0 and not resume:
                    init_loss = loss
                finite = math.isfinite(loss) and math.isfinite(gnorm)
                if finite:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                record.update(loss=loss, lr=lr, grad_norm=gnorm, tokens=(step + 1) * tokens_per_step)
                if not finite:
                    record["skipped"] = True
                    if cfg.on_nan == "stop":
                        stop_reason = (f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at "
                                       f"step {step} (loss={loss}, grad_norm={gnorm}); the update was not applied")
                if val is not None and (step == cfg.steps - 1 or (cfg.eval_every and (step + 1) % cfg.eval_every
                                                                   == 0)) and stop_reason is None:
                    record["val_loss"] = _evaluate(wrapped, val, autocast, rt)
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
    summary = diagnostics.summarize(history, init_loss, steps=cfg.steps)
    vals = [r["val_loss"] for r in history if "val_loss" in r]
    done_tokens = (steps_done - start) * tokens_per_step
    return TrainResult(
        history=history, init_loss=init_loss, final_loss=summary["final_loss"], val_loss=vals[-1] if vals else None,
        max_attn_logit=summary["max_attn_logit"], diverged=summary["diverged"], steps_done=steps_done,
        model=rt.unwrap(wrapped).to("cpu"), stop_reason=stop_reason,
        tokens_per_s=done_tokens / train_time if train_time > 0 else 0.0, summary=summary)


def _forward_backward(model, x, y, cfg: TrainConfig, rt: Runtime, autocast) -> tuple:
    """Gradients of the mean loss of batch (x, y) over `grad_accum` micro-batches, then clipping.

    Returns (loss, pre-clip grad norm) as python floats: the only device sync of a step. The loss is the
    cross-entropy (z-loss excluded) averaged over the micro-batches and, under data parallelism, the ranks.
    """
    micro = x.shape[0] // cfg.grad_accum
    loss_sum = None
    for i in range(cfg.grad_accum):
        sl = slice(i * micro, (i + 1) * micro)
        sync = contextlib.nullcontext() if i == cfg.grad_accum - 1 else rt.no_sync(model)
        with sync:
            with autocast():
                ce, zl = _forward_loss(model, x[sl], y[sl], cfg.z_loss)
            total = ce if zl is None else ce + zl
            (total / cfg.grad_accum).backward()
        loss_sum = ce.detach() if loss_sum is None else loss_sum + ce.detach()
    grad_norm = rt.clip_grad_norm(model, cfg.clip)
    loss = rt.all_reduce_mean(loss_sum / cfg.grad_accum)
    return tuple(torch.stack([loss.float(), grad_norm.float().to(loss.device)]).tolist())


def _autocast_factory(device: torch.device, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _val_batches(data: TokenData, cfg: TrainConfig, rt: Runtime):
    if len(data.val) < cfg.seq_len + 1:
        if len(data.val):
            warnings.warn(f"validation split has {len(data.val)} tokens, fewer than one sequence of "
                          f"{cfg.seq_len + 1}: no validation loss", RuntimeWarning, stacklevel=3)
        return None
    b = Batcher(data.val, batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=cfg.seed, rank=rt.rank,
                world_size=rt.world_size, name="validation split")
    return b.val_batches(cfg.eval_batches)


@torch.no_grad()
def _evaluate(model, batches, autocast, rt: Runtime) -> float:
    device = next(model.parameters()).device
    total = None
    for x, y in batches:
        with autocast():
            ce, _ = _forward_loss(model, x.to(device), y.to(device), 0.0)
        total = ce if total is None else total + ce
    return float(rt.all_reduce_mean(total / len(batches)))


def _warn_changed_settings(saved: Dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    now = cfg.to_dict()
    changed = [f"{k} {saved[k]!r} -> {now[k]!r}" for k in now
               if k in saved and k not in _FREE_ON_RESUME and saved[k] != now[k]]
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
