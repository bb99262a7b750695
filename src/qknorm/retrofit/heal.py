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

AdamW with the warmup + cosine schedule of training (train/optim.py) over `cfg.steps` steps; the batches are
the training split's (data/batcher.py), never the held-out windows the healing curve is measured on. The
curve: the objective at every step, and the held-out next-token KL and validation loss (`evaluate`) before
the first update and every `eval_every` updates, and after the last.

Divergence is the training loop's rule (metrics.judge_divergence) on the objective's per-step values: a
non-finite value stops healing at once; after the last step, a rise clearly beyond the curve's own noise (or, for
the lm objective, a loss above ln(vocab)) is a divergence too. Either raises HealDiverged with the numbers (the
command exits 1 and writes nothing); otherwise `HealResult.verdict` keeps the verdict ("no improvement" included).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import QKNormError
from ..metrics import DivergenceVerdict, judge_divergence
from ..model import TransformerLM
from ..data.batcher import Batcher
from ..train.config import TrainConfig
from ..train.optim import build_optimizer, lr_at, set_lr
from .measure import kl_per_token

__all__ = ["OBJECTIVES", "HealStep", "HealEval", "HealResult", "HealDiverged", "heal"]

OBJECTIVES = ("distill", "lm")


class HealDiverged(QKNormError):
    """Healing diverged by metrics.judge_divergence (the command exits 1, as a diverged training run does)."""


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


def _objective(model, original, x, y, objective: str) -> torch.Tensor:
    logits = model(x)  # (B, T, V)
    if objective == "distill":
        with torch.no_grad():
            target = original(x)
        return kl_per_token(target, logits).mean()
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


def heal(model: TransformerLM, original: TransformerLM, tokens: np.ndarray, cfg: TrainConfig, *, objective: str,
         evaluate: Callable[[TransformerLM], Tuple[float, float]], eval_every: int,
         first: Optional[Tuple[float, float]] = None, log: Optional[Callable[[str], None]] = None,
         tick: Optional[Callable[[int], None]] = None) -> HealResult:
    """Train `model` in place for `cfg.steps` steps on windows of `tokens` (module docstring). `first`: the
    evaluation of the model as given, when already measured; `tick(1)` after every step."""
    dev = next(model.parameters()).device
    batcher = Batcher(tokens, batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=cfg.seed, name="training split")
    optimizer = build_optimizer(model, cfg)
    steps: List[HealStep] = []
    evals: List[HealEval] = [HealEval(0, *(first if first is not None else evaluate(model)))]
    spent = 0.0
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        model.train()
        lr = lr_at(step, cfg)
        set_lr(optimizer, lr)
        x, y = (t.to(dev) for t in batcher.batch(step))
        loss = _objective(model, original, x, y, objective)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        value = float(loss.detach())
        if not math.isfinite(value):
            _judge([*(s.loss for s in steps), value], model, objective, cfg.lr)
        optimizer.step()
        spent += time.perf_counter() - t0
        steps.append(HealStep(step, value, lr))
        done = step + 1
        if done == cfg.steps or done % eval_every == 0:
            evals.append(HealEval(done, *evaluate(model)))
            if log is not None:
                log(f"heal step {done}/{cfg.steps}: loss {value:.4f}, held-out KL {evals[-1].kl:.4f}, val loss "
                    f"{evals[-1].val_loss:.4f}")
        if tick is not None:
            tick(1)
    model.eval()
    return HealResult(objective=objective, steps=tuple(steps), evals=tuple(evals), seconds=spent,
                      verdict=_judge([s.loss for s in steps], model, objective, cfg.lr))


def _judge(losses: List[float], model: TransformerLM, objective: str, lr: float) -> DivergenceVerdict:
    """The verdict on the objective's values, raising HealDiverged when it is a divergence. The ceiling ln(vocab)
    is the uniform-prediction loss of the lm objective; a KL to the original (distill) has no such ceiling."""
    v = judge_divergence(losses, vocab_size=model.config.vocab_size if objective == "lm" else None)
    if v.diverged:
        raise HealDiverged(f"healing diverged: {v.describe()} (peak lr={lr:g}); use a lower lr")
    return v
