"""Training checkpoints: crash-safe, verified, resumable under any number of processes.

  layout.py    names and the on-disk layout shared by both formats (list, publish, prune, `latest`)
  rng.py       RNG states (torch, CUDA, numpy, python) in a form torch.load(weights_only=True) accepts
  full.py      the single-process format: model.safetensors + trainer.pt + meta.json
  sharded.py   the multi-process format: torch.distributed.checkpoint shards + rng.pt + meta.json
  resume.py    the loop's entry points: save in the right format, load the newest usable one of either
"""
