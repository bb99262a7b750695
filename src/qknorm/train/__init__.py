"""Training: settings (`TrainConfig`), token data and batches, the loop, checkpoints, data parallelism.

  config.py        TrainConfig (frozen, validated once) and its choices
  tokens.py        load_tokens -> TokenData (sources.py reads files, tokenizer.py encodes text)
  batcher.py       Batcher: the (seed, step) -> global batch function, rank slices
  loop.py          train(): the loop; step.py its arithmetic; optim.py AdamW groups and the LR schedule
  runtime.py       the single-process Runtime seam; distributed.py DDP/FSDP2 under torchrun; runtimes.py picks
  checkpoints/     crash-safe full and sharded checkpoints and resume; metrics_log.py metrics.jsonl
  export.py        the final consolidated model; preflight.py what must hold before a run writes anything
  manifest.py      run.json, the run's record of itself (model, settings, data fingerprint)

Importing this package imports only `TrainConfig` (no torch); other names come from their modules
(``from qknorm.train.tokens import load_tokens``).
"""
from .config import TrainConfig

__all__ = ["TrainConfig"]
