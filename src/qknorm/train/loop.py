"""The training loop: AdamW or Muon + warmup/cosine, clipping, z-loss, QK-clip, grad accumulation, diagnostics,
checkpoints.

    result = train(get_config("llama", "debug"), TrainConfig(steps=200, lr=3e-3), load_tokens(), out_dir="runs/x")

One step (0-based index s): lr = lr_at(s); the global batch Batcher.batch(s) (a pure function of seed and s)
is split into `grad_accum` micro-batches; loss = CE (+ z_loss * mean(logsumexp(logits)^2)), or another
`objective` (train/objective.py: retrofit's healing distills the original model); the gradient
norm is measured before clipping; loss and norm come back with one device sync and a non-finite value skips
the step or stops the run (`on_nan`). Every `stats_every` steps a no-grad pass on <= 4 sequences of the batch
records per-layer max attention logit and q/k RMS (diagnostics.stats_pass; max / mean over the ranks of a
data-parallel run).

Before anything is written, every setting is checked against the model, the data and the machine
(preflight.py). With `out_dir`: run.json (the run's record: model, training settings, data and its
fingerprint, and with Muon the Newton-Schulz dtype this machine chose; manifest.py) and tokenizer.json (a
copy of the tokenizer, when there is one, with its tokenizer_config.json and chat_template.jinja when they are
beside it), metrics.jsonl (a line a step: a StepRecord, step_record.py; strict JSON: non-finite numbers are
null; with `tensorboard`, the same metrics as TensorBoard event files in tb/: tensorboard_log.py),
checkpoints/ (io/checkpoints/, each with the tokenizer), and at the end model.safetensors + config.json
(qknorm.load_model reads them) and divergence.json (the verdict of metrics.judge_divergence on the run's losses,
with the numbers it compared; also written when a non-finite value or a signal stopped the run). A fresh run that
fails before its first step completes removes what it wrote, so the next command can use the directory.
`resume=True` continues from the newest usable checkpoint to bit-identical weights (CPU, same settings), under
the rules of train/resume.py (the ones `qknorm train --resume` keeps): what is not given of model_config, cfg
and data comes from the run's record, and settings or data that contradict it are refused unless
`allow_changes`. SIGTERM/SIGINT finish the
current step, write a checkpoint and return (`stop_reason`); a second SIGINT aborts.

Data parallelism hooks in through a `Runtime` (train/runtime.py): rank/world size, model wrapping, metric
reduction, rank-0-only writes. Here nothing calls torch.distributed directly.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from ..config import ModelConfig
from ..diagnostics import stats_pass
from ..errors import ConfigError
from ..io.files import atomic_write_bytes
from ..metrics import DivergenceVerdict
from ..model import TransformerLM
from ..data.batcher import Batcher
from .checkpointing import load_training_checkpoint, save_training_checkpoint
from ..io.checkpoints.rng import capture_rng_state, restore_rng_state
from .compiled import CompileReport, CompileWatch, compile_model, require_compile_support
from .config import FREE_ON_RESUME, OnNaN, TrainConfig
from .export import export_model
from ..io.names import (CKPT_DIR, DIVERGENCE_FILE, METRICS_FILE, RUN_RECORD, TB_DIR, TOKENIZER_COMPANIONS,
                        TOKENIZER_NAME)
from ..io.tokenizer_files import copy_tokenizer_files, tokenizer_files
from .manifest import DataRecord, RunManifest
from .metrics_log import MetricsLog
from .muon import MuonWithAdamW
from .newton_schulz import NSPrecision
from .objective import Objective
from .optim import build_optimizer, lr_at, set_lr
from .preflight import STATS_SEQS, check_batch_split, check_fits
from .qk_clip import QKClip
from .resume import check_resume, plan_resume
from .run_dir import RunDir
from .runtime import Runtime
from .run_summary import RunSummary, summarize
from .runtimes import make_runtime
from .signals import StopRequest
from .stop import StopReason
from .step_record import StepRecord
from .step import autocast_factory, evaluate, forward_backward, val_batches
from ..data.tokens import TokenData
from .tensorboard_log import TensorBoardLog, require_tensorboard

__all__ = ["TrainResult", "train", "STATS_SEQS"]


@dataclasses.dataclass
class TrainResult:
    history: List[StepRecord]  # one record a step (train/step_record.py)
    init_loss: float  # loss at step 0, before any update
    val_loss: Optional[float]  # last validation loss; None without validation data
    steps_done: int
    model: TransformerLM  # final model, on CPU
    summary: RunSummary  # run_summary.summarize(history): final loss, divergence, spike scores, max logits
    stop_reason: Optional[StopReason] = None  # None = ran all steps; else why it stopped early (train/stop.py)
    tokens_per_s: float = 0.0  # training throughput of this process's run (global tokens / wall time)
    muon_ns: Optional[NSPrecision] = None  # optimizer="muon": the Newton-Schulz dtype used and how it was chosen
    compile_report: Optional[CompileReport] = None  # compile=True: graphs, graph breaks, recompiles of this run

    @property
    def final_loss(self) -> float:
        """Mean loss of the last max(1, steps // 20) steps (NaN/inf if diverged)."""
        return self.summary.final_loss

    @property
    def max_attn_logit(self) -> float:
        """Max over the recorded steps and layers (NaN if no stats were recorded)."""
        return self.summary.max_attn_logit

    @property
    def verdict(self) -> DivergenceVerdict:
        """metrics.judge_divergence of the losses (also divergence.json)."""
        return self.summary.divergence

    @property
    def diverged(self) -> bool:
        return self.summary.diverged


@dataclasses.dataclass
class _Session:
    """Everything the steps need, built once every check has passed."""

    cfg: TrainConfig
    model_config: ModelConfig
    rt: Runtime
    device: torch.device
    model: TransformerLM
    wrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    batcher: Batcher
    val: Optional[list]
    start: int
    init_loss: float
    elapsed0: float
    out: Optional[Path]
    log: Optional[MetricsLog]
    tokenizer: Dict[str, bytes]  # the run's tokenizer.json and its companions, stored in every checkpoint
    t0: float = 0.0
    last_ckpt: int = -1
    qk_clip: Optional[QKClip] = None  # with cfg.qk_clip: clips the q/k weights after each step
    train_forward: Optional[torch.nn.Module] = None  # what the training step calls: `wrapped`, or it compiled
    objective: Optional[Objective] = None  # the loss when not cross-entropy (train/objective.py)

    def checkpoint(self, step_count: int) -> None:
        """A checkpoint after `step_count` steps (full in one process, sharded under torchrun), once."""
        if self.out is None or step_count == self.last_ckpt:
            return
        save_training_checkpoint(
            self.rt, self.out / CKPT_DIR, step_count, self.wrapped, self.optimizer, model_config=self.model_config,
            train_config=self.cfg.to_dict(), rng_state=capture_rng_state(),
            extra={"init_loss": self.init_loss, "elapsed_s": self.elapsed0 + time.perf_counter() - self.t0},
            keep_last=self.cfg.keep_last, files=self.tokenizer or None)
        self.last_ckpt = step_count


def train(model_config: Optional[ModelConfig] = None, cfg: Optional[TrainConfig] = None,
          data: Optional[TokenData] = None, *, out_dir: str | Path | RunDir | None = None,
          resume: bool = False, callback: Optional[Callable[[StepRecord], Optional[bool]]] = None,
          runtime: Optional[Runtime] = None, on_ready: Optional[Callable[[], None]] = None,
          origin: Optional[Dict[str, Any]] = None, allow_changes: bool = False,
          init_state: Optional[Dict[str, torch.Tensor]] = None, tensorboard: bool = False,
          objective: Optional[Objective] = None) -> TrainResult:
    """Train a fresh `TransformerLM(model_config)` (init from `cfg.seed`) on `data`; see the module docstring.

    `init_state`: start from these weights instead (a state dict of that model, e.g. a pretrained model's;
    train/init_from.py has the checks): a new run with a fresh optimizer and schedule.

    `callback(record)` is called after every step with its `StepRecord` (main process); returning True
    stops training after that step like SIGTERM does (a checkpoint is written when there is an out_dir).
    `on_ready()` is called once the set-up (data, model, resume, run directory) succeeded, just before the
    first step: the CLI prints its start note there, so bad input fails with its error line alone.
    `origin` (e.g. the preset, size and overrides the config came from) is kept in the run's record.
    `tensorboard`: also write the metrics as TensorBoard event files in out_dir/tb (tensorboard_log.py; needs the
    tensorboard package, checked before anything is written).
    `objective`: train on this loss instead of cross-entropy (train/objective.py; no z-loss, one process).
    `resume=True`: model_config, cfg and data may be left None: the run's record gives them (resume.plan_resume).
    `out_dir` may be a RunDir the caller checked (the command line does, before reading data).
    """
    if resume and out_dir is None:
        raise ConfigError("resume=True needs out_dir (the run directory holding checkpoints/)")
    if resume and init_state is not None:
        raise ConfigError("init_state starts a new run; resume=True continues one from its checkpoint: give one")
    if not resume and (model_config is None or cfg is None or data is None):
        raise ConfigError("a new run needs model_config, cfg and data (only resume=True reads them from the run)")
    run_dir = RunDir.of(out_dir, resume)
    if resume and (model_config is None or cfg is None or data is None):
        plan = plan_resume(run_dir, data=data, allow_changes=allow_changes)
        for note in plan.notes:
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        model_config = plan.model_config if model_config is None else model_config
        cfg, data = plan.cfg if cfg is None else cfg, plan.data
    if cfg.compile:
        require_compile_support(cfg.device)
    rt = runtime or make_runtime(cfg.device, cfg.parallel, cfg.tp)
    if objective is not None and (cfg.z_loss or rt.world_size > 1):
        raise ConfigError(f"objective={objective.name!r} replaces the cross-entropy: it takes no z_loss and runs in "
                          "one process")
    if rt.tp != cfg.tp:
        raise ConfigError(f"tp={cfg.tp} but the given runtime is tensor-parallel over {rt.tp} process(es)")
    rt.check_model(model_config)
    local_batch = check_batch_split(cfg, rt.dp_size)
    out = run_dir.path if run_dir is not None else None
    check_fits(model_config, cfg, data, local_batch,
               fixed_vocab="the weights it starts from" if init_state is not None else None)
    if tensorboard:
        if out is None:
            raise ConfigError("tensorboard=True writes beside the run's metrics.jsonl: give out_dir")
        require_tensorboard()
    record = RunManifest(model_config=model_config.to_dict(), train_config=cfg.to_dict(), data=DataRecord.of(data),
                         origin=dict(origin or {})) if out is not None else None
    if resume:
        check_resume(out, record, allow_changes)
    s = _setup(model_config, cfg, data, rt, out, resume, init_state)
    s.objective = objective
    if record is not None and isinstance(s.optimizer, MuonWithAdamW):
        record = dataclasses.replace(record, execution={"muon_newton_schulz": s.optimizer.precision.to_json()})
    created = out is not None and not out.exists()
    if out is not None and rt.is_main:
        s.log, s.tokenizer = _open_run_dir(out, record, data, resume, s.start, tensorboard)
    if on_ready is not None:
        on_ready()
    try:
        return _run(s, callback, resume)
    except BaseException:
        if not resume and out is not None and rt.is_main and not (s.log and s.log.history):
            _remove_run_files(out, created)  # nothing was trained: leave the directory as it was
        raise


def _setup(model_config: ModelConfig, cfg: TrainConfig, data: TokenData, rt: Runtime, out: Optional[Path],
           resume: bool, init_state: Optional[Dict[str, torch.Tensor]] = None) -> _Session:
    """Batches, model, optimizer and (on resume) the checkpoint's state; nothing written yet."""
    batcher = Batcher(data.train, batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=cfg.seed, rank=rt.dp_rank,
                      world_size=rt.dp_size, name="training split")
    val = val_batches(data, cfg, rt)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = TransformerLM(model_config).to(device)
    if init_state is not None:  # the given weights replace the seed's init (copied, cast to the model's dtype)
        model.load_state_dict(init_state, strict=True)
    wrapped = rt.wrap(model)
    optimizer = build_optimizer(model, cfg)
    if isinstance(optimizer, MuonWithAdamW):
        optimizer.precision = _agreed_ns_precision(optimizer.precision, rt, out if resume else None)
    s = _Session(cfg=cfg, model_config=model_config, rt=rt, device=device, model=model, wrapped=wrapped,
                 optimizer=optimizer, batcher=batcher, val=val, start=0, init_loss=math.nan, elapsed0=0.0, out=out,
                 log=None, tokenizer={}, qk_clip=QKClip(model, cfg.qk_clip, rt) if cfg.qk_clip else None,
                 train_forward=compile_model(wrapped) if cfg.compile else wrapped)
    if resume:
        # either checkpoint format (full, or sharded by a multi-process run), saved under any world size
        ckpt = load_training_checkpoint(rt, out / CKPT_DIR, wrapped, optimizer, model_config)
        restore_rng_state(ckpt.rng_state)
        s.start, s.last_ckpt = ckpt.step, ckpt.step
        s.init_loss = float(ckpt.extra.get("init_loss", math.nan))
        s.elapsed0 = float(ckpt.extra.get("elapsed_s", 0.0))
        _warn_changed_settings(ckpt.train_config, cfg, ckpt.path)
    return s


def _agreed_ns_precision(probed: NSPrecision, rt: Runtime, resumed_run: Optional[Path]) -> NSPrecision:
    """The Newton-Schulz dtype every rank uses, the same for a whole run: a probed ("auto") choice is replaced by the
    one the run recorded when it resumes (a new process may time the two dtypes differently), and by rank 0's when
    ranks disagree (replicas whose Muon updates differ would drift apart). An explicit setting is kept."""
    if probed.how == "set":
        return probed
    recorded = RunManifest.read(resumed_run) if resumed_run is not None else None
    was = (recorded.execution.get("muon_newton_schulz") or {}).get("dtype") if recorded is not None else None
    if was in ("bf16", "fp32"):
        return NSPrecision(dtype=was, how="recorded", shape=probed.shape, bf16_ms=probed.bf16_ms,
                           fp32_ms=probed.fp32_ms)
    rank0_fp32 = rt.broadcast_flag(probed.dtype == "fp32")
    if rank0_fp32 == (probed.dtype == "fp32"):
        return probed
    return NSPrecision(dtype="fp32" if rank0_fp32 else "bf16", how="rank 0's probe")


def _open_run_dir(out: Path, record: RunManifest, data: TokenData, resume: bool, start: int, tensorboard: bool):
    """Create the run directory's files (rank 0): the record and tokenizer of a fresh run, the metrics log (with
    TensorBoard event files in out/tb/ when `tensorboard`)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            record.write(out)
            if data.tokenizer is not None:  # with the files beside it (a chat template: io/tokenizer_files.py)
                copy_tokenizer_files(Path(data.tokenizer), out)
    except OSError as e:
        raise ConfigError(f"out_dir {out}: cannot write the run directory ({e.strerror or e})") from None
    tok = out / TOKENIZER_NAME
    sink = TensorBoardLog(out / TB_DIR, purge_step=start if resume else None) if tensorboard else None
    return MetricsLog(out / METRICS_FILE, resume_step=start if resume else None, sink=sink), \
        (tokenizer_files(tok) if tok.is_file() else {})


def _remove_run_files(out: Path, created: bool) -> None:
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for name in (RUN_RECORD, TOKENIZER_NAME, *TOKENIZER_COMPANIONS, METRICS_FILE, CKPT_DIR, TB_DIR):
        p = out / name
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _run(s: _Session, callback, resume: bool) -> TrainResult:
    """The steps, the final checkpoint and export, and the result."""
    cfg, rt = s.cfg, s.rt
    autocast = autocast_factory(s.device, cfg.dtype)
    tokens_per_step = cfg.batch_size * cfg.seq_len
    history = s.log.history if s.log is not None else []
    stop_reason: Optional[StopReason] = None
    bar = _progress(cfg, rt, s.start)
    watch = CompileWatch() if cfg.compile else None
    s.t0 = time.perf_counter()
    steps_done = s.start
    try:
        with StopRequest() as stop:
            for step in range(s.start, cfg.steps):
                record = _one_step(s, step, autocast, resume, tokens_per_step)
                val_loss = None
                if record.skipped and cfg.on_nan is OnNaN.STOP:
                    stop_reason = StopReason.non_finite(step, record.loss, record.grad_norm)
                elif s.val is not None and (step == cfg.steps - 1 or (cfg.eval_every and (step + 1) % cfg.eval_every
                                                                      == 0)):
                    val_loss = evaluate(s.wrapped, s.val, autocast, rt)
                record = dataclasses.replace(record, val_loss=val_loss,
                                             time_s=s.elapsed0 + time.perf_counter() - s.t0)
                history.append(record)
                if s.log is not None:
                    s.log.write(record)
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0 or step == cfg.steps - 1:
                        bar.set_postfix_str(f"loss {record.loss:.3f}", refresh=False)
                if stop_reason is not None:
                    break
                steps_done = step + 1
                want_stop = bool(callback(record)) if callback is not None and rt.is_main else False
                if rt.broadcast_flag(want_stop or stop.signame is not None):
                    stop_reason = StopReason.by_signal(stop.signame) if stop.signame else StopReason.by_callback()
                    s.checkpoint(step + 1)
                    break
                if cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0:
                    s.checkpoint(step + 1)
    finally:
        if bar is not None:
            bar.close()
        if s.log is not None:
            s.log.close()
    train_time = time.perf_counter() - s.t0
    if stop_reason is None and cfg.ckpt_every:
        s.checkpoint(cfg.steps)
    if stop_reason is None and s.out is not None:
        export_model(rt, s.wrapped, s.out)  # rank 0 writes; under FSDP the full state is gathered first
    rt.barrier()
    ceiling = s.objective is None or s.objective.uniform_ceiling  # a KL has no ln(vocab) ceiling
    summary = summarize(history, steps=cfg.steps, vocab_size=s.model_config.vocab_size if ceiling else None)
    verdict = summary.divergence
    if s.out is not None and rt.is_main:
        atomic_write_bytes(s.out / DIVERGENCE_FILE, (json.dumps(verdict.to_json(), indent=1) + "\n").encode())
    vals = [r.val_loss for r in history if r.val_loss is not None]
    done_tokens = (steps_done - s.start) * tokens_per_step
    return TrainResult(
        history=history, init_loss=s.init_loss, val_loss=vals[-1] if vals else None, steps_done=steps_done,
        model=rt.unwrap(s.wrapped).to("cpu"), summary=summary, stop_reason=stop_reason,
        tokens_per_s=done_tokens / train_time if train_time > 0 else 0.0,
        muon_ns=getattr(s.optimizer, "precision", None), compile_report=watch.report() if watch else None)


def _one_step(s: _Session, step: int, autocast, resume: bool, tokens_per_step: int) -> StepRecord:
    """Stats (when due), forward/backward, the update (skipped on a non-finite value); the step's record."""
    cfg = s.cfg
    lr = lr_at(step, cfg)
    set_lr(s.optimizer, lr)
    x, y = s.batcher.batch(step)
    x, y = x.to(s.device, non_blocking=True), y.to(s.device, non_blocking=True)
    measured: Dict[str, Any] = {}
    if cfg.stats_every and (step % cfg.stats_every == 0 or step == cfg.steps - 1):
        stats = stats_pass(s.model, x[:STATS_SEQS], forward=s.wrapped, autocast=autocast, runtime=s.rt)
        measured.update(dataclasses.asdict(stats))  # the StepRecord fields of the same names
    loss, gnorm, aux = forward_backward(s.train_forward, x, y, cfg, s.rt, autocast, s.objective)
    if step == 0 and not resume:
        s.init_loss = loss
    finite = math.isfinite(loss) and math.isfinite(gnorm)
    if finite:
        s.optimizer.step()
    if s.qk_clip is not None:
        clipped = s.qk_clip.after_step(applied=finite)
        measured.update(dataclasses.asdict(clipped) if clipped is not None else {})  # StepRecord's qk_clip_* fields
    s.optimizer.zero_grad(set_to_none=True)
    return StepRecord(step=step, **measured, loss=loss, lr=lr, grad_norm=gnorm, tokens=(step + 1) * tokens_per_step,
                      router_aux_loss=aux, skipped=not finite)


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
