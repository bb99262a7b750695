"""Greedy decoding compared across two implementations without deciding on a near-tie.

Two implementations of the same model (ours vs transformers, patched vs unpatched, cached vs full) compute logits
that agree only to fp32 rounding: measured (torch 2.13 CPU; avx512, avx2 and default kernels) the incremental
(KV-cached) logits of transformers' `generate` differ from its full forward by up to 1.9e-5 at a logit scale of
7.7, a relative 2.4e-6. A greedy step whose top-2 gap is below that noise is decided by the CPU's kernels, and
every later token follows from it. So the sequences are compared token for token up to the first step the
reference did not decide by a clear margin (REL_TOL, 10x the measured noise, of the largest |logit|), and that
prefix must cover most of the generated tokens, or the comparison would mean little:

    assert_same_greedy(ours, ref, ref_logits, prompt_len)

`ref_logits`: the reference model's logits over its own output, teacher-forced in one forward,
`logits[:, prompt_len - 1:-1]` (B, n, V): position i predicts generated token i. With `eos`, the steps after a
row's first eos are decided by the eos rule (padding), not by argmax.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["REL_TOL", "decided_steps", "assert_same_greedy"]

REL_TOL = 3e-5


def decided_steps(logits: torch.Tensor, tol: float, tokens: Optional[torch.Tensor] = None,
                  eos: Optional[int] = None) -> torch.Tensor:
    """(B,): per row, how many leading steps of `logits` (B, n, V) have a top-2 gap above `tol` (steps after the
    first `eos` in `tokens` (B, n) count as decided)."""
    top = logits.float().topk(2, dim=-1).values  # (B, n, 2)
    clear = (top[..., 0] - top[..., 1]) > tol  # (B, n)
    if eos is not None and tokens is not None:
        after_eos = (tokens == eos).cumsum(dim=1) - (tokens == eos).long() > 0  # strictly after the first eos
        clear |= after_eos
    return torch.where(clear.all(dim=1), clear.shape[1], (~clear).long().argmax(dim=1))


def assert_same_greedy(ours: torch.Tensor, ref: torch.Tensor, ref_logits: torch.Tensor, prompt_len: int, *,
                       eos: Optional[int] = None, min_fraction: float = 0.75) -> None:
    """`ours` and `ref` (B, T) token ids equal, prompt and every generated token up to the reference's first
    near-tie in each row; that prefix at least `min_fraction` of the generated tokens."""
    n = ref.shape[1] - prompt_len
    assert ref_logits.shape[:2] == (ref.shape[0], n), (ref_logits.shape, ref.shape, prompt_len)
    tol = REL_TOL * float(ref_logits.abs().max())
    k = decided_steps(ref_logits, tol, ref[:, prompt_len:], eos)  # (B,)
    assert int(k.min()) >= min_fraction * n, \
        f"greedy steps decided by less than {tol:.3g} from step {k.tolist()} of {n}: logits too flat for this test"
    for row, steps in enumerate(k.tolist()):
        a, b = ours[row, :prompt_len + steps], ref[row, :prompt_len + steps]
        assert torch.equal(a, b), f"row {row}: first difference at {int((a != b).nonzero()[0])} " \
                                  f"(of {prompt_len + steps} tokens compared)"
