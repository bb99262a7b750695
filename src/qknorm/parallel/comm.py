"""What the full-width (OLMo 2) QK-norm costs in communication under tensor parallelism, and a recorder that
counts the collectives a step really issues (the tests hold the two against each other).

Notation: N = TP degree, tokens = B*T of one step on one data-parallel replica, H / Hkv = query / key-value
heads, D = head_dim, s = bytes per activation element (2 for bf16), statistics in fp32 (4 bytes). Per layer
and per step (forward + backward), what each scheme spends *to make the full-width norm exact*, beyond the
all-reduces Megatron-style TP needs anyway (o_proj and down_proj outputs forward, the attention and MLP input
gradients backward, each of tokens*d*s):

  ours (qknorm)       forward   all-reduce of the per-token partial sums of squares, q and k   2*tokens fp32
                      backward  all-reduce of the per-token partial sum(dy*g*x_hat), q and k   2*tokens fp32
                      = 2 collectives (q and k share a buffer; 4 of tokens fp32 unfused, same bytes)
  gather (HF, vLLM)   forward   all-gather q and k to full width, every rank normalizes every head
                                                                               tokens*(H+Hkv)*D*s gathered
                      backward  reduce-scatter of the full-width q and k gradients: the same sizes
                      = 4 collectives. (HF's tp_plan gathers v too and runs attention for every head on every
                      rank, which replaces this backward reduce-scatter by N-fold attention compute.)
  all-to-all          forward   q and k head-sharded -> sequence-sharded (all-to-all), norm, and back
  (OLMo-core)                   (all-to-all): 2 per tensor, each moving the local tokens*H*D*s/N
                      backward  the same two per tensor in reverse
                      = 8 collectives

Bytes one rank sends (ring / pairwise algorithms, N ranks): all-reduce of M bytes 2(N-1)/N*M; all-gather
producing M bytes (N-1)/N*M; reduce-scatter of M bytes (N-1)/N*M; all-to-all of a local M-byte tensor
(N-1)/N*M. So per layer-step and rank: ours 2*2(N-1)/N*2*tokens*4 = 32(N-1)/N*tokens bytes; gather
2(N-1)/N*tokens*(H+Hkv)*D*s; all-to-all 4(N-1)/N*tokens*(H+Hkv)*D*s/N. For OLMo 2 7B (H = Hkv = 32, D = 128,
bf16) that is 32 vs 32768 (N = 2) bytes per token and layer: ~1000x less than gathering, and N x ~500x less
than the all-to-all scheme. Per-head norms (Qwen3, Gemma 3) need no token-sized communication in any scheme;
ours all-reduces the replicated (D,) gains' gradients once per layer and step (2*D values).

`record_collectives()` is a TorchDispatchMode that logs every collective issued inside it, both
torch.distributed's (c10d) and the functional ones DTensor redistributes with, as `Collective` records.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..config import ModelConfig, QKNormScope

__all__ = ["Collective", "SCHEMES", "qk_norm_collectives", "layer_collectives", "record_collectives"]

SCHEMES = ("ours", "gather", "all_to_all")
_WIRE = {"all_reduce": 2.0, "all_gather": 1.0, "reduce_scatter": 1.0, "all_to_all": 1.0}  # x (N-1)/N x bytes


@dataclass(frozen=True)
class Collective:
    """One collective: its kind, the phase it runs in, and the tensor it moves.

    numel is the all-reduce / reduce-scatter input, the all-gather output, the all-to-all local input."""

    kind: str  # all_reduce | all_gather | reduce_scatter | all_to_all | other op names as recorded
    phase: str  # forward | backward
    numel: int
    itemsize: int
    what: str = ""

    @property
    def bytes(self) -> int:
        return self.numel * self.itemsize

    def wire_bytes(self, n: int) -> float:
        """Bytes one of the n ranks sends for it (ring / pairwise algorithms)."""
        return _WIRE[self.kind] * (n - 1) / n * self.bytes

    def key(self) -> Tuple[str, str, int, int]:
        return self.kind, self.phase, self.numel, self.itemsize


def qk_norm_collectives(scheme: str, *, tokens: int, n_heads: int, n_kv_heads: int, head_dim: int, tp: int,
                        act_bytes: int = 2, fused: bool = True) -> Tuple[Collective, ...]:
    """The collectives a scheme issues for a full-width QK-norm in one layer and step (module docstring)."""
    qd, kd = tokens * n_heads * head_dim, tokens * n_kv_heads * head_dim  # full-width q and k elements
    if scheme == "ours":
        if fused:
            return tuple(Collective("all_reduce", ph, 2 * tokens, 4, f"QK-norm {w}, q and k")
                         for ph, w in (("forward", "sum of squares"), ("backward", "sum(dy*g*x_hat)")))
        return tuple(Collective("all_reduce", ph, tokens, 4, f"QK-norm {t}") for ph in ("forward", "backward")
                     for t in "qk")
    if scheme == "gather":
        return tuple(Collective(kind, ph, n, act_bytes, f"{t} full width")
                     for kind, ph in (("all_gather", "forward"), ("reduce_scatter", "backward"))
                     for t, n in (("q", qd), ("k", kd)))
    if scheme == "all_to_all":
        return tuple(Collective("all_to_all", ph, n // tp, act_bytes, f"{t} {way}")
                     for ph in ("forward", "backward") for t, n in (("q", qd), ("k", kd))
                     for way in ("heads -> sequence", "sequence -> heads"))
    raise ValueError(f"scheme={scheme!r}; choose one of {', '.join(SCHEMES)}")


def layer_collectives(config: ModelConfig, *, tokens: int, tp: int, act_bytes: int = 2,
                      gain_bytes: int = 4) -> Tuple[Collective, ...]:
    """Every collective one decoder layer issues per step under `parallelize_tp` (no FSDP): Megatron's four
    all-reduces of the residual width plus the QK-norm's (ours, fused)."""
    c = config
    hidden = tokens * c.d_model
    out = [Collective("all_reduce", "forward", hidden, act_bytes, f"{m} output") for m in ("o_proj", "down_proj")]
    out += [Collective("all_reduce", "backward", hidden, act_bytes, f"{m} input gradient") for m in ("attn", "mlp")]
    if c.qk_norm is QKNormScope.FULL:
        out += qk_norm_collectives("ours", tokens=tokens, n_heads=c.n_heads, n_kv_heads=c.n_kv_heads,
                                   head_dim=c.head_dim, tp=tp)
    elif c.qk_norm is QKNormScope.HEAD:
        out.append(Collective("all_reduce", "backward", 2 * c.head_dim, gain_bytes, "shared (D,) gain gradients"))
    return tuple(out)


# ---------------------------------------------------------------------------------------------- recording
def _ops():
    """(op packet -> (kind, how to read numel)) for the c10d and functional collectives."""
    c10d, fun = torch.ops.c10d, torch.ops._c10d_functional
    first = lambda args: args[0].numel()  # noqa: E731
    first_of_list = lambda args: sum(t.numel() for t in args[0])  # noqa: E731
    table = {
        c10d.allreduce_: ("all_reduce", first_of_list),
        c10d.allreduce_coalesced_: ("all_reduce", first_of_list),
        c10d._allgather_base_: ("all_gather", first),  # output tensor first
        c10d._reduce_scatter_base_: ("reduce_scatter", lambda a: a[1].numel()),  # (output, input)
        c10d.alltoall_base_: ("all_to_all", lambda a: a[1].numel()),
        fun.all_reduce: ("all_reduce", first),
        fun.all_reduce_coalesced: ("all_reduce", first_of_list),
        fun.all_gather_into_tensor: ("all_gather", lambda a: a[0].numel() * a[1]),  # (input, group_size, ...)
        fun.reduce_scatter_tensor: ("reduce_scatter", first),
        fun.all_to_all_single: ("all_to_all", first),
    }
    others = (c10d.allgather_, c10d.reduce_scatter_, c10d.alltoall_, c10d.broadcast_, c10d.gather_,
              c10d.scatter_, c10d.reduce_, fun.broadcast, fun.all_gather_into_tensor_coalesced,
              fun.reduce_scatter_tensor_coalesced)
    return table, set(others)


class _Recorder(TorchDispatchMode):
    def __init__(self, log: List[Collective], phase: List[str]):
        super().__init__()
        self.log, self.phase = log, phase
        self.table, self.others = _ops()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in self.table:
            kind, numel = self.table[packet]
            t = args[0][0] if isinstance(args[0], (list, tuple)) else args[0]
            self.log.append(Collective(kind, self.phase[0], int(numel(args)), t.element_size(), str(packet)))
        elif packet in self.others:  # a collective we do not expect: log it under its own name
            self.log.append(Collective(str(packet), self.phase[0], -1, 0, str(packet)))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def record_collectives(phase: str = "forward") -> Iterator[List[Collective]]:
    """Log the collectives issued inside the block (this process's view) as `Collective`s of `phase`:

        with record_collectives("forward") as fwd:
            out = block(x, rope)
        with record_collectives("backward") as bwd:
            out.backward(grad)
    """
    log: List[Collective] = []
    with _Recorder(log, [phase]):
        yield log
