"""The mixture-of-experts MLP fields of ModelConfig: their checks, which layers are sparse, and their parameters.

  n_experts          0 | E >= 1      0 = every MLP is the dense gated MLP; E = experts of a sparse layer (nn/moe.py)
  experts_per_token  1 <= k <= E     experts each token is routed to (HF num_experts_per_tok)
  moe_d_ff           None | F        hidden width of one expert; None = d_ff (HF moe_intermediate_size; OLMoE's
                                     intermediate_size)
  norm_topk_prob     false | true    renormalize the k routing weights to sum to 1 (softmax over all E first)
  moe_every          s >= 1          layer i is sparse iff (i + 1) % s == 0 (Qwen3-MoE decoder_sparse_step)
  dense_layers       layer indices   layers whose MLP stays dense whatever moe_every says (Qwen3-MoE
                                     mlp_only_layers); a dense layer's MLP has width d_ff
  moe_router         softmax         softmax over all E, top-k (norm_topk_prob), weights scale the expert
                                     outputs (OLMoE, Qwen3-MoE)
                     sigmoid         top-k of the logits, sigmoid of each chosen logit scales that expert's
                                     INPUT (Llama 4)
  moe_shared_expert  false | true    one always-on gated MLP of width moe_d_ff added to the routed experts'
                                     output (Llama 4's shared_expert)

With n_experts = 0 the other fields are ignored (and must keep their defaults, so a typo does not pass silently).
"""
from __future__ import annotations

from typing import Any, Tuple

from .choice import Choice
from .errors import ConfigError

ModelConfig = Any  # config.ModelConfig, which imports this module

__all__ = ["MoERouter", "validate_moe", "layer_is_moe", "expert_d_ff", "mlp_params", "layer_tuple"]


class MoERouter(Choice):
    """How a sparse layer routes and weights (nn/moe.py)."""

    SOFTMAX = "softmax"  # softmax over the experts, top-k, weights on the outputs (OLMoE, Qwen3-MoE)
    SIGMOID = "sigmoid"  # top-k of the logits, their sigmoid on the expert inputs (Llama 4)


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
    for name in ("norm_topk_prob", "moe_shared_expert"):
        if not isinstance(getattr(c, name), bool):
            raise ConfigError(f"{name}={getattr(c, name)!r} must be true or false")
    bad = [i for i in c.dense_layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < c.n_layers]
    if bad:
        raise ConfigError(f"dense_layers entry {bad[0]!r} is not a layer index in 0..{c.n_layers - 1}")
    if list(c.dense_layers) != sorted(set(c.dense_layers)):
        raise ConfigError(f"dense_layers={list(c.dense_layers)!r} must be increasing, each layer once")
    if c.n_experts == 0:
        changed = [n for n, default in (("experts_per_token", 1), ("moe_d_ff", None), ("norm_topk_prob", False),
                                        ("moe_every", 1), ("dense_layers", ()), ("moe_router", MoERouter.SOFTMAX),
                                        ("moe_shared_expert", False)) if getattr(c, n) != default]
        if changed:
            raise ConfigError(f"{changed[0]} is set but n_experts is 0 (a dense model); set n_experts >= 1")
        return
    if c.moe_router is MoERouter.SIGMOID and c.norm_topk_prob:
        raise ConfigError("norm_topk_prob=true renormalizes softmax weights; moe_router='sigmoid' has none (each "
                          "chosen expert's sigmoid stands alone)")
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
    """Parameters of layer i's MLP: 3 d d_ff dense; E (3 d F) experts + E d router (+ 3 d F shared) sparse."""
    if not layer_is_moe(c, i):
        return 3 * c.d_model * c.d_ff
    shared = 3 * c.d_model * expert_d_ff(c) if c.moe_shared_expert else 0
    return c.n_experts * (3 * c.d_model * expert_d_ff(c) + c.d_model) + shared
