"""The held-out measures are what the report says: next-token KL(original || model) in nats per token (checked
against torch.distributions in float64) and the mean cross-entropy."""
import pytest
import torch
from torch.distributions import Categorical, kl_divergence

import qknorm
from qknorm.retrofit.measure import cache_logits, next_token_kl, val_loss

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
    assert next_token_kl(a, b, batches) == pytest.approx(float(torch.cat(kls).mean()), rel=1e-5)
    assert val_loss(b, batches) == pytest.approx(float(torch.cat(ces).mean()), rel=1e-5)
    assert next_token_kl(a, a, batches) == pytest.approx(0.0, abs=1e-6)
    cached = cache_logits(a, batches)  # the original's logits computed once give the same KL
    assert cached is not None and next_token_kl(a, b, batches, cached) == next_token_kl(a, b, batches)
    assert cache_logits(a, batches, max_bytes=1000) is None
