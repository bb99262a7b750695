"""Heal a retrofitted model with a short continued training of all its weights.

Two objectives:
  distill  mean KL(P_orig(next) || P_model(next)) over the positions: the original's next-token
           distributions as soft targets (Hinton et al. 2015), so the model is pulled back to the function it
           had. The default: it is what "keep what the model knows" asks for.
  lm       cross-entropy of the true next token (what the original was trained with). It moves the model on
           along the data, back towards the original only as far as the original sits at a minimum of that
           loss: on the llama of bench/results/retrofit_cpu_2026-11-30.md, 100 steps took the held-out KL from
           0.167 to 0.061 (distillation: 0.020); on tiny models trained 120 steps, 30 steps raised it above the
           calibrated model's in 8 of 8 runs, where distillation lowered it in 8 of 8.

The updates are the training loop's (train/loop.py, with the objective as its `Objective`): AdamW with the
warmup + cosine schedule of training over `cfg.steps` steps, clipping, `cfg.dtype` (fp32, or bf16 autocast for
the model and the original's targets alike), the batches of the training split (data/batcher.py), never the
held-out windows the healing curve is measured on. The curve: the objective at every step, and the held-out
next-token KL and validation loss (`evaluate`) before the first update and after the updates `eval_at` names.

Divergence is the training loop's: a non-finite loss or gradient norm stops healing at that step (on_nan=stop:
the update is not applied), and its verdict (metrics.judge_divergence; for the lm objective with the ceiling
ln(vocab), a KL to the original has none) decides; a divergence raises HealDiverged with the numbers (the command
exits 1 and writes nothing); otherwise `HealResult.verdict` keeps the verdict ("no improvement" included).
SIGTERM/SIGINT finish the current step and raise HealStopped (the command exits 128 + the signal, nothing
written).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Collection, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..data.tokens import TokenData
from ..errors import QKNormError
from ..metrics import DivergenceVerdict
from ..model import TransformerLM
from ..train.config import TrainConfig
from ..train.loop import train
from ..train.objective import Objective
from ..train.stop import StopKind, StopReason
from .measure import kl_per_token

__all__ = ["OBJECTIVES", "HealStep", "HealEval", "HealResult", "HealDiverged", "HealStopped", "heal"]

OBJECTIVES = ("distill", "lm")


class HealDiverged(QKNormError):
    """Healing diverged by metrics.judge_divergence (the command exits 1, as a diverged training run does)."""


class HealStopped(QKNormError):
    """A signal stopped healing after its current step (the command exits as `reason.exit_code` says)."""

    def __init__(self, reason: StopReason, steps_done: int, steps: int):
        super().__init__(f"healing {reason} after {steps_done} of {steps} steps")
        self.reason, self.steps_done = reason, steps_done


@dataclasses.dataclass(frozen=True)
class HealStep:
    step: int  # 0-based update index; the loss is the objective on its batch, before the update
    loss: float
    lr: float


@dataclasses.dataclass(frozen=True)
class HealEval:
    step: int  # updates done when measured (0 = the calibrated model)
    kl: float  # held-out next-token KL to the original, nats per token
    val_loss: float  # held-out cross-entropy, nats per token


@dataclasses.dataclass(frozen=True)
class HealResult:
    objective: str  # "lm" or "distill"
    steps: Tuple[HealStep, ...]
    evals: Tuple[HealEval, ...]
    seconds: float  # wall time of the updates (evaluations excluded)
    verdict: Optional[DivergenceVerdict] = None  # metrics.judge_divergence of the objective's per-step values


class _Loss:
    """The healing objective, as the loop calls it; it keeps the model the loop trains (the held-out evaluations
    between steps measure it)."""

    def __init__(self, original: TransformerLM, objective: str):
        self.original, self.objective = original, objective
        self.model: Optional[torch.nn.Module] = None

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.model = model
        logits = model(x)  # (B, T, V)
        if self.objective == "distill":
            with torch.no_grad():
                target = self.original(x)  # (B, T, V)
            return kl_per_token(target, logits).mean()
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


def heal(model: TransformerLM, original: TransformerLM, tokens: np.ndarray, cfg: TrainConfig, *, objective: str,
         evaluate: Callable[[TransformerLM], Tuple[float, float]], eval_at: Collection[int],
         first: Optional[Tuple[float, float]] = None, log: Optional[Callable[[str], None]] = None,
         tick: Optional[Callable[[int], None]] = None) -> Tuple[TransformerLM, HealResult]:
    """Train a copy of `model` (which is left as it is) for `cfg.steps` steps on windows of `tokens` (module
    docstring); returns it and the record. `first`: the evaluation of the model as given, when already measured;
    `eval_at`: the updates after which `evaluate` runs; `tick(1)` after every step."""
    loss = _Loss(original, objective)
    evals: List[HealEval] = [HealEval(0, *(first if first is not None else evaluate(model)))]
    done, eval_s = 0, 0.0

    def after_step(record) -> None:
        nonlocal done, eval_s
        done += 1
        if done in eval_at:
            t = time.perf_counter()
            evals.append(HealEval(done, *evaluate(loss.model)))
            eval_s += time.perf_counter() - t
            if log is not None:
                log(f"heal step {done}/{cfg.steps}: held-out KL {evals[-1].kl:.4f}, val loss {evals[-1].val_loss:.4f}")
        if tick is not None:
            tick(1)

    data = TokenData(train=tokens, val=tokens[:0], vocab_size=model.config.vocab_size, source="training split")
    t0 = time.perf_counter()
    r = train(model.config, cfg, data, init_state=model.state_dict(), callback=after_step,
              objective=Objective(objective, loss, uniform_ceiling=objective == "lm"))
    seconds = time.perf_counter() - t0 - eval_s
    steps = tuple(HealStep(h.step, h.loss, h.lr) for h in r.history)
    verdict = r.verdict
    if verdict is not None and verdict.diverged:
        raise HealDiverged(f"healing diverged: {verdict.describe()} (peak lr={cfg.lr:g}); use a lower lr")
    if r.stop_reason is not None and r.stop_reason.kind is StopKind.SIGNAL:
        raise HealStopped(r.stop_reason, r.steps_done, cfg.steps)
    healed = r.model.to(next(model.parameters()).device).eval()
    return healed, HealResult(objective=objective, steps=steps, evals=tuple(evals), seconds=seconds, verdict=verdict)
