"""Choose the QK-norm gains of a retrofitted model so that every layer attends as the original did.

Without QK-norm a layer's logits are  s * R(q_t).R(k_u)  (s = query scale, R = RoPE). With it, q and k are
first replaced by  g_q * q / rms(q)  and  g_k * k / rms(k)  (per head over head_dim, or over the whole
projection width for scope "full"). Two things are lost that no choice of gains brings back: the per-token
norms rms(q_t) and rms(k_u), which scaled each logit (a query's sharpness, a key's salience), and, for scope
"head", the different scales of the heads, which share one gain vector. Gains of 1 ("naive") go further:
they pin every logit to |logit| <= s * head_dim, far from what a trained model uses.

What matters downstream is not the logits but the attention distribution over keys (softmax ignores a
per-query shift), so the gains are fitted, layer by layer, to minimise the mean KL divergence
KL(P_orig(. | t) || P_new(. | t)) over every (sequence, head, query) of the calibration tokens, where both
distributions are computed from the *original* model's q and k at that layer (the layers are fitted
independently: the inputs are the original's hidden states, which is also what the retrofitted model
should reproduce). Parameters: log g_q and log g_k (positive gains; only their product per RoPE pair and
the RMS-normalised directions matter), initialised at the mean RMS of q and of k (the one scalar that keeps
the average logit scale: "rms-matched"), then Adam on the whole calibration set, full batch, in fp32, unless
the first steps make no headway (FIT_TOL).

A per-head softmax temperature would recover the heads' scales for scope "head", but Qwen3 (the family
llama + per-head QK-norm exports to) has no such parameter, so it is not fitted; scope "full" already has a
gain per (head, dim), which includes a per-head scale.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, List, Optional, Tuple

import torch

from ..config import SLIDING, QKNormScope
from ..model import TransformerLM
from ..nn.attention import causal_mask
from ..ops.reference import qk_norm_rope_ref

__all__ = ["LayerFit", "QKCapture", "capture_qk", "fit_layer", "calibrate"]

_CHUNK_SCORES = 1 << 22  # score elements (B*H*T*T) per chunk of the objective: bounds the memory of a step
_MASKED = -1e30
# the fit gives up when its first 8 steps got nowhere: none below the starting (rms-matched) KL by 0.1% (a model
# whose attention that init already matches; stopping a fit that is moving loses: on a small trained llama a
# stall-based stop at 16 of 30 steps left a layer's KL 4% higher)
FIT_TOL, FIT_PATIENCE = 1e-3, 4


@dataclasses.dataclass(frozen=True)
class LayerFit:
    """One layer's calibration: mean attention KL (nats per query) for three choices of gains, and the fit."""

    layer: int
    kl_naive: float  # gains 1
    kl_rms_matched: float  # scalar gains = mean RMS of q and of k (the initialisation)
    kl_fitted: float  # after the fit
    q_scale: torch.Tensor  # (head_dim,) or (n_heads*head_dim,)
    k_scale: torch.Tensor  # (head_dim,) or (n_kv_heads*head_dim,)
    steps: int = 0  # Adam steps taken (fit_layer stops early once the KL stops improving)


class QKCapture:
    """Forward hooks on the q and k projections of every layer of `model`, copying them (fp32, before any norm
    and RoPE) into preallocated tensors as windows `sl` of (N, T) ids go through: `q[i]` (N, T, H, D) and
    `k[i]` (N, T, Hkv, D) for layer i. All layers in one pass of the model (`Reference.build(hook=...)`)."""

    def __init__(self, model: TransformerLM, n: int, seq_len: int, device: torch.device):
        self.model = model
        self.got: dict = {}
        self.q = [torch.empty(n, seq_len, l.attn.n_heads, l.attn.head_dim, device=device) for l in model.layers]
        self.k = [torch.empty(n, seq_len, l.attn.n_kv_heads, l.attn.head_dim, device=device) for l in model.layers]
        self.hooks: list = []

    def __enter__(self) -> "QKCapture":
        for i, layer in enumerate(self.model.layers):
            for name in ("q_proj", "k_proj"):
                self.hooks.append(getattr(layer.attn, name).register_forward_hook(
                    lambda mod, inp, out, key=(i, name): self.got.__setitem__(key, out.detach())))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks.clear()
        self.got.clear()

    def __call__(self, sl: slice) -> None:
        for i in range(len(self.q)):
            self.q[i][sl] = self.got[(i, "q_proj")].view(self.q[i][sl].shape)
            self.k[i][sl] = self.got[(i, "k_proj")].view(self.k[i][sl].shape)
        self.got.clear()


@torch.no_grad()
def capture_qk(model: TransformerLM, ids: torch.Tensor, layers: List[int]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The q and k projections (before any norm and RoPE) of `layers` on `ids`: q (B, T, H, D), k (B, T, Hkv, D)."""
    with QKCapture(model, *ids.shape, ids.device) as cap:
        model.hidden_states(ids)
        cap(slice(0, ids.shape[0]))
    return [(cap.q[i], cap.k[i]) for i in layers]


def _log_probs(q, k, attn, cos, sin, scales, scope: QKNormScope, norm) -> torch.Tensor:
    """Masked attention log-probabilities (B, H, T, T) of one layer from its pre-norm q, k (fp32)."""
    if scales is None:
        qr, kr = qk_norm_rope_ref(q, k, None, None, cos, sin, scope="none")
    else:
        qr, kr = qk_norm_rope_ref(q, k, scales[0], scales[1], cos, sin, eps=norm.eps, scope=scope, offset=0.0,
                                  norm_cast=norm.cast)
    groups = attn.n_heads // attn.n_kv_heads
    scores = qr @ kr.repeat_interleave(groups, dim=1).transpose(2, 3) * attn.scale  # (B, H, T, T)
    if attn.softcap is not None:
        scores = torch.tanh(scores / attn.softcap) * attn.softcap
    mask = causal_mask(q.shape[1], attn.window, q.device)
    # a finite fill: masked log-probabilities stay finite, so 0 * log q = 0 in the KL
    return torch.log_softmax(scores.masked_fill(~mask, _MASKED), dim=-1)


@dataclasses.dataclass(frozen=True)
class _Target:
    """The original's attention on one chunk: log-probabilities and probabilities, (B, H, T, T) each."""

    logp: torch.Tensor
    p: torch.Tensor

    @classmethod
    def of(cls, logp: torch.Tensor) -> "_Target":
        return cls(logp, logp.exp())

    def kl(self, logq: torch.Tensor) -> torch.Tensor:
        """Sum over the rows of KL(p || q), term by term (sum p log p - sum p log q would cancel in fp32)."""
        return (self.p * (self.logp - logq)).sum()


def _chunks(q: torch.Tensor, attn) -> List[slice]:
    B, T = q.shape[:2]
    per = max(1, _CHUNK_SCORES // max(1, attn.n_heads * T * T))
    return [slice(i, min(B, i + per)) for i in range(0, B, per)]


def _rms_init(x: torch.Tensor, scope: QKNormScope, size: int) -> torch.Tensor:
    dims = (-1,) if scope is QKNormScope.HEAD else (-2, -1)
    mean_rms = x.pow(2).mean(dims).sqrt().mean()
    return torch.full((size,), float(mean_rms), dtype=torch.float32, device=x.device)


@dataclasses.dataclass(frozen=True)
class _Problem:
    """One layer's fit: the original's q, k (fp32), its RoPE tables and attention, the target distributions."""

    q: torch.Tensor  # (B, T, H, D)
    k: torch.Tensor  # (B, T, Hkv, D)
    attn: torch.nn.Module
    cos: torch.Tensor
    sin: torch.Tensor
    targets: List[_Target]  # one per chunk of sequences

    @classmethod
    def build(cls, model: TransformerLM, layer: int, q: torch.Tensor, k: torch.Tensor) -> "_Problem":
        attn = model.layers[layer].attn
        rope = model.rope_local if model.config.resolved_layer_types()[layer] == SLIDING else model.rope_global
        cos, sin = rope(q.shape[1], q.device)
        q, k = q.float(), k.float()
        with torch.no_grad():
            targets = [_Target.of(_log_probs(q[sl], k[sl], attn, cos, sin, None, attn.scope, attn.q_norm))
                       for sl in _chunks(q, attn)]
        return cls(q, k, attn, cos, sin, targets)

    @property
    def rows(self) -> int:  # (sequence, head, query) rows the KL is averaged over
        return self.q.shape[0] * self.attn.n_heads * self.q.shape[1]

    def kl(self, scales: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean attention KL per row, summed chunk by chunk. When the scales need grad, each chunk's graph is
        backpropagated (and freed) into leaf copies of the scales, and their summed gradient then once through
        whatever made the scales (the graph they share: backpropagating it per chunk would run it twice)."""
        grad = any(s.requires_grad for s in scales) and torch.is_grad_enabled()
        leaves = tuple(s.detach().requires_grad_(grad) for s in scales)
        total = torch.zeros((), dtype=torch.float64)
        for sl, tgt in zip(_chunks(self.q, self.attn), self.targets):
            part = tgt.kl(_log_probs(self.q[sl], self.k[sl], self.attn, self.cos, self.sin, leaves, self.attn.scope,
                                     self.attn.q_norm)) / self.rows
            if grad:
                part.backward()
            total += part.detach().double().cpu()
        if grad:
            pairs = [(s, leaf.grad) for s, leaf in zip(scales, leaves) if s.requires_grad]
            torch.autograd.backward([s for s, _ in pairs], [g for _, g in pairs])
        return total


def fit_layer(model: TransformerLM, layer: int, q: torch.Tensor, k: torch.Tensor, *, steps: int = 30,
              lr: float = 0.1, tol: float = FIT_TOL) -> LayerFit:
    """Fit the q/k norm gains of `layer` of the retrofitted `model` to the original's q, k (module docstring).
    `steps` Adam steps, or FIT_PATIENCE + 1 when none of those went below the starting KL by a relative `tol`
    (the rms-matched gains are as good as the fit gets: more steps would cost without helping); tol=0: every
    step."""
    prob = _Problem.build(model, layer, q, k)
    attn = prob.attn
    dev = prob.q.device
    ones = (torch.ones(attn.q_norm.weight.shape, device=dev), torch.ones(attn.k_norm.weight.shape, device=dev))
    init = (_rms_init(prob.q, attn.scope, ones[0].numel()), _rms_init(prob.k, attn.scope, ones[1].numel()))
    with torch.no_grad():
        kl_naive = float(prob.kl(ones))
        kl_init = float(prob.kl(init)) if steps == 0 else math.nan  # else: the first step's value
    logs = [torch.nn.Parameter(s.log()) for s in init]  # positive gains, fitted in log space
    opt = torch.optim.Adam(logs, lr=lr)
    best = (kl_init, init)
    seen: List[float] = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        before = tuple(p.detach().exp().clone() for p in logs)
        value = float(prob.kl((logs[0].exp(), logs[1].exp())))  # the KL at `before`; gradients accumulated
        if not seen:
            kl_init, best = value, (value, before)
        elif value < best[0]:
            best = (value, before)
        seen.append(value)
        opt.step()
        if tol > 0 and len(seen) == FIT_PATIENCE + 1 and min(seen[1:]) > seen[0] * (1 - tol):
            break
    final = tuple(p.detach().exp() for p in logs)
    with torch.no_grad():
        kl_final = float(prob.kl(final)) if steps else kl_init
    chosen_kl, chosen = (kl_final, final) if kl_final <= best[0] else best
    return LayerFit(layer=layer, kl_naive=kl_naive, kl_rms_matched=kl_init, kl_fitted=chosen_kl, q_scale=chosen[0],
                    k_scale=chosen[1], steps=len(seen))


def calibrate(retrofitted: TransformerLM, captured: QKCapture, *, steps: int = 30, lr: float = 0.1,
              tick: Optional[Callable[[int], None]] = None,
              log: Optional[Callable[[str], None]] = None) -> List[LayerFit]:
    """Fit every layer's gains to the original's q, k `captured` on the calibration windows (one pass of the
    original for all layers: QKCapture). Returns the fits; the gains are not set here (insert.set_gains)."""
    fits: List[LayerFit] = []
    for i in range(len(captured.q)):
        fit = fit_layer(retrofitted, i, captured.q[i], captured.k[i], steps=steps, lr=lr)
        fits.append(fit)
        if log is not None:
            log(f"layer {i}: attention KL {_fmt(fit.kl_naive)} (gains 1) -> {_fmt(fit.kl_rms_matched)} "
                f"(rms-matched) -> {_fmt(fit.kl_fitted)} (fitted) nats per query")
        if tick is not None:
            tick(1)
    return fits


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)
