"""Healing uses the training loop's divergence rule (metrics.judge_divergence): a non-finite value stops it at once,
a loss that ends above ln(vocab) after the last step is a divergence too (HealDiverged, with the numbers), and a
healing that only wobbles finishes with its verdict recorded."""
import copy

import numpy as np
import pytest
import torch

import qknorm
from qknorm.retrofit.heal import HealDiverged, heal
from qknorm.train.config import TrainConfig

torch.set_num_threads(1)


def _setup():
    torch.manual_seed(0)
    original = qknorm.TransformerLM(qknorm.get_config("llama", "debug").replace(d_model=32, n_layers=1, n_heads=2,
                                                                                 n_kv_heads=1, d_ff=64))
    tokens = np.random.default_rng(0).integers(0, 256, 4096).astype(np.int64)
    return original, copy.deepcopy(original), tokens


def _heal(lr: float, objective: str = "lm"):
    original, model, tokens = _setup()
    cfg = TrainConfig(steps=12, lr=lr, warmup_steps=1, batch_size=4, seq_len=16, device="cpu", progress=False)
    return heal(model, original, tokens, cfg, objective=objective, evaluate=lambda m: (0.0, 0.0), eval_at=())[1]


def test_a_non_finite_healing_loss_is_a_divergence_at_its_step():
    with pytest.raises(HealDiverged, match=r"healing diverged: non-finite loss at step 1 \(peak lr=1e\+30\)"):
        _heal(1e30)


def test_a_healing_loss_above_ln_vocab_is_a_divergence_with_its_numbers():
    with pytest.raises(HealDiverged, match=r"above the uniform-prediction loss ln\(256\) = 5\.545") as e:
        _heal(3.0)
    assert "ceiling" in str(e.value)


@pytest.mark.parametrize("objective", ["lm", "distill"])
def test_a_calm_healing_records_its_verdict(objective):
    r = _heal(1e-4, objective)
    assert r.verdict is not None and not r.verdict.diverged and r.verdict.n_steps == 12
    assert (r.verdict.ln_vocab is not None) is (objective == "lm")  # a KL has no uniform-prediction ceiling
