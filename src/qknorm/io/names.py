"""The names of the files qknorm reads and writes, spelled once.

A model directory (ours, or Hugging Face's):  CONFIG_NAME, WEIGHTS_NAME (or INDEX_NAME and its shards),
    TOKENIZER_NAME when the model was trained on a tokenizer, and beside it TOKENIZER_COMPANIONS when the
    tokenizer came with them (a chat model's special tokens and chat template; io/tokenizer_files.py).
A run directory (`qknorm train --out DIR`):   RUN_RECORD (run.json), METRICS_FILE, TOKENIZER_NAME, CKPT_DIR/,
    TB_DIR/ (with --tensorboard), and, once finished, the model directory's files.
The files inside one training checkpoint are the checkpoint formats' own (io/checkpoints/layout.py).
"""
from __future__ import annotations

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "INDEX_NAME", "TOKENIZER_NAME", "RUN_RECORD", "METRICS_FILE", "CKPT_DIR", "TB_DIR",
           "TOKENIZER_CONFIG_NAME", "CHAT_TEMPLATE_NAME", "TOKENIZER_COMPANIONS", "DIVERGENCE_FILE"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"  # Hugging Face's sharded weights: {"weight_map": {key: shard}}
TOKENIZER_NAME = "tokenizer.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"  # Hugging Face's: special tokens, maybe "chat_template"
CHAT_TEMPLATE_NAME = "chat_template.jinja"  # Hugging Face's chat template file (wins over tokenizer_config's)
TOKENIZER_COMPANIONS = (TOKENIZER_CONFIG_NAME, CHAT_TEMPLATE_NAME)  # copied wherever tokenizer.json is
RUN_RECORD = "run.json"
METRICS_FILE = "metrics.jsonl"
CKPT_DIR = "checkpoints"
DIVERGENCE_FILE = "divergence.json"  # the run's divergence verdict (metrics.DivergenceVerdict.to_json)
TB_DIR = "tb"  # TensorBoard event files (train/tensorboard_log.py); a study's OUT/tb/<run name>/
