"""Training: settings (`TrainConfig`), the loop, checkpointing, data parallelism.

  config.py        TrainConfig (frozen, validated once) and its choices
  loop.py          train(): the loop; step.py its arithmetic; optim.py AdamW groups and the LR schedule
  runtime.py       the single-process Runtime seam; distributed.py DDP/FSDP2 under torchrun; runtimes.py picks
  checkpointing.py save a checkpoint in the run's format, resume from the newest usable one (formats: io/)
  metrics_log.py   metrics.jsonl, a line a step; step_record.py StepRecord, one step's record and its line
  run_summary.py   RunSummary of a run's steps (final loss, divergence, spike scores, max logits)
  export.py        the final consolidated model; preflight.py what must hold before a run writes anything
  manifest.py      run.json, the run's record of itself (model, settings, data fingerprint)
  resume.py        resuming: the plan from run.json and the rules a resume keeps (CLI and Python share them);
                   run_dir.py the run directory, checked once per run

Importing this package imports only `TrainConfig` (no torch); other names come from their modules
(``from qknorm.train.loop import train``); token data is qknorm.data, checkpoint files qknorm.io.
"""
from .config import TrainConfig

__all__ = ["TrainConfig"]
