"""The models the training-step benchmark compares: ours from the `olmo2 372m` preset, HF's `Olmo2ForCausalLM`
from the anchor's own shape, each with and without QK-norm, eager, compiled, or (HF) with Liger-Kernel.

The two sides are built independently on purpose: ours from `qknorm.get_config("olmo2", "372m", ...)`, HF's
from the shape table below through transformers' `Olmo2Config`, which derives head_dim itself. If our config
machinery builds a different model than the shape says (a derived field copied from the wrong size, say),
the parameter counts differ and `equal_models.require_equal` refuses to time the pair.

Shapes: `ANCHOR_372M` is the end-to-end anchor (d=1024, 16 layers, 16 heads of 64, SwiGLU 4096, vocab 50304,
B=8, T=2048; the `olmo2 372m` preset); `SMOKE` is a tiny shape for CPU that is deliberately *not* the debug
preset's (d=96, 3 heads: head_dim 32 must be derived), so the smoke test catches the same class of bug.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

import qknorm

from .equal_models import ModelRecord, describe


@dataclasses.dataclass(frozen=True, kw_only=True)
class Shape:
    """Model and batch shape of the benchmark (HF names in comments)."""

    vocab_size: int
    d_model: int  # hidden_size
    n_layers: int  # num_hidden_layers
    n_heads: int  # num_attention_heads
    n_kv_heads: int  # num_key_value_heads
    d_ff: int  # intermediate_size
    batch: int
    seq_len: int

    def model_fields(self) -> Dict[str, int]:
        """The shape as ModelConfig overrides; head_dim is left to be derived (d_model / n_heads)."""
        return dict(vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
                    n_kv_heads=self.n_kv_heads, d_ff=self.d_ff)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


ANCHOR_372M = Shape(vocab_size=50304, d_model=1024, n_layers=16, n_heads=16, n_kv_heads=16, d_ff=4096, batch=8,
                    seq_len=2048)
SMOKE = Shape(vocab_size=256, d_model=96, n_layers=2, n_heads=3, n_kv_heads=3, d_ff=192, batch=2, seq_len=32)
ROPE_THETA, NORM_EPS = 5e5, 1e-6  # OLMo 2's (the preset's and HF's anchor config)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One contender: which library, compiled or not, Liger or not, with QK-norm or without."""

    name: str
    library: str  # "hf" | "ours"
    compiled: bool = False
    liger: bool = False
    qk_norm: bool = True

    @property
    def base(self) -> str:
        """The name of the same variant with QK-norm (itself when it has QK-norm)."""
        return self.name[: -len("_noqk")] if not self.qk_norm else self.name


def _variants() -> Dict[str, Variant]:
    out = {}
    for lib in ("hf", "ours"):
        for compiled in (False, True):
            for qk in (True, False):
                name = lib + ("_compile" if compiled else "") + ("" if qk else "_noqk")
                out[name] = Variant(name, lib, compiled=compiled, qk_norm=qk)
    out["hf_liger"] = Variant("hf_liger", "hf", liger=True)
    order = ("hf", "hf_compile", "hf_liger", "ours", "ours_compile",
             "hf_noqk", "hf_compile_noqk", "ours_noqk", "ours_compile_noqk")
    return {n: out[n] for n in order}


VARIANTS: Dict[str, Variant] = _variants()
SMOKE_VARIANTS = ("hf", "ours", "hf_noqk", "ours_noqk")  # torch.compile on CPU takes ~1 min a variant


def ours_config(shape: Shape, *, qk_norm: bool) -> qknorm.ModelConfig:
    """Our model: the `olmo2 372m` preset at `shape` (for ANCHOR_372M the overrides equal the preset's own)."""
    over = shape.model_fields()
    if not qk_norm:
        over["qk_norm"] = "none"
    return qknorm.get_config("olmo2", "372m", **over)


def hf_config(shape: Shape):
    """HF's model: `Olmo2Config` of the anchor shape (transformers derives head_dim = hidden / heads)."""
    from transformers import Olmo2Config

    return Olmo2Config(vocab_size=shape.vocab_size, hidden_size=shape.d_model, intermediate_size=shape.d_ff,
                       num_hidden_layers=shape.n_layers, num_attention_heads=shape.n_heads,
                       num_key_value_heads=shape.n_kv_heads, max_position_embeddings=4096, rms_norm_eps=NORM_EPS,
                       rope_theta=ROPE_THETA, tie_word_embeddings=False, pad_token_id=1, eos_token_id=2)


def _drop_hf_qk_norm(model: nn.Module) -> None:
    """HF Olmo2 without QK-norm: q_norm/k_norm become identities (the anchor's "q_norm/k_norm removed")."""
    for m in model.modules():
        if hasattr(m, "q_norm") and hasattr(m, "k_norm"):
            m.q_norm, m.k_norm = nn.Identity(), nn.Identity()


def _build_module(v: Variant, shape: Shape, device, dtype) -> nn.Module:
    """The bare model of variant v (no compile, no Liger): on "meta" it costs nothing, for describing."""
    if v.library == "ours":
        return qknorm.TransformerLM(ours_config(shape, qk_norm=v.qk_norm), device=device, dtype=dtype)
    from transformers import Olmo2ForCausalLM

    with torch.device(device):
        m = Olmo2ForCausalLM._from_config(hf_config(shape), attn_implementation="sdpa", dtype=dtype)
    if not v.qk_norm:
        _drop_hf_qk_norm(m)
    return m


def plan(v: Variant, shape: Shape, dtype) -> ModelRecord:
    """What variant v will time, described from a model built on the meta device (no memory, no time)."""
    return describe(_build_module(v, shape, "meta", dtype))


def build(v: Variant, shape: Shape, device: str, dtype) -> Tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """(model, loss_fn): loss_fn(ids (B, T)) -> the mean next-token cross-entropy over T-1 positions, the same
    work on both sides (HF shifts the labels inside its loss; ours shifts the same way here)."""
    torch.manual_seed(0)
    m = _build_module(v, shape, device, dtype).train()
    if v.library == "hf":
        if v.liger:
            from liger_kernel.transformers import apply_liger_kernel_to_olmo2

            apply_liger_kernel_to_olmo2(model=m)
        if v.compiled:
            m.compile()

        def hf_loss(ids):
            return m(input_ids=ids, labels=ids).loss

        return m, hf_loss

    def ours_loss(ids):
        logits = m(ids)  # (B, T, V)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())

    return m, (torch.compile(ours_loss) if v.compiled else ours_loss)
