"""How far a retrofitted model is from the original, on fixed windows of tokens.

    ref = Reference.build(original, x, y)      # one pass of the original: its final hidden states, kept
    kl, loss = ref.measure(model)              # one pass of the model: next-token KL to the original and loss

KL: mean over every position of KL(P_orig(next) || P_model(next)), nats per token (0 = the same next-token
distributions): what the model lost of the original's predictions. Loss: mean cross-entropy of the true next
token, nats per token. Both in fp32 without gradients over the same windows, so differences between models are
paired.

The original's next-token distributions are computed once and streamed: its last hidden states (N, T, d_model)
are kept (16k tokens of a 576-wide model: 38 MB, where the logits would take 3.2 GB at a 49k vocabulary) and
only its LM head is run again, batch by batch, when a model is measured (the original's own loss is taken from
those logits at the first measurement, so building the reference runs no LM head). The windows go through in
batches sized by a memory budget (`batch_rows`): the two models' logits, not the model, set the size; the KL
itself runs over KL_CHUNK positions at a time (its log-softmaxes never exist for a whole batch: on a 49k
vocabulary that halved its cost, 0.11 vs 0.24 CPU-s per 384 positions, as the chunk's tensors stay in cache).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..model import TransformerLM

__all__ = ["kl_per_token", "batch_rows", "Reference", "EVAL_BYTES"]

EVAL_BYTES = 512 << 20  # transient memory of one evaluation batch (logits, softmaxes, activations)


KL_CHUNK = 8  # positions per step of kl_per_token: its vocabulary-wide temporaries stay in cache


def kl_per_token(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) per position: (..., V) -> (...), in fp32, summed term by term
    (sum p log p - sum p log q would cancel in fp32). Differentiable in both (healing's distillation loss)."""
    t, s = teacher_logits.float(), student_logits.float()
    if torch.is_grad_enabled() and (t.requires_grad or s.requires_grad):
        lt = F.log_softmax(t, dim=-1)
        return (lt.exp() * (lt - F.log_softmax(s, dim=-1))).sum(-1)
    shape, v = t.shape[:-1], t.shape[-1]
    t, s = t.reshape(-1, v), s.reshape(-1, v)
    out = torch.empty(t.shape[0], dtype=torch.float32, device=t.device)
    for i in range(0, t.shape[0], KL_CHUNK):  # (c, V) at a time, in place where it can be
        tc, sc = t[i:i + KL_CHUNK], s[i:i + KL_CHUNK]
        d = F.log_softmax(tc, dim=-1).sub_(F.log_softmax(sc, dim=-1))  # log p - log q
        out[i:i + KL_CHUNK] = torch.softmax(tc, dim=-1).mul_(d).sum(-1)
    return out.view(shape)


def batch_rows(model: TransformerLM, seq_len: int, budget: int = EVAL_BYTES) -> int:
    """Windows of `seq_len` per evaluation batch so that its transient fp32 tensors stay near `budget` bytes:
    per token, two vocabulary-wide tensors (the two models' logits; the KL works on a few positions at a time)
    and the activations of one block (residual, q/k/v, MLP); per window the attention scores of one layer."""
    c = model.config
    per_token = 4 * (2 * c.vocab_size + 8 * c.d_model + 3 * c.d_ff + 2 * (c.n_heads + c.n_kv_heads) * c.head_dim)
    per_window = seq_len * per_token + 4 * 3 * c.n_heads * seq_len * seq_len
    return max(1, budget // per_window)


Tick = Optional[Callable[[int], None]]  # told the windows of each batch as it is done


@dataclasses.dataclass
class Reference:
    """The original's view of fixed windows: inputs, targets (optional), and its final hidden states."""

    original: TransformerLM
    x: torch.Tensor  # (N, T) input ids
    y: Optional[torch.Tensor]  # (N, T) next-token ids, or None (no loss)
    hidden: torch.Tensor  # (N, T, d_model) the original's last hidden states, after the final norm
    rows: int  # windows per batch
    loss: Optional[float] = None  # the original's own mean cross-entropy on y: known after the first `measure`

    @classmethod
    @torch.no_grad()
    def build(cls, original: TransformerLM, x: torch.Tensor, y: Optional[torch.Tensor] = None, *,
              rows: Optional[int] = None, tick: Tick = None,
              hook: Optional[Callable[[slice], None]] = None) -> "Reference":
        """One pass of `original`'s blocks over x (no LM head); `hook(sl)` after each batch (calibration reads
        what hooks captured)."""
        rows = rows or batch_rows(original, x.shape[1])
        hidden = torch.empty(*x.shape, original.config.d_model, dtype=torch.float32, device=x.device)
        for sl in _slices(x.shape[0], rows):
            hidden[sl] = original.hidden_states(x[sl]).float()  # (b, T, d)
            if hook is not None:
                hook(sl)
            if tick is not None:
                tick(sl.stop - sl.start)
        return cls(original, x, y, hidden, rows)

    def first(self, n: int) -> "Reference":
        """The reference on the first `n` windows alone (the same hidden states, not recomputed)."""
        n = min(n, self.windows)
        return Reference(self.original, self.x[:n], None if self.y is None else self.y[:n], self.hidden[:n],
                         self.rows)

    @property
    def windows(self) -> int:
        return self.x.shape[0]

    def measure(self, model: TransformerLM, tick: Tick = None) -> Tuple[float, Optional[float]]:
        """(next-token KL to the original, the model's loss or None without targets), in one pass of `model`."""
        return self.measure_all([model], tick)[0]

    @torch.no_grad()
    def measure_all(self, models: Sequence[TransformerLM], tick: Tick = None) -> List[Tuple[float, Optional[float]]]:
        """`measure` of each of `models`, in one pass over the windows: the original's LM head runs once per batch
        for all of them (on a 49k vocabulary the head is ~14 CPU-s of a 16k-token measurement at 135M)."""
        kl, ce = [0.0] * len(models), [0.0] * len(models)
        own, n = 0.0, 0
        for sl in _slices(self.windows, self.rows):
            teacher = self.original.logits(self.hidden[sl])  # (b, T, V)
            if self.y is not None and self.loss is None:
                own += _ce_sum(teacher, self.y[sl])
            for i, model in enumerate(models):
                logits = model(self.x[sl])  # (b, T, V): one student's at a time beside the teacher's
                kl[i] += float(kl_per_token(teacher, logits).double().sum())
                if self.y is not None:
                    ce[i] += _ce_sum(logits, self.y[sl])
                del logits
            n += self.x[sl].numel()
            del teacher
            if tick is not None:
                tick(sl.stop - sl.start)
        if self.y is not None and self.loss is None:
            self.loss = own / n
        return [(k / n, (c / n if self.y is not None else None)) for k, c in zip(kl, ce)]


def _slices(n: int, size: int):
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def _ce_sum(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum"))
