"""Models with weights far from init, for generation tests: peaked next-token logits, so greedy decoding is
decided by clear margins (not fp32 rounding), and continuations that do not collapse into one repeated token."""
from __future__ import annotations

import torch

import qknorm


@torch.no_grad()
def spread(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Matrices N(0, 0.2), embeddings N(0, 0.03), every 1-D parameter (norm gains, Gemma offsets, biases) moved by
    N(0, 0.3): a wrong offset, cast, position or key shows. Works on our models and HF ones alike."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if p.ndim == 1:
            p.add_(0.3 * noise)
        else:
            p.copy_((0.03 if "embed" in name else 0.2) * noise)
    return model.eval()


def peaked(preset: str, seed: int = 0, **overrides) -> qknorm.TransformerLM:
    """`preset` at size debug with `overrides`, weights spread as above, in eval mode."""
    torch.manual_seed(seed)
    return spread(qknorm.TransformerLM(qknorm.get_config(preset, "debug", **overrides)), seed)
