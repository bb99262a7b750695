"""Per-block divergence between our model and an HF model: which stage first differs, and by how much.

    report = compare_with_hf(ours, hf_model, input_ids)
    print(report)               # a table: stage, max abs error, relative error, ok
    report.first_divergent      # "block 3" (or None); report.ok

Both models run the same input_ids. Hooks record, on each side, the residual stream entering the first block
(the embedding output, after Gemma's sqrt(d) scale), each block's output, the final norm's output and the
logits. The relative error of a stage is max|ours - hf| / max|hf|, the measure the parity tests bound.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional

import torch
from torch import nn

__all__ = ["StageError", "DivergenceReport", "compare_with_hf", "compare_tensors", "hf_text_model"]


@dataclasses.dataclass(frozen=True)
class StageError:
    stage: str
    max_abs: float
    rel: float  # max_abs / max|reference|


@dataclasses.dataclass
class DivergenceReport:
    stages: List[StageError]
    tol: float  # relative tolerance a stage must stay under

    @property
    def first_divergent(self) -> Optional[str]:
        """The first stage whose relative error exceeds `tol` (None when all are within it)."""
        return next((s.stage for s in self.stages if not s.rel <= self.tol), None)

    @property
    def ok(self) -> bool:
        return self.first_divergent is None

    @property
    def logits(self) -> StageError:
        return self.stages[-1]

    def __str__(self) -> str:
        rows = [f"{'stage':<12} {'max abs err':>12} {'rel err':>10}  ok (rel <= {self.tol:.1e})"]
        for s in self.stages:
            rows.append(f"{s.stage:<12} {s.max_abs:>12.3e} {s.rel:>10.3e}  {'yes' if s.rel <= self.tol else 'NO'}")
        first = self.first_divergent
        rows.append("all stages match" if first is None else f"first divergent stage: {first}")
        return "\n".join(rows)


def compare_tensors(ours: torch.Tensor, ref: torch.Tensor, stage: str) -> StageError:
    a, b = ours.detach().double(), ref.detach().double()
    if a.shape != b.shape:
        raise ValueError(f"{stage}: shapes differ, ours {tuple(a.shape)} vs HF {tuple(b.shape)}")
    max_abs = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(b.abs().max()) if b.numel() else 0.0
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return StageError(stage, max_abs, rel)


def hf_text_model(hf_model: nn.Module) -> nn.Module:
    """The decoder stack (with embed_tokens, layers, norm) of an HF causal LM or a Gemma 3 multimodal model."""
    base = getattr(hf_model, "model", hf_model)
    base = getattr(base, "language_model", base)
    if not all(hasattr(base, n) for n in ("embed_tokens", "layers", "norm")):
        raise TypeError(f"{type(hf_model).__name__} has no decoder stack with embed_tokens, layers and norm")
    return base


@contextmanager
def _recording(first_layer: nn.Module, layers, norm: nn.Module, out: List[torch.Tensor]) -> Iterator[None]:
    def first(t):
        return t[0] if isinstance(t, (tuple, list)) else t

    handles = [first_layer.register_forward_pre_hook(
        lambda m, args, kwargs: out.append(first(args) if args else kwargs["hidden_states"]), with_kwargs=True)]
    handles += [layer.register_forward_hook(lambda m, a, o: out.append(first(o))) for layer in layers]
    handles.append(norm.register_forward_hook(lambda m, a, o: out.append(first(o))))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def compare_with_hf(ours: nn.Module, hf_model: Any, input_ids: torch.Tensor, *, tol: float = 1e-5
                    ) -> DivergenceReport:
    """Run both models on input_ids (B, T) and report the error of every stage against the HF model."""
    text = hf_text_model(hf_model)
    if len(text.layers) != len(ours.layers):
        raise ValueError(f"layer counts differ: ours {len(ours.layers)}, HF {len(text.layers)}")
    was = ours.training, hf_model.training
    ours.eval(), hf_model.eval()
    mine: List[torch.Tensor] = []
    theirs: List[torch.Tensor] = []
    try:
        with _recording(ours.layers[0], ours.layers, ours.norm, mine):
            mine.append(ours(input_ids))
        with _recording(text.layers[0], text.layers, text.norm, theirs):
            theirs.append(hf_model(input_ids=input_ids, use_cache=False).logits)
    finally:
        ours.train(was[0]), hf_model.train(was[1])
    names = ["embedding"] + [f"block {i}" for i in range(len(ours.layers))] + ["final norm", "logits"]
    if len(mine) != len(names) or len(theirs) != len(names):
        raise RuntimeError(f"recorded {len(mine)} stages of ours and {len(theirs)} of HF, expected {len(names)}")
    return DivergenceReport([compare_tensors(a, b, n) for a, b, n in zip(mine, theirs, names)], tol)
