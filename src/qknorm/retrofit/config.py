"""The settings of a QK-norm retrofit: one frozen, keyword-only record, every field checked on construction
(a ConfigError names the field and what is allowed; the command line maps fields to its flags)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Tuple

from ..errors import ConfigError
from ..train.config import TrainConfig
from .heal import OBJECTIVES
from .insert import SCOPES

__all__ = ["RetrofitConfig"]

_INT_MIN = {"calib_tokens": 1, "calib_steps": 0, "heal_steps": 0, "batch_size": 1, "seq_len": 2, "eval_tokens": 1,
            "seed": 0}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetrofitConfig:
    scope: str = "head"  # head (per head over head_dim: Qwen3, Gemma 3) | full (over the projection width: OLMo 2)
    # tokens of the training split the gains are fitted on (whole windows of seq_len). The calibration defaults:
    # on the llama of bench/results/retrofit_cpu_2026-11-30.md, 8192 tokens x 30 steps at 0.1 gave a held-out KL
    # of 0.167, 16384 x 100 at 0.05 0.169, at about 7x the cost
    calib_tokens: int = 8192
    calib_steps: int = 30  # Adam steps of the per-layer fit (0 = keep the rms-matched initialisation)
    calib_lr: float = 0.1  # Adam step size on the log-gains
    heal_steps: int = 0  # continued-training steps after calibration (0 = no healing)
    # healing objective: "distill" (KL to the original's next-token distributions: back to the function it had)
    # or "lm" (next-token cross-entropy on the data: onward on the data, which for a source not trained to
    # convergence moves the model away from the original; see heal.py)
    objective: str = "distill"
    lr: float = 1e-3  # peak healing learning rate (warmup heal_steps // 10, cosine to final_lr)
    final_lr: float = 1e-5
    batch_size: int = 8  # healing batch, and the held-out evaluation's
    seq_len: int = 128  # window length of calibration, healing and evaluation
    eval_tokens: int = 16384  # held-out tokens (the validation split's) every KL and loss is measured on
    # held-out evaluation every N healing steps and after the last; 0 = about 10 points over the healing, fewer
    # where one evaluation costs more than the steps between (eval_steps): the curve costs no more than the healing
    eval_every: int = 0
    # which model is written after healing: the better of the calibrated and the healed model by the healing
    # objective's held-out measure (distill: the KL to the original; lm: the loss), unless keep_healed: the healed
    keep_healed: bool = False
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ConfigError(f"scope={self.scope!r} is not allowed; choose one of: {', '.join(SCOPES)}")
        for name, lo in _INT_MIN.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name}={v!r} must be an integer >= {lo}")
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise ConfigError(f"eval_every={self.eval_every!r} must be an integer >= 0")
        if not isinstance(self.keep_healed, bool):
            raise ConfigError(f"keep_healed={self.keep_healed!r} must be true or false")
        for name in ("calib_lr", "lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{name}={v!r} must be a finite number > 0")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective={self.objective!r} is not allowed; choose one of: {', '.join(OBJECTIVES)}")
        self.heal_config()  # device name, final_lr: checked by the training settings they become

    @property
    def eval_interval(self) -> int:
        # a step runs the model forward and backward (about 3 forward passes) and the original forward (1) on
        # batch_size windows; an evaluation one forward pass of each on eval_tokens
        steps_per_eval = math.ceil(self.eval_tokens / (4 * self.batch_size * self.seq_len))
        return self.eval_every or max(1, self.heal_steps // 10, steps_per_eval)

    @property
    def eval_steps(self) -> Tuple[int, ...]:
        """The healing steps after which the held-out KL is measured: every eval_interval, and the last. By default
        (eval_every=0) none closer than eval_interval to the last, and none between when fewer than two fit (a
        curve needs two inner points to show a shape): 10 steps at the default tokens get the last point alone,
        where every 4th and the last would cost 3 evaluations (~12 steps' worth) for 10 steps of healing."""
        n, every = self.heal_steps, self.eval_interval
        inner = [s for s in range(every, n, every) if self.eval_every or n - s >= every]
        if not self.eval_every and len(inner) < 2:
            inner = []
        return tuple(inner) + ((n,) if n else ())

    def heal_config(self) -> TrainConfig:
        """The healing run's training settings (AdamW, no weight decay, clipping at 1)."""
        return TrainConfig(steps=max(1, self.heal_steps), lr=self.lr, final_lr=min(self.final_lr, self.lr),
                           batch_size=self.batch_size, seq_len=self.seq_len, seed=self.seed, device=self.device,
                           progress=False, stats_every=0)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)
