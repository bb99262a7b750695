"""TensorBoard event files of a run's per-step metrics, beside metrics.jsonl (which stays the record).

    require_tensorboard()                       # ConfigError naming `pip install 'qknorm[tensorboard]'` if missing
    tb = TensorBoardLog(run_dir / TB_DIR)       # opened on the first write: a run that fails before it writes nothing
    tb.write(record); tb.close()                # one StepRecord a step (tb.add(step, metrics): named values)

Optional: needs the `tensorboard` package (the `tensorboard` extra); written with
torch.utils.tensorboard.SummaryWriter. `tensorboard --logdir RUN` (or a directory of runs, or a study's OUT/tb)
shows them. Tags, each at global step = the record's `step`:

    train/loss  train/lr  train/grad_norm  val/loss                   every step (val/loss when validated)
    train/router_aux_loss                                             every step of a mixture-of-experts model
    attention/max_logit                                               each stats pass (stats_every)
    attention/max_logit/layer_NN  q_rms/layer_NN  k_rms/layer_NN      each stats pass, one tag per layer

Non-finite values are written as they are (TensorBoard shows NaN/inf), where metrics.jsonl has null. A resumed
run passes `purge_step` (its checkpoint's step): TensorBoard then hides the events of later steps that a crashed
attempt had written, as metrics.jsonl drops their lines.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError
from .step_record import StepRecord

__all__ = ["INSTALL_HINT", "require_tensorboard", "scalars", "TensorBoardLog"]

INSTALL_HINT = "pip install 'qknorm[tensorboard]'"

_STEP_KEYS = (("loss", "train/loss"), ("lr", "train/lr"), ("grad_norm", "train/grad_norm"), ("val_loss", "val/loss"),
              ("max_attn_logit", "attention/max_logit"), ("router_aux_loss", "train/router_aux_loss"))
_LAYER_KEYS = (("attn_logit_per_layer", "attention/max_logit/layer_"), ("q_rms", "q_rms/layer_"),
               ("k_rms", "k_rms/layer_"))


def require_tensorboard() -> None:
    """ConfigError (one line, naming the install command) unless TensorBoard event files can be written here."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (imports the tensorboard package)
    except ImportError as e:
        raise ConfigError(f"tensorboard=True needs the tensorboard package ({e}); install it with: {INSTALL_HINT}") \
            from None


def _value(v: Any) -> float:
    return math.nan if v is None else float(v)


def scalars(metrics: Mapping[str, Any]) -> Iterator[Tuple[str, float]]:
    """(tag, value) of each metric in `metrics` (StepRecord field name -> value, as `StepRecord.present()` gives;
    module docstring: the tags)."""
    for key, tag in _STEP_KEYS:
        if key in metrics:
            yield tag, _value(metrics[key])
    for key, prefix in _LAYER_KEYS:
        values: Sequence[Any] = metrics.get(key) or ()
        for i, v in enumerate(values):
            yield f"{prefix}{i:02d}", _value(v)


class TensorBoardLog:
    """Event files in `log_dir`, created at the first write (nothing is written for a run that never steps)."""

    def __init__(self, log_dir: Path, *, purge_step: Optional[int] = None):
        self.log_dir = Path(log_dir)
        self.purge_step = purge_step
        self._writer = None

    def _open(self):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self.purge_step, flush_secs=10)
        return self._writer

    def write(self, record: StepRecord) -> None:
        """The record's scalars at its step."""
        self.add(record.step, record.present())

    def add(self, step: int, metrics: Mapping[str, Any]) -> None:
        """The scalars of `metrics` (field name -> value, as `scalars` reads them) at global step `step`."""
        writer = self._writer or self._open()
        for tag, value in scalars(metrics):
            writer.add_scalar(tag, value, global_step=int(step))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
