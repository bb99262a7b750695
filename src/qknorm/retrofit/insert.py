"""Put QK-norm into a model that has none: the same model with `qk_norm=head|full`, every weight copied, and
the new q/k norm gains exposed as plain scales so calibration can set them.

    new = insert_qk_norm(model, "head")         # gains = 1: the "naive" retrofit
    set_gains(new, [(q_scale, k_scale), ...])   # one pair a layer; shape (head_dim,) or (heads*head_dim,)

The norm sits where the model always puts it: on q and k before RoPE (ops.qk_norm_rope). A gain's *scale* is
what multiplies the normalized value: the stored weight plus the norm's offset (Gemma numerics store
scale - 1), so "gains = 1" means the identity scale whatever the numerics.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from ..config import QKNormScope
from ..errors import ConfigError
from ..model import TransformerLM

__all__ = ["SCOPES", "check_retrofittable", "insert_qk_norm", "gains", "set_gains"]

SCOPES = ("head", "full")


def check_retrofittable(model: TransformerLM, scope: str) -> QKNormScope:
    """The parsed scope; ConfigError when `scope` is not head/full or the model already has QK-norm."""
    if scope not in SCOPES:
        raise ConfigError(f"scope={scope!r} is not allowed; choose one of: {', '.join(SCOPES)}")
    have = model.config.qk_norm
    if have is not QKNormScope.NONE:
        raise ConfigError(f"the model already has QK-norm (qk_norm={have.value!r}); retrofit adds it to a model "
                          "without (qk_norm='none')")
    return QKNormScope.parse("scope", scope)


def insert_qk_norm(model: TransformerLM, scope: str, *, share: bool = False) -> TransformerLM:
    """A copy of `model` with QK-norm of `scope` (gains 1), on the same device and in the same dtype. With
    `share`, every weight but the new norms' *is* the original's tensor (no second copy of the model in memory;
    training one would change the other: retrofit/heal.py trains a copy)."""
    parsed = check_retrofittable(model, scope)
    p = next(model.parameters())
    new = TransformerLM(model.config.replace(qk_norm=parsed), device="meta" if share else p.device, dtype=p.dtype)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False, assign=share)
    assert not unexpected and all(k.endswith(("q_norm.weight", "k_norm.weight")) for k in missing), (missing,
                                                                                                     unexpected)
    if share:  # the new norms are still on the meta device: make them, at scale 1
        for layer in new.layers:
            for norm in (layer.attn.q_norm, layer.attn.k_norm):
                norm.to_empty(device=p.device)
        set_gains(new, [(torch.ones(()), torch.ones(()))] * len(new.layers))
    return new  # the new norms at scale 1 (weight 1, or 0 with offset 1)


def gains(model: TransformerLM) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """(q scale, k scale) of every layer: the stored weight plus the norm's offset, detached copies."""
    out = []
    for layer in model.layers:
        qn, kn = layer.attn.q_norm, layer.attn.k_norm
        out.append((qn.weight.detach() + qn.offset, kn.weight.detach() + kn.offset))
    return out


@torch.no_grad()
def set_gains(model: TransformerLM, scales: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Make the q/k norm scales of layer i `scales[i]` (weights = scale - offset, in the weights' dtype)."""
    if len(scales) != len(model.layers):
        raise ValueError(f"{len(scales)} gain pairs for {len(model.layers)} layers")
    for layer, (q, k) in zip(model.layers, scales):
        for norm, s in ((layer.attn.q_norm, q), (layer.attn.k_norm, k)):
            norm.weight.copy_((s.to(torch.float64) - norm.offset).to(norm.weight.dtype))
