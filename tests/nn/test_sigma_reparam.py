"""sigmaReparam linears: the power-iteration sigma converges to torch.linalg's spectral norm, W_hat = W at init,
u/v are persistent buffers without gradients, and the output does not depend on W's scale."""
import pytest
import torch

import qknorm
from qknorm import get_config
from qknorm.nn.sigma_reparam import SigmaReparamLinear

torch.set_num_threads(1)  # 2-core CI runs two test workers


def _random_start(lin: SigmaReparamLinear, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        lin.u.copy_(torch.nn.functional.normalize(torch.randn(lin.out_features, generator=g), dim=0))
        lin.v.copy_(torch.nn.functional.normalize(torch.randn(lin.in_features, generator=g), dim=0))


def test_sigma_estimate_converges_to_the_spectral_norm():
    torch.manual_seed(0)
    lin = SigmaReparamLinear(96, 64, bias=False)
    with torch.no_grad():  # a trained-looking matrix: a few strong directions over Gaussian noise
        U, _ = torch.linalg.qr(torch.randn(64, 64))
        V, _ = torch.linalg.qr(torch.randn(96, 96))
        s = torch.cat([torch.tensor([3.0, 2.4, 2.0]), torch.rand(61) * 0.5])
        lin.weight.copy_(U @ torch.diag(s) @ V[:, :64].T)
    true = torch.linalg.matrix_norm(lin.weight.detach(), ord=2).item()
    _random_start(lin)
    x = torch.randn(3, 96)
    estimates = []
    for _ in range(60):  # one power-iteration step per training forward
        lin(x)
        estimates.append(lin.sigma().item())
    assert all(e <= true * (1 + 1e-6) for e in estimates)  # u.(Wv) with unit u, v never exceeds sigma
    assert abs(estimates[0] - true) > 1e-2 * true  # it really started away from sigma ...
    assert estimates[-1] == pytest.approx(true, rel=1e-5)  # ... and converged (gap 2.4/3: 0.8^(2*60) ~ 2e-12)


def test_sigma_estimate_tracks_a_gaussian_matrix_too():
    torch.manual_seed(1)
    lin = SigmaReparamLinear(128, 128, bias=False)  # Gaussian init: top singular values close together
    true = torch.linalg.matrix_norm(lin.weight.detach(), ord=2).item()
    _random_start(lin)
    x = torch.randn(2, 128)
    for _ in range(300):
        lin(x)
    assert true * 0.98 <= lin.sigma().item() <= true * (1 + 1e-6)


def test_no_iteration_in_eval_or_no_grad_and_no_gradient_to_u_v():
    lin = SigmaReparamLinear(16, 12)
    _random_start(lin)
    u0 = lin.u.clone()
    with torch.no_grad():
        lin(torch.randn(2, 16))
    lin.eval()
    lin(torch.randn(2, 16))
    assert torch.equal(lin.u, u0)
    lin.train()
    lin(torch.randn(2, 16)).sum().backward()
    assert not torch.equal(lin.u, u0)  # one step in a training forward
    assert lin.u.grad is None and not lin.u.requires_grad
    assert lin.gamma.grad is not None and lin.weight.grad is not None
    assert set(lin.state_dict()) == {"weight", "bias", "gamma", "u", "v"}


def test_output_does_not_depend_on_the_scale_of_w():
    torch.manual_seed(2)
    lin = SigmaReparamLinear(20, 10).eval()
    x = torch.randn(4, 20)
    y = lin(x)
    with torch.no_grad():
        lin.weight.mul_(7.0)  # sigma(7 W) = 7 sigma(W); u, v unchanged
    torch.testing.assert_close(lin(x), y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset", ["llama", "olmo2"])
def test_w_hat_equals_w_at_init(preset):
    """gamma = sigma(W_0) and u, v = W_0's top singular vectors: the model starts as the plain one."""
    cfg = get_config(preset, "debug", attention_bias=True)
    torch.manual_seed(0)
    reparam = qknorm.TransformerLM(cfg.replace(sigma_reparam=True))
    plain = qknorm.TransformerLM(cfg)
    plain.load_state_dict({k: v for k, v in reparam.state_dict().items() if not k.endswith((".gamma", ".u", ".v"))})
    q = reparam.layers[0].attn.q_proj
    assert isinstance(q, SigmaReparamLinear) and isinstance(reparam.layers[1].mlp.down_proj, SigmaReparamLinear)
    assert q.gamma.item() == pytest.approx(torch.linalg.matrix_norm(q.weight.detach(), ord=2).item(), rel=1e-5)
    ids = torch.randint(0, 256, (2, 24))
    torch.testing.assert_close(reparam(ids), plain(ids), rtol=1e-4, atol=1e-5)  # training forward: one step taken
    assert reparam.num_params() == cfg.replace(sigma_reparam=True).num_params() == plain.num_params() + 7 * 2
