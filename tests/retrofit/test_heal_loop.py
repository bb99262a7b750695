"""Healing runs through the training loop (train/loop.py with its distillation `Objective`): the same updates as a
plain AdamW loop written out here (the reference), a divergence stopped as training stops it, and SIGTERM finishing
the step in flight and stopping cleanly."""
import copy
import math
import os
import signal

import numpy as np
import pytest
import torch

import qknorm
from qknorm.data.batcher import Batcher
from qknorm.retrofit.heal import HealDiverged, HealStopped, heal
from qknorm.retrofit.insert import insert_qk_norm, set_gains
from qknorm.retrofit.measure import kl_per_token
from qknorm.train.config import TrainConfig
from qknorm.train.optim import lr_at

torch.set_num_threads(1)


def _setup():
    """A tiny original and its retrofit with gains 3 (far from the original's attention: healing has work)."""
    torch.manual_seed(0)
    original = qknorm.TransformerLM(qknorm.get_config("llama", "debug").replace(d_model=32, n_layers=2, n_heads=2,
                                                                                 n_kv_heads=1, d_ff=64)).eval()
    original.requires_grad_(False)
    tokens = np.random.default_rng(0).integers(0, 256, 4096).astype(np.int64)
    model = insert_qk_norm(original, "head", share=True)
    set_gains(model, [(torch.full((16,), 3.0), torch.full((16,), 3.0))] * 2)
    return original, model, tokens


def _reference(model, original, tokens, cfg):
    """Healing by hand: AdamW (no weight decay), the loop's warmup + cosine, clipping, the KL to the original."""
    model = copy.deepcopy(model)  # its own weights
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                            weight_decay=0.0)
    batcher = Batcher(tokens, batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=cfg.seed)
    losses = []
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        x, _ = batcher.batch(step)
        with torch.no_grad():
            target = original(x)
        loss = kl_per_token(target, model(x)).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        losses.append(float(loss.detach()))
    return model, losses


def test_healing_through_the_loop_makes_the_updates_a_plain_adamw_loop_makes():
    original, model, tokens = _setup()
    cfg = TrainConfig(steps=6, lr=1e-3, warmup_steps=1, batch_size=4, seq_len=16, device="cpu", progress=False)
    before = [p.clone() for p in model.parameters()]
    healed, r = heal(model, original, tokens, cfg, objective="distill", evaluate=lambda m: (0.0, 0.0), eval_at=())
    want, losses = _reference(model, original, tokens, cfg)
    assert [s.loss for s in r.steps] == pytest.approx(losses, rel=1e-5, abs=1e-9)
    assert losses[-1] < losses[0]  # the KL to the original comes down
    for (name, p), q in zip(healed.named_parameters(), want.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), name
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))  # the model given: untouched
    assert not any(p.requires_grad for p in original.parameters())


def test_the_curve_is_measured_after_the_steps_asked_for_on_the_model_being_healed():
    original, model, tokens = _setup()
    cfg = TrainConfig(steps=5, lr=1e-3, warmup_steps=1, batch_size=4, seq_len=16, device="cpu", progress=False)
    x = torch.from_numpy(tokens[:64].reshape(4, 16))

    def evaluate(m):
        with torch.no_grad():
            return float(kl_per_token(original(x), m(x)).mean()), 0.0

    healed, r = heal(model, original, tokens, cfg, objective="distill", evaluate=evaluate, eval_at=(2, 5))
    assert [e.step for e in r.evals] == [0, 2, 5]
    assert r.evals[-1].kl == pytest.approx(evaluate(healed)[0], rel=1e-6)  # the last point is the result's
    assert r.evals[-1].kl < r.evals[0].kl


def test_a_non_finite_gradient_stops_healing_as_training_stops_it():
    """The loop's rule: a non-finite loss or gradient norm stops at that step without its update; the verdict is
    a divergence (HealDiverged). A KL objective whose value turns NaN at step 2."""
    original, model, tokens = _setup()
    cfg = TrainConfig(steps=6, lr=1e-3, warmup_steps=1, batch_size=4, seq_len=16, device="cpu", progress=False)
    seen = []
    with pytest.raises(HealDiverged, match=r"non-finite loss at step 2"):
        heal(model, original, tokens, cfg, objective="distill", evaluate=lambda m: (0.0, 0.0), eval_at=(),
             tick=lambda n: seen.append(n) or (_poison(original) if len(seen) == 2 else None))
    assert len(seen) == 2  # steps 0 and 1 completed; step 2 was not applied


def _poison(original):
    with torch.no_grad():
        original.embed.weight.fill_(math.nan)  # the original's targets turn NaN (the healed copy has its own)


def test_sigterm_during_healing_finishes_the_step_and_stops_cleanly():
    original, model, tokens = _setup()
    cfg = TrainConfig(steps=8, lr=1e-3, warmup_steps=1, batch_size=4, seq_len=16, device="cpu", progress=False)
    old = signal.getsignal(signal.SIGTERM)
    seen = []
    with pytest.raises(HealStopped, match=r"healing stopped by SIGTERM after 3 of 8 steps") as e:
        heal(model, original, tokens, cfg, objective="distill", evaluate=lambda m: (0.0, 0.0), eval_at=(8,),
             tick=lambda n: seen.append(n) or (os.kill(os.getpid(), signal.SIGTERM) if len(seen) == 3 else None))
    assert e.value.reason.exit_code == 128 + signal.SIGTERM and e.value.steps_done == 3
    assert len(seen) == 3 and signal.getsignal(signal.SIGTERM) is old  # the handler given back


def test_the_curve_points_cost_no_more_than_the_healing():
    """One evaluation of the default 16,384 held-out tokens costs about 4 healing steps of 8 x 128 (eval_interval):
    10 steps get the last point alone, 100 a point every 10; an explicit eval_every is kept as asked."""
    from qknorm.retrofit.config import RetrofitConfig

    assert RetrofitConfig(heal_steps=10).eval_steps == (10,)
    assert RetrofitConfig(heal_steps=100).eval_steps == tuple(range(10, 101, 10))
    assert RetrofitConfig(heal_steps=10, eval_every=4).eval_steps == (4, 8, 10)
    assert RetrofitConfig(heal_steps=0).eval_steps == ()
