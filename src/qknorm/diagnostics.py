"""Stability diagnostics: what the attention logits, q/k norms and output logits say about a model (what a
training run's loss curve says: train/run_summary.py).

* `stats_pass(model, ids)` — one forward pass under `no_grad` with every attention layer recording
  (nn/attention.py `attention_stats`): per layer the exact max attention logit over allowed (query, key)
  pairs, the Cauchy-Schwarz bound scale * max|q| * max|k|, the RMS of q and k after QK-norm and RoPE and the
  mean attention entropy (nats; its collapse toward 0 is Zhai et al. 2023's instability); plus the max and std
  of the output logits and their mean log Z = logsumexp over the vocabulary (the quantity z-loss pulls toward
  0). All numbers come back with one device sync. The training loop
  runs it every `stats_every` steps on at most 4 sequences of the batch.
* `nonfinite_to_none(obj)` — a copy with NaN/inf as None, for strict JSON (`qknorm inspect --json`).
* `logit_verdict(max_logit)` — a one-line reading of a max attention logit, for `qknorm inspect`.

Thresholds of the verdict: Wortsman et al. 2023 (arXiv 2309.14322) found that every run whose max attention
logit exceeded 1e4 diverged; in our own CPU studies (bench/results/) QK-norm models stayed below ~30 at LRs up
to 1e-1 while the baseline grew past 100 from LR 1e-2 on.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["AttentionStats", "stats_pass", "nonfinite_to_none", "logit_verdict", "layer_rows", "BOUNDED", "GROWTH",
           "SEVERE"]

BOUNDED = 50.0  # at or below: bounded
GROWTH = 100.0  # above: attention-logit growth
SEVERE = 1e4  # above: Wortsman et al. saw every such run diverge


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttentionStats:
    """What one stats pass measured (`stats_pass`): per layer (a tuple, one value a layer) and over the model. The
    training loop writes these fields into its StepRecord (train/step_record.py), under the same names."""

    max_attn_logit: float  # max over layers; NaN counts as +inf
    attn_logit_per_layer: Tuple[float, ...]  # exact max attention logit over allowed (query, key) pairs
    attn_bound_per_layer: Tuple[float, ...]  # Cauchy-Schwarz bound scale * max|q| * max|k|
    q_rms: Tuple[float, ...]  # after QK-norm and RoPE
    k_rms: Tuple[float, ...]
    attn_entropy: float  # nats, mean over layers
    attn_entropy_per_layer: Tuple[float, ...]
    logit_max: float  # output logits
    logit_std: float
    log_z: float  # mean logsumexp of the output logits


@torch.no_grad()
def stats_pass(model: nn.Module, input_ids: torch.Tensor, *, forward: Optional[nn.Module] = None,
               autocast=None, runtime=None) -> AttentionStats:
    """Per-layer attention diagnostics and output-logit stats of `model` on `input_ids` (B, T).

    `model` is the plain `TransformerLM` (its layers record); `forward` the module to call (a DDP/FSDP
    wrapper of it; default `model`). `autocast` is a factory of the context to run under (e.g. bf16); the
    attention scores are still computed in fp32 (autocast off) from the q/k the model attends with.
    `runtime` (train.runtime.Runtime) combines the ranks of a data-parallel run: max over ranks of the max
    logits and bounds, mean of the RMS values, entropies, logit std and log Z (each rank's sequences weigh the
    same), so rank 0's record describes every rank's data. NaN (a non-finite logit) is kept as +inf through
    the max. Returns an `AttentionStats` of python floats.
    """
    fwd = forward if forward is not None else model
    with model.recording_attention_stats() as stats:
        if autocast is None:
            logits = fwd(input_ids)
        else:
            with autocast():
                logits = fwd(input_ids)
    per_layer = torch.stack([torch.stack([s["max_logit"], s["logit_bound"], s["q_rms"], s["k_rms"], s["entropy"]])
                             for s in stats])  # (L, 5)
    if hasattr(logits, "full_tensor"):  # vocab-sharded DTensor under tensor parallelism: the whole (B, T, V)
        logits = logits.full_tensor()
    lf = logits.float()
    out = torch.stack([lf.std(), torch.logsumexp(lf, dim=-1).mean()])  # logit std, mean log Z
    if runtime is not None:
        maxes = torch.cat([per_layer[:, :2].flatten(), lf.amax().reshape(1)]).float()
        maxes = runtime.all_reduce_max(torch.nan_to_num(maxes, nan=math.inf))
        means = runtime.all_reduce_mean(torch.cat([per_layer[:, 2:].flatten(), out]).float())
        per_layer = torch.cat([maxes[:-1].view(-1, 2), means[:-2].view(-1, 3)], dim=1)
        lf_max, out = maxes[-1], means[-2:]
    else:
        lf_max = lf.amax()
    flat = torch.cat([per_layer.flatten().float(), lf_max.reshape(1).float(), out.float()]).tolist()  # one sync
    n = len(stats)
    rows = [flat[5 * i: 5 * i + 5] for i in range(n)]
    per_max = [r[0] for r in rows]
    per_entropy = [r[4] for r in rows]
    return AttentionStats(
        max_attn_logit=_max(per_max), attn_logit_per_layer=tuple(per_max),
        attn_bound_per_layer=tuple(r[1] for r in rows), q_rms=tuple(r[2] for r in rows),
        k_rms=tuple(r[3] for r in rows), attn_entropy=sum(per_entropy) / n if n else math.nan,
        attn_entropy_per_layer=tuple(per_entropy), logit_max=flat[-3], logit_std=flat[-2], log_z=flat[-1])


def _max(values: Sequence[float]) -> float:
    """Max that treats NaN as +inf: a non-finite logit is beyond every bound, never silently dropped."""
    return max((math.inf if v != v else v for v in values), default=math.nan)


def nonfinite_to_none(obj: Any) -> Any:
    """A copy of a metrics record with NaN/±Inf floats replaced by None (strict JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: nonfinite_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nonfinite_to_none(v) for v in obj]
    return obj


def logit_verdict(max_logit: float, *, qk_norm: bool = False) -> str:
    """One line reading `max_logit` (the max attention logit of a model on some text)."""
    head = f"max attention logit {max_logit:.4g}"
    if not math.isfinite(max_logit):
        return f"{head}: non-finite attention logits (overflow or NaN weights): the model is broken"
    if max_logit > SEVERE:
        return (f"{head} > {SEVERE:.0e}: severe attention-logit growth (every such run in Wortsman et al. 2023 "
                f"diverged); {'QK-norm gains have grown: lower the LR' if qk_norm else 'consider QK-norm'}")
    if max_logit > GROWTH:
        hint = "despite QK-norm: the norm gains have grown" if qk_norm else "consider QK-norm"
        return f"{head} > {GROWTH:.0f}: attention-logit growth; {hint}"
    if max_logit > BOUNDED:
        return f"{head}: elevated (bounded models stay below {BOUNDED:.0f}); watch it during training"
    return f"{head}: bounded"


def layer_rows(model: nn.Module, stats: AttentionStats) -> List[Dict[str, Any]]:
    """Per-layer table rows (layer, attention type, max logit, bound, q/k RMS) from a `stats_pass` result, as
    `qknorm inspect` prints them and writes them as JSON."""
    types = model.config.resolved_layer_types()
    return [
        {"layer": i, "type": "sliding" if t.startswith("sliding") else "full",
         "max_attn_logit": stats.attn_logit_per_layer[i], "logit_bound": stats.attn_bound_per_layer[i],
         "q_rms": stats.q_rms[i], "k_rms": stats.k_rms[i]}
        for i, t in enumerate(types)
    ]
