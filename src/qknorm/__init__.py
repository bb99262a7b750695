"""qknorm: QK-normalization for transformer language models.

RMSNorm on attention queries and keys, before RoPE (OLMo 2, Gemma 3, Qwen3), in one model class that covers
every norm placement, with exact Hugging Face interop, a fused Triton QK-RMSNorm+RoPE kernel and a study
command that shows what QK-norm buys on your data.

    import qknorm
    cfg = qknorm.get_config("olmo2", "debug", qk_norm="head")
    model = qknorm.TransformerLM(cfg)
    logits = model(ids)  # (B, T, vocab)
"""
from .config import ModelConfig, Placement, QKNormScope
from .errors import CheckpointError, ConfigError, DataError, QKNormError
from .model import TransformerLM
from .presets import PRESETS, SIZES, get_config
from .version import __version__


__all__ = [
    "PRESETS", "SIZES", "get_config", "ModelConfig", "Placement", "QKNormScope", "TransformerLM",
    "ConfigError", "CheckpointError", "DataError", "QKNormError", "from_hf", "to_hf", "from_olmo_core", "patch_hf",
    "load_model", "save_model", "load_tokenizer", "open_model",
]


def __getattr__(name):  # lazy: interop pulls in safetensors/transformers only when used
    if name in ("from_hf", "to_hf"):
        from .interop import hf

        return getattr(hf, name)
    if name == "from_olmo_core":
        from .interop.olmo_core import from_olmo_core

        return from_olmo_core
    if name == "patch_hf":
        from .interop.patch import patch_hf

        return patch_hf
    if name == "save_model":
        from .io.model_dir import save_model

        return save_model
    if name in ("open_model", "load_model", "load_tokenizer"):  # every model source, one function (pretrained.py)
        from . import pretrained

        return getattr(pretrained, name)
    raise AttributeError(f"module 'qknorm' has no attribute {name!r}")
