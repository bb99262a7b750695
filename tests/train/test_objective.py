"""train(objective=...): a loss other than cross-entropy through the whole loop (train/objective.py). The next-token
cross-entropy written out by hand as an objective makes exactly the run the loop's own loss makes; the ln(vocab)
ceiling of the divergence rule applies only to an objective that says it is a cross-entropy; z-loss and several
processes are refused."""
import pytest
import torch
import torch.nn.functional as F

import qknorm
from qknorm.data.tokens import load_tokens
from qknorm.errors import ConfigError
from qknorm.train import TrainConfig
from qknorm.train.loop import train
from qknorm.train.objective import Objective

torch.set_num_threads(1)

MODEL = qknorm.get_config("llama", "debug").replace(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64)


@pytest.fixture(scope="module")
def data():
    return load_tokens(max_bytes=50_000)


def _cfg(**kw):
    return TrainConfig(**{**dict(steps=4, warmup_steps=1, lr=1e-2, batch_size=4, seq_len=16, stats_every=0,
                                 eval_batches=1, progress=False), **kw})


def _ce(model, x, y):
    return F.cross_entropy(model(x).float().flatten(0, 1), y.flatten())


def test_cross_entropy_as_an_objective_is_the_loops_own_run(data):
    seen = []
    own = train(MODEL, _cfg(), data)
    hooked = train(MODEL, _cfg(), data, objective=Objective("ce", lambda m, x, y: seen.append(1) or _ce(m, x, y),
                                                            uniform_ceiling=True))
    assert len(seen) == 4  # called once per step (one micro-batch)
    assert [r.loss for r in hooked.history] == [r.loss for r in own.history]
    for (name, p), q in zip(own.model.named_parameters(), hooked.model.parameters()):
        assert torch.equal(p, q), name


def test_the_ln_vocab_ceiling_applies_only_to_a_cross_entropy_objective(data):
    """5.0 at the first step, then 6.0 > ln(256) = 5.55: above the ceiling for a cross-entropy (a divergence), no
    clear rise for anything else (the first window's own spread covers it)."""
    def values():
        n = []
        return lambda m, x, y: _ce(m, x, y) * 0 + (5.0 if not n.append(1) and len(n) == 1 else 6.0)

    cfg = _cfg(steps=12, lr=1e-4)
    ce_like = train(MODEL, cfg, data, objective=Objective("ce-like", values(), uniform_ceiling=True)).verdict
    assert ce_like.diverged and ce_like.ln_vocab is not None
    kl_like = train(MODEL, cfg, data, objective=Objective("kl-like", values())).verdict
    assert not kl_like.diverged and kl_like.ln_vocab is None


def test_an_objective_takes_no_z_loss(data):
    with pytest.raises(ConfigError, match="objective='kl' replaces the cross-entropy: it takes no z_loss"):
        train(MODEL, _cfg(z_loss=1e-4), data, objective=Objective("kl", _ce))
