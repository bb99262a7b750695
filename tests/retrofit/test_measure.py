"""The held-out measures are what the report says: next-token KL(original || model) in nats per token (checked
against torch.distributions in float64) and the mean cross-entropy."""
import pytest
import torch
from torch.distributions import Categorical, kl_divergence

import qknorm
from qknorm.retrofit.measure import Reference, batch_rows, kl_per_token

torch.set_num_threads(1)


def test_next_token_kl_and_val_loss_against_torch_distributions():
    torch.manual_seed(0)
    a = qknorm.TransformerLM(qknorm.get_config("llama", "debug")).eval()
    b = qknorm.TransformerLM(qknorm.get_config("llama", "debug")).eval()
    batches = [(torch.randint(0, 256, (2, 12)), torch.randint(0, 256, (2, 12))) for _ in range(3)]
    with torch.no_grad():
        kls, ces = [], []
        for x, y in batches:
            la, lb = a(x).double(), b(x).double()
            kls.append(kl_divergence(Categorical(logits=la), Categorical(logits=lb)).flatten())
            ces.append(-Categorical(logits=lb).log_prob(y).flatten())
    x, y = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    ref = Reference.build(a, x, y, rows=2)  # the original once: its hidden states kept, its head rerun per batch
    assert ref.loss is None  # no LM head in the reference pass: the original's loss comes with the first measure
    # two models in one pass (the original's head once for both): each gets its own numbers, the original 0
    (kl, loss), (kl_a, loss_a) = ref.measure_all([b, a])
    assert kl_a == pytest.approx(0.0, abs=1e-6) and loss_a == pytest.approx(float(
        -Categorical(logits=a(x).detach().double()).log_prob(y).mean()), rel=1e-5)
    ref.loss = None
    assert ref.measure(b) == pytest.approx((kl, loss), rel=1e-6)
    assert kl == pytest.approx(float(torch.cat(kls).mean()), rel=1e-5)
    assert loss == pytest.approx(float(torch.cat(ces).mean()), rel=1e-5)
    own = -Categorical(logits=a(x).detach().double()).log_prob(y).mean()
    assert ref.loss == pytest.approx(float(own), rel=1e-5)
    assert ref.measure(a)[0] == pytest.approx(0.0, abs=1e-6)
    # batched by a memory budget: another batching gives the same numbers (sums in another order)
    kl1, loss1 = Reference.build(a, x, y, rows=4).measure(b)
    assert kl1 == pytest.approx(kl, rel=1e-5) and loss1 == pytest.approx(loss, rel=1e-5)


def test_the_evaluation_batch_follows_the_memory_budget():
    """The logits dominate a big-vocabulary model's evaluation: at 49k tokens of vocabulary a 128-token window
    takes ~50 MB of the two models' logits, so a 512 MiB budget holds about ten windows; a byte-level model's
    hold many."""
    big = qknorm.TransformerLM(qknorm.get_config("llama", "debug", vocab_size=49152), device="meta")
    small = qknorm.TransformerLM(qknorm.get_config("llama", "debug"), device="meta")
    rows = batch_rows(big, 128, budget=512 << 20)
    assert 1 <= rows <= 10
    assert 2 * 49152 * 4 * 128 * rows <= 512 << 20
    assert batch_rows(small, 128, budget=512 << 20) > 20 * rows
    assert batch_rows(big, 128, budget=1) == 1


@pytest.mark.parametrize("grad", [False, True])
def test_kl_per_token_chunked_and_differentiable_against_float64(grad):
    """kl_per_token works a few positions at a time without autograd (13 positions: chunks of KL_CHUNK and a
    remainder) and on whole tensors with it; both equal torch.distributions' KL in float64."""
    torch.manual_seed(1)
    t, s = 3 * torch.randn(13, 300), 3 * torch.randn(13, 300)
    want = kl_divergence(Categorical(logits=t.double()), Categorical(logits=s.double()))
    with torch.set_grad_enabled(grad):
        got = kl_per_token(t.view(1, 13, 300), s.view(1, 13, 300).requires_grad_(grad))
    assert got.shape == (1, 13)
    assert torch.allclose(got.double().flatten(), want, rtol=1e-5, atol=1e-6)
