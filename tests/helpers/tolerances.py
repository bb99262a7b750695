"""Comparing the weights of two training runs that differ only in float summation order (2 ranks vs one process,
a sharded run resumed in one process), trained with AdamW in float32.

An element-wise tolerance fixed in absolute terms is a knife edge here. Adam's step is lr * m / sqrt(v): for a
weight whose gradient is itself near zero, the last-bit noise of the summation order is a large part of m and
v, and the step it takes can differ by up to ~lr, whichever CPU kernels run. Measured (torch 2.13 CPU, 6 AdamW
steps at lr 1e-2, qwen3 debug, DDP vs one process): the largest element difference was 2.7e-6 with AVX-512
kernels, 6.9e-6 with AVX2 and 2.9e-5 with the non-vectorized `default` ones (one element of 131,520), while the
whole state differed by 1.7e-6 of its norm at most. So the weights are compared as a whole, to WEIGHT_RTOL of
their norm (10x the largest measured), and element-wise to ELEMENT_LR_FRACTION of one step of the learning rate
(3.4x the largest measured): a real difference (a missed gradient reduction, a wrong shard, an optimizer
state not restored) moves the weights by whole steps, far beyond both.
"""
from __future__ import annotations

from typing import Dict

import torch

__all__ = ["WEIGHT_RTOL", "ELEMENT_LR_FRACTION", "assert_trained_weights_close"]

WEIGHT_RTOL = 2e-5
ELEMENT_LR_FRACTION = 1e-2


def assert_trained_weights_close(got: Dict[str, torch.Tensor], want: Dict[str, torch.Tensor], lr: float,
                                 msg: str = "") -> None:
    """Same names and shapes; every element within ELEMENT_LR_FRACTION * lr; the whole within WEIGHT_RTOL of the
    norm of `want`."""
    assert got.keys() == want.keys(), f"{msg}: parameter names differ: {sorted(set(got) ^ set(want))}"
    diff2 = norm2 = 0.0
    for name, b in want.items():
        a = got[name]
        assert a.shape == b.shape, f"{msg}: {name} {tuple(a.shape)} vs {tuple(b.shape)}"
        d = (a.double() - b.double())
        worst = d.abs().max().item() if d.numel() else 0.0
        assert worst <= ELEMENT_LR_FRACTION * lr, f"{msg}: {name} max |diff| {worst:.3g} > {ELEMENT_LR_FRACTION} lr"
        diff2 += float(d.square().sum())
        norm2 += float(b.double().square().sum())
    rel = (diff2 / norm2) ** 0.5
    assert rel <= WEIGHT_RTOL, f"{msg}: the weights differ by {rel:.3g} of their norm (> {WEIGHT_RTOL})"
