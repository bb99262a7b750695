"""Training settings: one frozen, keyword-only `TrainConfig`, enums for every choice, checked once on construction.

Every setting is validated here and nowhere downstream: a bad value raises `ConfigError` naming the field and
what is allowed (the command line maps field names to its flags). Whether a valid device actually exists on
this machine is a property of the machine, not of the config, so it is checked where the run starts
(`check_device_available`, called by the runtime factory), which lets a study plan be built on one machine and
run on another.

Variants are `dataclasses.replace(cfg, lr=...)` (which validates again) or `cfg.replace(...)`, which names an
unknown field.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional

from ..choice import Choice
from ..errors import ConfigError
from ..plain import plain

__all__ = ["TrainConfig", "DType", "OnNaN", "OptimizerName", "NSDType", "Parallel", "FREE_ON_RESUME",
           "check_device_available"]


class DType(Choice):
    FP32 = "fp32"  # everything in float32
    BF16 = "bf16"  # bfloat16 autocast; weights and optimizer state stay float32


class OnNaN(Choice):
    SKIP = "skip"  # skip the update of that step and go on
    STOP = "stop"  # stop the run; the last good checkpoint stays intact


class OptimizerName(Choice):
    """Which optimizer (train/optim.py; Muon and its AdamW groups: train/muon.py)."""

    ADAMW = "adamw"  # torch AdamW on every parameter
    MUON = "muon"  # torch Muon on the hidden matrices, AdamW on embeddings, head, norms, gains, biases


class NSDType(Choice):
    """The dtype of Muon's Newton-Schulz iteration (train/newton_schulz.py)."""

    AUTO = "auto"  # bf16 unless a short probe finds bf16 matmuls slow here (an AVX2-only CPU): then fp32
    BF16 = "bf16"  # as torch.optim.Muon
    FP32 = "fp32"


class Parallel(Choice):
    DDP = "ddp"  # DistributedDataParallel
    FSDP = "fsdp"  # FSDP2 (fully_shard per block)


_ENUMS = {"dtype": DType, "on_nan": OnNaN, "parallel": Parallel, "optimizer": OptimizerName,
          "muon_ns_dtype": NSDType}
_INT_MIN = {"steps": 1, "batch_size": 1, "seq_len": 1, "grad_accum": 1, "seed": 0,
            "eval_every": 0, "eval_batches": 1, "stats_every": 0, "ckpt_every": 0, "keep_last": 1, "tp": 1}
_POSITIVE = ("lr", "adam_eps")
_NON_NEGATIVE = ("final_lr", "weight_decay", "clip", "z_loss", "router_aux_loss_coef")
_BOOLS = ("decay_norms", "progress", "compile")
# settings that do not change the trajectory: a resume may change them without a warning (checkpoints
# reshard across process counts, parallel and tp: io/checkpoints/sharded.py)
FREE_ON_RESUME = ("steps", "eval_every", "eval_batches", "stats_every", "ckpt_every", "keep_last", "device",
                  "progress", "parallel", "tp", "compile")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Training settings; every field is validated on construction (ConfigError names field and range)."""

    steps: int = 200  # optimizer steps
    lr: float = 3e-3  # peak learning rate, reached at the end of warmup
    final_lr: float = 1e-5  # cosine decays lr -> final_lr over the steps after warmup (= lr: constant)
    warmup_steps: Optional[int] = None  # linear warmup steps; None = steps // 10 (derived: follows `steps`)
    batch_size: int = 16  # GLOBAL batch (sequences per step over all processes and micro-batches)
    seq_len: int = 64  # tokens per sequence
    grad_accum: int = 1  # micro-batches per step; batch_size per process must divide by it
    weight_decay: float = 0.0  # torch AdamW decay (multiplied by the LR)
    decay_norms: bool = False  # also decay norm gains (QK-norm too), biases and embeddings
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    clip: float = 1.0  # max global gradient norm; 0 = no clipping (the norm is still reported)
    z_loss: float = 0.0  # coefficient of mean(logsumexp(logits)^2) (PaLM; Wortsman et al. use 1e-4)
    # mixture-of-experts models: loss + coef * the load-balancing loss (nn/moe.py; no effect on dense models).
    # 0.01: Switch Transformer's alpha and OLMoE's published value (Qwen3-MoE publishes 0.001); --init-from an
    # HF checkpoint whose config.json states it uses that value unless set
    router_aux_loss_coef: float = 0.01
    seed: int = 0  # model init and data order
    eval_every: int = 0  # validation every N steps; 0 = only at the end
    eval_batches: int = 8  # validation batches of batch_size sequences
    stats_every: int = 10  # attention/q-k/output-logit stats every N steps (and at the last); 0 = never
    ckpt_every: int = 0  # checkpoint every N steps (and at the end); 0 = none (SIGTERM still writes one)
    keep_last: int = 3  # checkpoints kept
    device: str = "cpu"  # "cpu", "cuda", "cuda:N", "mps"
    dtype: DType = DType.FP32  # fp32, or bf16 autocast (weights and optimizer stay fp32)
    on_nan: OnNaN = OnNaN.STOP  # non-finite loss/grad: stop (last good checkpoint intact) or skip the step
    progress: bool = True  # tqdm bar on stderr (main process only)
    parallel: Parallel = Parallel.DDP  # under torchrun with >1 process: ddp or fsdp (FSDP2); no effect otherwise
    tp: int = 1  # tensor-parallel degree (torchrun; processes / tp data-parallel groups, FSDP2 across them)
    # adamw, or muon on the hidden matrices (q/k/v/o, gate/up/down) with AdamW on the rest; `lr` is the peak
    # LR of both (Muon's update scaled to AdamW's RMS: train/muon.py)
    optimizer: OptimizerName = OptimizerName.ADAMW
    # optimizer="muon": the dtype of its Newton-Schulz iteration; auto = the one that is fast on this machine
    # (probed; run.json records the choice)
    muon_ns_dtype: NSDType = NSDType.AUTO
    # torch.compile the training forward/backward (train/compiled.py; the stats pass and validation stay eager);
    # results within 1e-5 of eager, graph breaks and recompiles reported (TrainResult.compile_report)
    compile: bool = False
    # QK-clip (Kimi K2's MuonClip) threshold tau: after each step, heads whose max attention logit in that step's
    # forward exceeded tau get their q/k weights scaled by sqrt(tau / max) (train/qk_clip.py); None = off
    qk_clip: Optional[float] = None

    def __post_init__(self) -> None:
        for name, enum_cls in _ENUMS.items():
            object.__setattr__(self, name, enum_cls.parse(name, getattr(self, name)))
        for name, lo in _INT_MIN.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name}={v!r} must be an integer >= {lo}")
        for name in _POSITIVE + _NON_NEGATIVE + ("beta1", "beta2"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{name}={v!r} must be a finite number")
            object.__setattr__(self, name, float(v))
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be > 0")
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be >= 0")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be in [0, 1)")
        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be true or false")
        if self.warmup_steps is not None:
            w = self.warmup_steps
            if isinstance(w, bool) or not isinstance(w, int) or w < 0:
                raise ConfigError(f"warmup_steps={w!r} must be an integer >= 0")
            if w > self.steps:
                raise ConfigError(f"warmup_steps={w} must be <= steps={self.steps} (the LR would never reach its "
                                  "peak)")
        if self.qk_clip is not None:
            q = self.qk_clip
            if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or q <= 0:
                raise ConfigError(f"qk_clip={q!r} must be a positive number (the max attention logit tau) or None")
            object.__setattr__(self, "qk_clip", float(q))
        _check_device_name(self.device)
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"grad_accum={self.grad_accum} must divide batch_size={self.batch_size}")

    @property
    def warmup(self) -> int:
        """The warmup steps in effect: `warmup_steps`, or steps // 10 when it was not set."""
        return self.steps // 10 if self.warmup_steps is None else self.warmup_steps

    def replace(self, **changes: Any) -> "TrainConfig":
        """`dataclasses.replace` with an error naming an unknown field."""
        known = {f.name for f in dataclasses.fields(self)}
        for key in changes:
            if key not in known:
                raise ConfigError(f"unknown training field {key!r}; known fields: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able: enums as their string values."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Dict[str, Any], *, source: str = "training config") -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown training field {unknown[0]!r}; known fields: "
                              f"{', '.join(sorted(known))}")
        return cls(**data)


def field_names() -> tuple:
    return tuple(f.name for f in dataclasses.fields(TrainConfig))


def _check_device_name(dev: Any) -> None:
    if not isinstance(dev, str) or not (dev in ("cpu", "cuda", "mps") or
                                        (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ConfigError(f"device={dev!r} is not allowed; choose one of: cpu, cuda, cuda:N, mps")


def check_device_available(device: str) -> None:
    """ConfigError naming `device` when this machine does not have it (CUDA or MPS missing)."""
    import torch

    _check_device_name(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available on this machine; use device='cpu'")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device='mps' but MPS is not available on this machine; use device='cpu'")
