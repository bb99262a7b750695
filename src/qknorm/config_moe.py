"""The mixture-of-experts MLP fields of ModelConfig: their checks, which layers are sparse, and their parameters.

  n_experts          0 | E >= 1      0 = every MLP is the dense gated MLP; E = experts of a sparse layer (nn/moe.py)
  experts_per_token  1 <= k <= E     experts each token is routed to (HF num_experts_per_tok)
  moe_d_ff           None | F        hidden width of one expert; None = d_ff (HF moe_intermediate_size; OLMoE's
                                     intermediate_size)
  norm_topk_prob     false | true    renormalize the k routing weights to sum to 1 (softmax over all E first)
  moe_every          s >= 1          layer i is sparse iff (i + 1) % s == 0 (Qwen3-MoE decoder_sparse_step)
  dense_layers       layer indices   layers whose MLP stays dense whatever moe_every says (Qwen3-MoE
                                     mlp_only_layers); a dense layer's MLP has width d_ff

With n_experts = 0 the other fields are ignored (and must keep their defaults, so a typo does not pass silently).
"""
from __future__ import annotations

from typing import Any, Tuple

from .errors import ConfigError

ModelConfig = Any  # config.ModelConfig, which imports this module

__all__ = ["validate_moe", "layer_is_moe", "expert_d_ff", "mlp_params", "layer_tuple"]


def layer_tuple(value) -> Tuple[int, ...]:
    return tuple(value) if value is not None else ()


def _int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")


def validate_moe(c: ModelConfig) -> None:
    """ConfigError naming the field for every MoE setting out of range or set without experts."""
    _int("n_experts", c.n_experts, 0)
    _int("moe_every", c.moe_every, 1)
    _int("experts_per_token", c.experts_per_token, 1)
    if c.moe_d_ff is not None:
        _int("moe_d_ff", c.moe_d_ff, 1)
    if not isinstance(c.norm_topk_prob, bool):
        raise ConfigError(f"norm_topk_prob={c.norm_topk_prob!r} must be true or false")
    bad = [i for i in c.dense_layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < c.n_layers]
    if bad:
        raise ConfigError(f"dense_layers entry {bad[0]!r} is not a layer index in 0..{c.n_layers - 1}")
    if list(c.dense_layers) != sorted(set(c.dense_layers)):
        raise ConfigError(f"dense_layers={list(c.dense_layers)!r} must be increasing, each layer once")
    if c.n_experts == 0:
        changed = [n for n, default in (("experts_per_token", 1), ("moe_d_ff", None), ("norm_topk_prob", False),
                                        ("moe_every", 1), ("dense_layers", ())) if getattr(c, n) != default]
        if changed:
            raise ConfigError(f"{changed[0]} is set but n_experts is 0 (a dense model); set n_experts >= 1")
        return
    if c.experts_per_token > c.n_experts:
        raise ConfigError(f"experts_per_token={c.experts_per_token} must be <= n_experts={c.n_experts}")
    if c.sigma_reparam:
        raise ConfigError("sigma_reparam=true has no mixture-of-experts form (the experts are not nn.Linear); "
                          "use n_experts=0")


def layer_is_moe(c: ModelConfig, i: int) -> bool:
    """Whether layer i's MLP is the mixture of experts."""
    return c.n_experts > 0 and i not in c.dense_layers and (i + 1) % c.moe_every == 0


def expert_d_ff(c: ModelConfig) -> int:
    return c.d_ff if c.moe_d_ff is None else c.moe_d_ff


def mlp_params(c: ModelConfig, i: int) -> int:
    """Parameters of layer i's MLP: 3 d d_ff dense; E (3 d F) experts + E d router sparse."""
    if not layer_is_moe(c, i):
        return 3 * c.d_model * c.d_ff
    return c.n_experts * (3 * c.d_model * expert_d_ff(c) + c.d_model)
