"""Benchmarks compare equal models, or refuse to time them.

A speed ratio between two models is only a result when they do the same work. The 2026-11-26 H200 training
step compared our 321M-parameter model with HF's 372M one (head_dim 16 against 64: a config override kept a
derived value), and its 1.52x was the size difference. So every benchmark describes each model it is about to
time from the *built modules* (parameter count, head_dim and head counts read off the attention projections,
not from the config that may be wrong), and refuses, in one line naming both, to time two that differ.

Variants that differ on purpose (with and without QK-norm) must differ by exactly the QK-norm gains:
`require_same_but_qk_norm` checks that.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from torch import nn

from ..errors import QKNormError


class UnequalModelsError(QKNormError):
    """Two models a benchmark was asked to compare differ in size or shape; nothing was timed."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelRecord:
    """The size and shape of one built model, read off its modules."""

    params: int  # every parameter (tied weights once)
    qk_norm_params: int  # the q/k norm gains among them
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    dtype: str

    @property
    def params_M(self) -> float:  # noqa: N802 (the unit, as in the JSON)
        return self.params / 1e6

    def shape_key(self) -> tuple:
        """Everything that must agree between two models a benchmark compares, except the QK-norm gains."""
        return (self.params - self.qk_norm_params, self.d_model, self.n_layers, self.n_heads, self.n_kv_heads,
                self.head_dim, self.vocab_size, self.dtype)

    def short(self) -> str:
        return (f"{self.params:,} parameters ({self.params_M:.2f}M; head_dim {self.head_dim}, n_heads "
                f"{self.n_heads}, n_kv_heads {self.n_kv_heads}, d_model {self.d_model}, {self.n_layers} layers, "
                f"{self.dtype})")

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "params_M": round(self.params_M, 6)}


def _attention_modules(model: nn.Module) -> list:
    return [m for m in model.modules() if all(hasattr(m, n) for n in ("q_proj", "k_proj", "o_proj"))]


def describe(model: nn.Module) -> ModelRecord:
    """A ModelRecord of an HF causal LM or a qknorm TransformerLM (any module with q/k/o projections and an
    input embedding). head_dim is the attention module's own (both libraries keep it there), the head counts
    are the projections' output widths over it."""
    attns = _attention_modules(model)
    if not attns:
        raise QKNormError(f"{type(model).__name__}: no attention module with q_proj/k_proj/o_proj to describe")
    a = attns[0]
    head_dim = int(a.head_dim)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model.embed
    seen, params, qk = set(), 0, 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        params += p.numel()
        if name.split(".")[-2:-1] in (["q_norm"], ["k_norm"]):
            qk += p.numel()
    return ModelRecord(params=params, qk_norm_params=qk, d_model=int(emb.weight.shape[1]), n_layers=len(attns),
                       n_heads=a.q_proj.out_features // head_dim, n_kv_heads=a.k_proj.out_features // head_dim,
                       head_dim=head_dim, vocab_size=int(emb.weight.shape[0]),
                       dtype=str(next(model.parameters()).dtype).replace("torch.", ""))


def require_equal(records: Sequence[tuple]) -> None:
    """records: (name, ModelRecord) pairs a benchmark is about to compare; UnequalModelsError on the first pair
    whose parameter count, head_dim, head counts, width, depth, vocabulary or dtype differ."""
    if not records:
        return
    name0, r0 = records[0]
    for name, r in records[1:]:
        if r != r0:
            raise UnequalModelsError(f"refusing to time unequal models: {name0} has {r0.short()}, "
                                     f"{name} has {r.short()}")


def require_same_but_qk_norm(with_qk: tuple, without_qk: tuple) -> None:
    """(name, record) with QK-norm and (name, record) without it: equal except exactly the QK-norm gains."""
    (n1, r1), (n0, r0) = with_qk, without_qk
    if r0.qk_norm_params != 0 or r1.qk_norm_params == 0 or r1.shape_key() != r0.shape_key():
        raise UnequalModelsError(f"refusing to compare {n1} with {n0}: they must differ by the QK-norm "
                                 f"gains alone; {n1} has {r1.short()} of which {r1.qk_norm_params} QK-norm gains, "
                                 f"{n0} has {r0.short()} of which {r0.qk_norm_params}")

