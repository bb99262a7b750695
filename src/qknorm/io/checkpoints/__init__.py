"""Training checkpoints: crash-safe, verified, resumable under any number of processes.

  layout.py    names and the on-disk layout shared by both formats (list, publish, prune, `latest`)
  rng.py       RNG states (torch, CUDA, numpy, python) in a form torch.load(weights_only=True) accepts
  full.py      the single-process format: model.safetensors + trainer.pt + meta.json
  sharded.py   the multi-process format: torch.distributed.checkpoint shards + rng.pt + meta.json
  model_state.py  the model inside a checkpoint of either format, without the trainer
  collective.py   what the formats need from the processes writing them (the training runtime provides it)

The training loop's entry points (save in the right format, load the newest usable one) are
train/checkpointing.py.
"""
