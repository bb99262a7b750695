"""Tensor parallelism (Megatron-style, on torch DTensor) for a `TransformerLM` over a 1-D device mesh.

    mesh = init_device_mesh("cuda", (tp,))                  # or mesh["tp"] of a (dp, tp) mesh under FSDP2
    check_tp_degree(model.config, tp)                       # before anything distributed: one ConfigError line
    parallelize_tp(model, mesh)                             # in place; returns the model

What is sharded, per decoder block (N = mesh size), with `torch.distributed.tensor.parallel` styles:
  attention  q_proj, k_proj, v_proj column-wise (heads split: rank r holds heads [r*H/N, (r+1)*H/N) and
             kv heads [r*Hkv/N, ...), so GQA groups stay on one rank), o_proj row-wise (one all-reduce out).
             QK-norm: parallel/qk_norm_tp.py (full width exact with one (2, B*T) fp32 all-reduce each way;
             per-head needs none forward, its replicated gain's gradient is summed over the group).
  MLP        gate_proj, up_proj column-wise, down_proj row-wise (one all-reduce out).
  inputs     each sub-layer's hidden-state input enters as one replicated DTensor (a forward pre-hook that
             leaves any other argument alone), so q/k/v (and gate/up) add their input gradients as partial
             sums and the backward all-reduces them once.
  norms      block and final norms (RMSNorm with any offset/cast, LayerNorm) keep replicated parameters and
             run on the replicated residual stream; their gradients are identical on every rank.
  embedding  vocab-parallel: row-wise over the vocabulary (each rank looks up the ids it owns; one
             all-reduce of (B, T, d) out). LM head: the same (V, d) matrix sharded the same way (Shard(0)),
             so Gemma 3's tied embedding is one sharded parameter used twice; logits come out vocab-sharded
             and are all-gathered to full (B, T, V) (or left as a Shard(-1) DTensor with
             `loss_parallel=True`, for `torch.distributed.tensor.parallel.loss_parallel()`).
Why vocab-parallel rather than replicated: the embedding and head are the largest matrices of small models and
~11% of OLMo 2 7B's parameters (2 x 100352 x 4096). Replicated, every rank holds all of them with their
gradients and AdamW state, computes the whole head matmul and materializes the whole (B, T, V) logits, the
largest activation of a step; vocab-parallel, each rank holds 1/N of each. The price is one (B, T, d)
all-reduce in the embedding's forward and one for the head's input gradient. For training pass
`loss_parallel=True` and compute the cross-entropy under `loss_parallel()`: it reduces over the vocabulary
shards with (B, T)-sized all-reduces. The default (`False`) all-gathers the logits so `model(ids)` returns
full logits to any caller: (N-1)/N x B*T*V values per rank, fine for evaluation and tests, the wrong choice
for training with a 100k vocabulary.

Invariant (checked at the end): every parameter is a DTensor on `tp_mesh`. That is what makes the global
gradient norm right: `torch.nn.utils.clip_grad_norm_` on DTensors sums a sharded gradient's squares over its
shards and counts a replicated one once (no double counting), and the optimizer's foreach kernels never mix
DTensors and plain tensors. Under FSDP2 x TP call `fully_shard(block, mesh=mesh["dp"])` per block and on the
root *after* this; parameters then live on the 2-D mesh. Not supported here: sequence parallelism, and
`reset_parameters()` after sharding (initialize or load weights first: the shards are cut from rank 0's values).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from ..config import ModelConfig
from ..config_variants import fused_kernel_serves, unfused_reason
from ..errors import ConfigError
from ..model import TransformerLM
from ..nn.attention_probes import QKMaxNormProbe, probing
from .qk_norm_tp import TensorParallelAttention

__all__ = ["check_tp_degree", "parallelize_tp", "TensorParallelPlan", "TP_DIVISIBLE_FIELDS"]

# config fields that tensor parallelism splits evenly over the ranks
TP_DIVISIBLE_FIELDS = ("n_heads", "n_kv_heads", "d_ff", "vocab_size")


def check_tp_degree(config: ModelConfig, tp, *, world_size: Optional[int] = None) -> None:
    """ConfigError (one line, naming the field and tp) unless `tp` is a valid tensor-parallel degree for `config`
    (and, when given, divides `world_size`, the data-parallel degree being world_size / tp)."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ConfigError(f"tp={tp!r} must be an integer >= 1 (the tensor-parallel degree)")
    if world_size is not None and world_size % tp:
        raise ConfigError(f"tp={tp} does not divide the number of processes ({world_size}); "
                          f"use a tp that divides it (data-parallel degree = processes / tp)")
    if tp > 1 and config.qk_norm_type.value != "rms" and config.qk_norm.value != "none":
        raise ConfigError(f"qk_norm_type={config.qk_norm_type.value!r} is not supported with tp={tp}: tensor "
                          "parallelism shards the RMS QK-norm only; use qk_norm_type='rms' or tp=1")
    if tp > 1 and not fused_kernel_serves(config):
        raise ConfigError(f"tp={tp} shards the fused QK-norm + RoPE path only; this config's {unfused_reason(config)} "
                          "(config_variants.py): use tp=1")
    if tp > 1 and config.sigma_reparam:
        raise ConfigError(f"sigma_reparam=True is not supported with tp={tp}: the power iteration needs whole "
                          "matrices; use tp=1")
    if tp > 1 and config.n_experts:
        raise ConfigError(f"n_experts={config.n_experts} is not supported with tp={tp}: the mixture-of-experts MLP "
                          "(nn/moe.py) has no tensor-parallel plan; use tp=1")
    for field in TP_DIVISIBLE_FIELDS:
        value = getattr(config, field)
        if value % tp:
            pad = f" or pad vocab_size to {-(-value // tp) * tp}" if field == "vocab_size" else ""
            raise ConfigError(f"{field}={value} is not divisible by tp={tp}: tensor parallelism splits {field} "
                              f"evenly over the ranks; choose a tp that divides it{pad}")


class TensorParallelPlan:
    """A `TransformerLM`'s parallel plan after `parallelize_tp` (model.py `ParallelPlan`): the LM head is
    vocab-parallel, and attention statistics are combined over the TP group."""

    def __init__(self, tp_mesh: DeviceMesh, loss_parallel: bool):
        self.tp_mesh, self.loss_parallel = tp_mesh, bool(loss_parallel)

    def head_input(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, d) replicated, as one DTensor
        return DTensor.from_local(h, self.tp_mesh, [Replicate()], run_check=False)

    def head_output(self, logits: torch.Tensor) -> torch.Tensor:
        # head weight Shard(0) -> logits Shard(-1): each rank its vocabulary slice; gathered unless loss_parallel
        return logits if self.loss_parallel else logits.full_tensor()

    @contextmanager
    def combining_attention_stats(self, attns: Sequence[nn.Module], stats: List[Dict[str, torch.Tensor]]):
        """Around `TransformerLM.recording_attention_stats`: each layer's statistics combined over the TP group
        (collective: every rank of the group runs the same forward) into the whole layer's, as one process
        computes them. Each rank's largest q and k norms come from a QKMaxNormProbe per layer."""
        with probing(attns, [QKMaxNormProbe() for _ in attns]) as probes:
            yield
        if stats and all(stats):  # a forward ran
            _combine_attention_stats(stats, attns, [p.max_norm for p in probes], self.tp_mesh.get_group())


@torch.no_grad()
def _combine_attention_stats(stats: List[Dict[str, torch.Tensor]], attns, max_norms, group) -> None:
    """In place: each rank's stats cover its heads (nn/attention.py `attention_stats`). The layer's max logit is
    the max over ranks; its bound scale * max|q| * max|k| takes the largest q and k norms of any rank; the RMS
    is the root of the mean of the ranks' mean squares (every rank holds the same number of elements); the mean
    attention entropy is the mean of the ranks' means (every rank holds the same number of heads)."""
    maxes = torch.stack([torch.cat([s["max_logit"].float().reshape(1), m]) for s, m in zip(stats, max_norms)])
    maxes = torch.nan_to_num(maxes, nan=math.inf)  # (L, 3): a non-finite logit stays beyond every bound
    sums = torch.stack([torch.stack([s["q_rms"].float().pow(2), s["k_rms"].float().pow(2), s["entropy"].float()])
                        for s in stats])  # (L, 3): mean squares of q and k, mean entropy
    dist.all_reduce(maxes, op=dist.ReduceOp.MAX, group=group)
    dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
    means = sums / dist.get_world_size(group)
    for i, a in enumerate(attns):
        stats[i] = {**stats[i], "max_logit": maxes[i, 0], "logit_bound": a.scale * maxes[i, 1] * maxes[i, 2],
                    "q_rms": means[i, 0].sqrt(), "k_rms": means[i, 1].sqrt(), "entropy": means[i, 2]}


def _to_replicated_dtensor(module, inputs, mesh):
    return tuple(DTensor.from_local(x, mesh, [Replicate()], run_check=False) if isinstance(x, torch.Tensor)
                 and not isinstance(x, DTensor) else x for x in inputs)


def _to_local(module, output, mesh):
    return output.to_local() if isinstance(output, DTensor) else output


def _replicate(module: nn.Module, mesh: DeviceMesh) -> None:
    """Replicated parameters; plain tensors in and out (the replicated residual stream). Identity: nothing."""
    if any(True for _ in module.parameters(recurse=False)):
        distribute_module(module, mesh, input_fn=_to_replicated_dtensor, output_fn=_to_local)


def _first_input_replicated(mesh: DeviceMesh):
    """A forward pre-hook: the sub-layer's first argument (the (B, T, d) hidden states, identical on every rank)
    becomes one replicated DTensor, so its column-parallel consumers (q/k/v, gate/up) return partial input
    gradients that autograd adds up and the backward all-reduces once. Other arguments pass through."""

    def hook(module, args):
        x, *rest = args
        return (DTensor.from_local(x, mesh, [Replicate()], run_check=False), *rest)

    return hook


_BLOCK_PLAN = {
    "attn.q_proj": ColwiseParallel(),
    "attn.k_proj": ColwiseParallel(),
    "attn.v_proj": ColwiseParallel(),
    "attn.o_proj": RowwiseParallel(),
    "mlp.gate_proj": ColwiseParallel(),
    "mlp.up_proj": ColwiseParallel(),
    "mlp.down_proj": RowwiseParallel(),
}


def parallelize_tp(model: TransformerLM, tp_mesh: DeviceMesh, *, loss_parallel: bool = False) -> TransformerLM:
    """Shard `model` in place over the 1-D `tp_mesh` (see the module docstring); returns it.

    Every rank must hold the same weights (the shards are cut from rank 0's). `model(ids)` then takes the same
    (B, T) ids on every rank of the mesh and returns the full (B, T, vocab) logits on each, or with
    `loss_parallel=True` a vocab-sharded DTensor for `loss_parallel()`. Each block's attention becomes a
    `TensorParallelAttention` (parallel/qk_norm_tp.py) and the model gets a `TensorParallelPlan`. Raises
    ConfigError in one line when the mesh is not 1-D, the model is not a TransformerLM, is already parallelized,
    or its shape does not split.
    """
    if not isinstance(model, TransformerLM):
        raise ConfigError(f"parallelize_tp expects a TransformerLM, got {type(model).__name__}")
    if model.parallel_plan is not None:
        raise ConfigError("parallelize_tp: this model is already tensor-parallel")
    if not isinstance(tp_mesh, DeviceMesh) or tp_mesh.ndim != 1:
        raise ConfigError(f"tp_mesh must be a 1-D DeviceMesh (the tensor-parallel dimension); got {tp_mesh!r}")
    check_tp_degree(model.config, tp_mesh.size())
    for i, block in enumerate(model.layers):
        for norm in (block.attn_norm_in, block.attn_norm_out, block.mlp_norm_in, block.mlp_norm_out):
            _replicate(norm, tp_mesh)
        parallelize_module(block, tp_mesh, _BLOCK_PLAN)
        block.attn = TensorParallelAttention(model.config, i, tp_mesh, block.attn)  # the sharded modules, local heads
        for sub in (block.attn, block.mlp):
            sub.register_forward_pre_hook(_first_input_replicated(tp_mesh))
    parallelize_module(model.embed, tp_mesh, RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()))
    _replicate(model.norm, tp_mesh)
    if model.lm_head is not None:  # untied: the head's (V, d) weight sharded like the embedding's
        w = model.lm_head.weight
        model.lm_head.register_parameter("weight", nn.Parameter(distribute_tensor(w.detach(), tp_mesh, [Shard(0)])))
    model.set_parallel_plan(TensorParallelPlan(tp_mesh, loss_parallel))
    _check_all_dtensor(model, tp_mesh)
    return model


def _check_all_dtensor(model: nn.Module, mesh: DeviceMesh) -> None:
    for name, p in model.named_parameters():
        if not isinstance(p, DTensor) or p.device_mesh != mesh:
            raise AssertionError(f"parallelize_tp left {name} outside the tensor-parallel mesh")
    assert all(isinstance(b.attn, TensorParallelAttention) for b in model.layers)
