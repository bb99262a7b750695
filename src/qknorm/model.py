"""TransformerLM: embeddings -> N decoder blocks -> final norm -> LM head.

One model class serves every family; the config says which norms exist and where (nn/block.py), whether and
how q/k are normalized (nn/attention.py), which layers use a sliding window and which RoPE theta each uses.
`model(input_ids)` returns logits (B, T, vocab); `model(new_ids, cache=cache)` runs only the new tokens of a
sequence whose earlier keys/values are in a KVCache (nn/kv_cache.py), at their absolute positions.
`model.generate(...)` / `model.stream(...)` decode with that cache (the loop and the sampling: generation.py).
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from typing import ContextManager, Dict, Iterator, List, Optional, Protocol, Sequence

import torch
from torch import nn

from . import generation
from .config import SLIDING, ModelConfig, Placement, rotary_dim
from .errors import ConfigError
from .nn.attention import Attention
from .nn.attention_probes import StatsProbe, probing
from .nn.block import Block
from .nn.kv_cache import KVCache
from .nn.moe import MoEMLP, router_aux_loss
from .nn.norm import RMSNorm, build_norm
from .nn.qk_norm import QKL2Norm, QKLayerNorm
from .nn.rope import RotaryEmbedding
from .nn.sigma_reparam import SigmaReparamLinear


class ParallelPlan(Protocol):
    """What a parallelized model does differently from one process (parallel/tensor.py's TensorParallelPlan):
    the LM head's input and output layouts, and combining per-rank attention statistics."""

    def head_input(self, h: torch.Tensor) -> torch.Tensor: ...  # (B, T, d) local -> the head's input

    def head_output(self, logits: torch.Tensor) -> torch.Tensor: ...  # the head's output -> what forward returns

    def combining_attention_stats(self, attns: Sequence[Attention],
                                  stats: List[Dict[str, torch.Tensor]]) -> ContextManager[None]: ...


class TransformerLM(nn.Module):
    def __init__(self, config: ModelConfig, *, device=None, dtype=None):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"TransformerLM expects a ModelConfig, got {type(config).__name__}")
        if dtype is not None:
            config.warn_if_unsafe_dtype(dtype)
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model, device=device, dtype=dtype)
        self.layers = nn.ModuleList(Block(c, i, device=device, dtype=dtype) for i in range(c.n_layers))
        # post-LN blocks end with a norm already; the other placements need a final one
        self.norm = nn.Identity() if c.placement is Placement.POST else build_norm(c, device=device, dtype=dtype)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False,
                                                                device=device, dtype=dtype)
        # one RoPE per layer type: full-attention layers use rope_theta + rope_scaling, sliding ones `local_rope`
        local_theta, local_scaling = c.local_rope
        rd = rotary_dim(c)  # RoPE's dims of a head (StableLM: a quarter)
        self.rope_global = RotaryEmbedding(rd, theta=c.rope_theta, scaling=c.rope_scaling)
        self.rope_local = RotaryEmbedding(rd, theta=local_theta, scaling=local_scaling)
        self._layer_is_sliding = [t == SLIDING for t in c.resolved_layer_types()]
        self.parallel_plan: Optional[ParallelPlan] = None  # set once by set_parallel_plan (parallel/tensor.py)
        self.reset_parameters()

    # ------------------------------------------------------------------ forward
    def forward(self, input_ids: torch.Tensor, *, cache: Optional[KVCache] = None) -> torch.Tensor:
        # (B, T) int -> (B, T, vocab); with a cache, input_ids continue the positions it holds (and are added to it)
        return self.logits(self.hidden_states(input_ids, cache=cache))

    def hidden_states(self, input_ids: torch.Tensor, *, cache: Optional[KVCache] = None) -> torch.Tensor:
        """(B, T) int -> (B, T, d): the last block's output after the final norm (what the LM head reads)."""
        x = self.embed(input_ids)  # (B, T, d)
        if self.config.embed_scale:
            x = x * torch.tensor(self.config.d_model ** 0.5, dtype=x.dtype)
        T, dev = input_ids.shape[1], input_ids.device
        pos = 0 if cache is None else cache.offset_for(T)  # absolute position of the first token
        rope_g = self.rope_global(T, dev, offset=pos) if not all(self._layer_is_sliding) else None
        rope_l = self.rope_local(T, dev, offset=pos) if any(self._layer_is_sliding) else None
        kvs = cache.layers if cache is not None else [None] * len(self.layers)
        for layer, sliding, kv in zip(self.layers, self._layer_is_sliding, kvs):
            x = layer(x, rope_l if sliding else rope_g, kv)
        return self.norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, T, vocab)
        plan = self.parallel_plan
        h = h if plan is None else plan.head_input(h)
        w = self.embed.weight if self.lm_head is None else self.lm_head.weight
        out = nn.functional.linear(h, w)
        if self.config.logit_scale != 1.0:  # Cohere
            out = out * self.config.logit_scale
        cap = self.config.final_softcap
        out = out if cap is None else torch.tanh(out / cap) * cap
        return out if plan is None else plan.head_output(out)

    def set_parallel_plan(self, plan: ParallelPlan) -> None:
        """Parallelizers (qknorm.parallel.parallelize_tp) install their plan once, after sharding the weights."""
        if self.parallel_plan is not None:
            raise ConfigError("this model is already parallelized (it has a parallel plan)")
        self.parallel_plan = plan

    # ------------------------------------------------------------------ generation (generation.py)
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
                 eos_token_id: Optional[int] = None) -> torch.Tensor:
        """input_ids (B, T) -> (B, T + max_new_tokens) LongTensor; temperature 0 is greedy. After a row's
        eos_token_id the rest of the row is eos_token_id. Bad arguments raise ConfigError naming them."""
        sampling = generation.Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                                       eos_token_id=eos_token_id)
        return generation.generate(self, input_ids, max_new_tokens, sampling)

    def stream(self, input_ids: torch.Tensor, max_new_tokens: int, **sampling) -> Iterator[torch.Tensor]:
        """The new tokens, (B,) per step, as they are chosen; keyword arguments as for `generate`."""
        return generation.stream(self, input_ids, max_new_tokens, generation.Sampling(**sampling))

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) for matrices, output projections scaled by 1/sqrt(2 n_layers); norms at identity
        (an l2 QK-norm's temperature at its initial value); sigmaReparam gammas = sigma(W)."""
        std = self.config.init_std
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                s = std / math.sqrt(2 * self.config.n_layers) if name.endswith(("o_proj", "down_proj")) else std
                nn.init.normal_(m.weight, 0.0, s)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
                if isinstance(m, SigmaReparamLinear):
                    m.reset_reparam()  # gamma = sigma(W): W_hat = W at init
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, 0.0, std)
            elif isinstance(m, (RMSNorm, nn.LayerNorm, QKLayerNorm, QKL2Norm)):
                m.reset_parameters()
            elif isinstance(m, MoEMLP):
                m.reset_parameters(std, self.config.n_layers)

    # ------------------------------------------------------------------ diagnostics
    @contextmanager
    def recording_attention_stats(self) -> Iterator[List[Dict[str, torch.Tensor]]]:
        """Within the block every attention layer records its stats; yields the per-layer list after forward.

            with model.recording_attention_stats() as stats:
                model(ids)
            stats[i]["max_logit"]

        Under a parallel plan the stats are combined over the ranks (a collective: every rank runs the forward)."""
        attns = [layer.attn for layer in self.layers]
        out: List[Dict[str, torch.Tensor]] = []
        plan = self.parallel_plan
        with plan.combining_attention_stats(attns, out) if plan is not None else nullcontext():
            with probing(attns, [StatsProbe() for _ in attns]) as probes:
                try:
                    yield out
                finally:
                    out.extend(p.stats for p in probes)

    def router_aux_loss(self) -> torch.Tensor:
        """The load-balancing loss (nn/moe.py) of the last forward's routing over the sparse layers; train with
        loss + router_aux_loss_coef * model.router_aux_loss() (OLMoE 0.01, Qwen3-MoE 0.001), as `qknorm train`
        does (TrainConfig.router_aux_loss_coef)."""
        loss = router_aux_loss(self)
        if loss is None:
            raise RuntimeError("router_aux_loss needs a forward of a model with mixture-of-experts layers first")
        return loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def no_decay_param_names(self) -> List[str]:
        """Names of parameters that should not be weight-decayed: every norm gain (QK-norm too), biases, embeddings."""
        names = []
        for name, p in self.named_parameters():
            if p.ndim < 2 or name.startswith("embed."):
                names.append(name)
        return names
