"""Retrofit QK-norm into a trained model that has none, keeping what it knows.

  insert.py     the same model with QK-norm (before RoPE) and every weight copied; the gains as scales
  calibrate.py  gains fitted per layer to the original's attention distributions on calibration tokens
  heal.py       a short continued training of all weights: next-token loss, or distillation from the original
  measure.py    next-token KL to the original and the loss, on held-out tokens
  report.py     retrofit_report.json / .html and the healing curve
  config.py     RetrofitConfig; pipeline.py `retrofit()`, the whole job (`qknorm retrofit` on the command line)

Llama + per-head QK-norm is the Qwen3 architecture, so a retrofitted Llama is written as a transformers Qwen3
directory. Importing this package imports none of its modules; use the names below.
"""
from __future__ import annotations

__all__ = ["retrofit", "RetrofitConfig", "RetrofitReport"]


def __getattr__(name):
    if name == "retrofit":
        from .pipeline import retrofit

        return retrofit
    if name == "RetrofitConfig":
        from .config import RetrofitConfig

        return RetrofitConfig
    if name == "RetrofitReport":
        from .report import RetrofitReport

        return RetrofitReport
    raise AttributeError(f"module 'qknorm.retrofit' has no attribute {name!r}")
