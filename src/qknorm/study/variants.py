"""The study's variants: one way to tame the attention logits each, everything else equal.

Every variant is a preset plus model overrides (and, for the stabilizers that live in the training loop, training
settings), built at the study profile's ONE model shape:

  baseline       llama preset: pre-norm RMSNorm, no QK-norm, nothing that bounds the attention logits
  qknorm         + per-head QK RMSNorm (the Qwen3 / Gemma 3 form): the only difference to baseline
  qknorm_full    + QK RMSNorm over the whole projection width (OLMo 2's scope), on the llama block
  qk_layernorm   + per-head QK LayerNorm without bias (ViT-22B, Dehghani et al. 2023)
  qk_l2          + per-head L2-normalized q and k with a learned temperature (Henry et al. 2020)
  softcap        + tanh soft-capping of the attention logits at 50 (Gemma 2)
  qk_clip        + QK-clip after each step at tau = 50 (Kimi K2's MuonClip clip; a training setting)
  z_loss         + z-loss 1e-4 on the output logits (PaLM; Wortsman et al. 2023; a training setting)
  sigma_reparam  + sigmaReparam on the attention and MLP linears (Zhai et al. 2023)
  clip_qkv       + q, k and v clamped to [-8, 8] after their projections (OLMo 1.7's clip_qkv, the stabilizer
                 QK-norm replaced in OLMo 2)
  olmo2          olmo2 preset: reordered norms (on the sub-layer outputs) + full-width QK-norm, fp32 weight multiply
  gemma3         gemma3 preset: sandwich norms with 1+w gains, per-head QK-norm, sqrt(d) embedding scale, GeGLU,
                 tied head. The sliding window is switched off and the query scale is head_dim**-0.5, so every
                 variant attends over the same span with the same score scale.
  postln         postln preset: classic post-LN (LayerNorm with bias), no QK-norm
Each family keeps its own RoPE theta (1e4..1e6); at the study's sequence lengths this changes little.

Why a cap of 50 for softcap and qk_clip. 50.0 is Gemma 2's attention soft-cap. Kimi K2 clips at tau = 100, for a
model whose logits otherwise grow past 1000; in this study's small models the best-LR runs stay near 10-25 and
the logits of unstabilized runs reach 400-20,000 at LR 1e-2..3e-2 (bench/results/study_cpu_2026-11-30.md). At
tau = 50 QK-clip acts on every run where the baseline's logits grow (LR >= 1e-2) and leaves the low-LR runs
alone, as Kimi's tau does at its scale, and the two capping mechanisms (tanh of the scores vs rescaling the q/k
weights) are compared at the same logit level. The z-loss coefficient 1e-4 is Wortsman et al.'s. clip_qkv is
OLMo 1.7-7B's published 8.0 (config.json `clip_qkv`); it bounds each entry of q and k, so a logit by
scale * D * c^2 = sqrt(D) * 64 (512 at the study's head_dim 64): a looser bound than the caps above, which
it reaches only when single entries of q or k grow past 8.

Optimizers cross every variant (plan.py). Which combinations the mechanisms refuse: qk_clip with sigma_reparam
(the reparametrization undoes the clip's row scaling), and Muon or qk_clip on sharded (FSDP / tensor-parallel)
parameters. No variant here combines qk_clip with sigma_reparam and a study runs unsharded, so every variant x
optimizer trains; a run whose settings a mechanism refuses anyway is recorded as `refused` (records.py), not
as a failure or a divergence.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional

from ..config import ModelConfig
from ..presets import get_config
from ..train.config import TrainConfig

__all__ = ["Variant", "TrainSettings", "VARIANTS", "FAMILY_VARIANTS", "STABILIZER_VARIANTS", "model_config",
           "SOFTCAP", "QK_CLIP_TAU", "Z_LOSS", "CLIP_QKV"]

SOFTCAP = 50.0  # Gemma 2's attention logit soft-cap
QK_CLIP_TAU = 50.0  # the same logit level for QK-clip (module docstring)
Z_LOSS = 1e-4  # Wortsman et al. 2023
CLIP_QKV = 8.0  # OLMo 1.7-7B's clip_qkv


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """The training settings a variant switches on (TrainConfig fields; None = the plan's own value)."""

    qk_clip: Optional[float] = None  # TrainConfig.qk_clip: QK-clip's tau
    z_loss: Optional[float] = None  # TrainConfig.z_loss: the z-loss coefficient

    def apply(self, train: TrainConfig) -> TrainConfig:
        """`train` with these settings (TrainConfig validates them)."""
        changes = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return train.replace(**changes) if changes else train

    def to_json(self) -> Dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Variant:
    preset: str
    overrides: Mapping[str, Any]  # ModelConfig fields
    description: str
    train: TrainSettings = TrainSettings()


_GEMMA3 = {"sliding_window": None, "query_pre_attn_scalar": None}
VARIANTS: Dict[str, Variant] = {
    "baseline": Variant("llama", {}, "pre-norm RMSNorm, no QK-norm (Llama)"),
    "qknorm": Variant("llama", {"qk_norm": "head"}, "pre-norm + per-head QK RMSNorm (Qwen3 form)"),
    "qknorm_full": Variant("llama", {"qk_norm": "full"}, "pre-norm + full-width QK RMSNorm (OLMo 2's scope)"),
    "qk_layernorm": Variant("llama", {"qk_norm": "head", "qk_norm_type": "layernorm"},
                            "pre-norm + per-head QK LayerNorm, no bias (ViT-22B)"),
    "qk_l2": Variant("llama", {"qk_norm": "head", "qk_norm_type": "l2"},
                     "pre-norm + per-head L2-normalized q, k with a learned temperature (Henry et al. 2020)"),
    "softcap": Variant("llama", {"attn_softcap": SOFTCAP}, f"pre-norm + attention logit soft-cap {SOFTCAP:g} "
                       "(Gemma 2)"),
    "qk_clip": Variant("llama", {}, f"pre-norm + QK-clip tau {QK_CLIP_TAU:g} after each step (Kimi K2)",
                       TrainSettings(qk_clip=QK_CLIP_TAU)),
    "z_loss": Variant("llama", {}, f"pre-norm + z-loss {Z_LOSS:g} on the output logits (PaLM, Wortsman et al.)",
                      TrainSettings(z_loss=Z_LOSS)),
    "sigma_reparam": Variant("llama", {"sigma_reparam": True},
                             "pre-norm + sigmaReparam on the attention and MLP linears (Zhai et al. 2023)"),
    "clip_qkv": Variant("llama", {"clip_qkv": CLIP_QKV}, f"pre-norm + q, k, v clamped to [-{CLIP_QKV:g}, "
                        f"{CLIP_QKV:g}] (OLMo 1.7's clip_qkv)"),
    "olmo2": Variant("olmo2", {}, "reordered norms + full-width QK-norm (OLMo 2 numerics)"),
    "gemma3": Variant("gemma3", _GEMMA3, "sandwich norms + per-head QK-norm (Gemma 3 numerics, no sliding window)"),
    "postln": Variant("postln", {}, "classic post-LN (LayerNorm), no QK-norm"),
}
FAMILY_VARIANTS = ("baseline", "qknorm", "olmo2", "gemma3", "postln")  # the QK-norm study (default profile)
STABILIZER_VARIANTS = ("baseline", "qknorm", "qknorm_full", "qk_layernorm", "qk_l2", "softcap", "qk_clip",
                       "z_loss", "sigma_reparam", "clip_qkv")


def model_config(variant: str, shape: Mapping[str, Any], vocab_size: int) -> ModelConfig:
    """The ModelConfig of `variant` at the study's `shape` with the data's vocabulary."""
    v = VARIANTS[variant]
    return get_config(v.preset, "debug", **{**shape, "vocab_size": vocab_size, **v.overrides})
