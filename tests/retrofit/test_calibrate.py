"""The calibration objective is the attention KL it claims to be (checked against a float64 reference written
independently: RoPE as complex rotation, softmax and KL by their definitions), and the fit finds the exact
gains where they exist."""
import pytest
import torch

import qknorm
from qknorm.retrofit.calibrate import capture_qk, fit_layer
from qknorm.retrofit.insert import insert_qk_norm

torch.set_num_threads(1)


def _rope64(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x (B, T, n, D) float64 rotated by position: pairs (i, i + D/2) as complex numbers times e^{i t w_i}."""
    B, T, n, D = x.shape
    w = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # (D/2,)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * w  # (T, D/2)
    z = torch.complex(x[..., : D // 2], x[..., D // 2:]) * torch.polar(torch.ones_like(angle), angle)[None, :, None]
    return torch.cat([z.real, z.imag], dim=-1)


def _attention64(q, k, scale, theta, gq=None, gk=None, eps=0.0):
    """Causal attention probabilities (B, H, T, T) in float64; RMSNorm with gains first when given."""
    q, k = q.double(), k.double()
    if gq is not None:
        q = gq.double() * q / (q.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        k = gk.double() * k / (k.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    q, k = _rope64(q, theta), _rope64(k, theta)
    groups = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(groups, dim=2)
    s = torch.einsum("bthd,bshd->bhts", q, k) * scale
    T = q.shape[1]
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    e = (s - s.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True)


def _mean_kl64(p, r):
    term = torch.where(p > 0, p * (p.log() - r.log()), torch.zeros((), dtype=p.dtype))
    return float(term.sum(-1).mean())


def test_objective_equals_a_float64_reference():
    torch.manual_seed(0)
    src = qknorm.TransformerLM(qknorm.get_config("llama", "debug", rope_theta=1e4)).eval()
    with torch.no_grad():
        for layer in src.layers:  # bigger projections: attention far from uniform, so gains matter
            layer.attn.q_proj.weight.mul_(6.0)
            layer.attn.k_proj.weight.mul_(6.0)
    new = insert_qk_norm(src, "head")
    ids = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(1))
    (q, k), = capture_qk(src, ids, [1])
    fit = fit_layer(new, 1, q, k, steps=0)
    c = src.config
    orig = _attention64(q, k, c.head_dim ** -0.5, 1e4)
    ones = torch.ones(c.head_dim)
    naive = _attention64(q, k, c.head_dim ** -0.5, 1e4, ones, ones, eps=c.norm_eps)
    assert fit.kl_naive == pytest.approx(_mean_kl64(orig, naive), rel=1e-4)
    # steps=0: the rms-matched gains, the mean RMS of q and of k over tokens and heads
    rq, rk = q.double().pow(2).mean(-1).sqrt().mean(), k.double().pow(2).mean(-1).sqrt().mean()
    assert torch.allclose(fit.q_scale.double(), rq.expand(c.head_dim), rtol=1e-5)
    assert torch.allclose(fit.k_scale.double(), rk.expand(c.head_dim), rtol=1e-5)
    matched = _attention64(q, k, c.head_dim ** -0.5, 1e4, fit.q_scale, fit.k_scale, eps=c.norm_eps)
    assert fit.kl_rms_matched == pytest.approx(_mean_kl64(orig, matched), rel=1e-4)
    assert fit.kl_naive > 0.01 and fit.kl_rms_matched < fit.kl_naive


@pytest.mark.parametrize("scope", ["head", "full"])
def test_the_fit_finds_exact_gains_where_they_exist(scope):
    """q and k with the same RMS for every token (per head, or over the whole width): QK-norm with the right gains
    reproduces the original attention exactly; gains 1 do not."""
    torch.manual_seed(0)
    new = insert_qk_norm(qknorm.TransformerLM(qknorm.get_config("llama", "debug")), scope)
    c = new.config
    dims = (-1,) if scope == "head" else (-2, -1)

    def constant_rms(shape, value):
        x = torch.randn(shape)
        return value * x / x.pow(2).mean(dims, keepdim=True).sqrt()

    q = constant_rms((4, 20, c.n_heads, c.head_dim), 3.0)
    k = constant_rms((4, 20, c.n_kv_heads, c.head_dim), 2.5)
    fit = fit_layer(new, 0, q, k, steps=20)
    assert fit.kl_naive > 1e-2
    assert fit.kl_fitted < 1e-6 * fit.kl_naive
    prod = (fit.q_scale.view(-1, c.head_dim).mean(0) * fit.k_scale.view(-1, c.head_dim).mean(0))
    assert torch.allclose(prod, torch.full_like(prod, 7.5), rtol=1e-3)


def test_the_chunked_objective_fits_as_the_whole_batch_does(monkeypatch):
    """The path a real-size model takes (issue 26: a 135M llama crashed here with "backward through the graph a
    second time"): the objective split into chunks of sequences, its gradient accumulated chunk by chunk. Forced on
    a small model, it must give the KLs and the fitted gains of the one-chunk objective."""
    import qknorm.retrofit.calibrate as cal

    torch.manual_seed(0)
    new = insert_qk_norm(qknorm.TransformerLM(qknorm.get_config("llama", "debug")), "head")
    c = new.config
    # per-dimension scales the gains can learn (rms-matched scalar gains cannot): the fit has somewhere to go
    spread = torch.linspace(0.3, 3.0, c.head_dim)
    q = torch.randn(6, 16, c.n_heads, c.head_dim) * spread
    k = torch.randn(6, 16, c.n_kv_heads, c.head_dim) * spread.flip(0)
    whole = fit_layer(new, 0, q, k, steps=5)
    monkeypatch.setattr(cal, "_CHUNK_SCORES", c.n_heads * 16 * 16 * 2)  # two sequences a chunk: three chunks
    assert len(cal._chunks(q, new.layers[0].attn)) == 3
    chunked = fit_layer(new, 0, q, k, steps=5)
    assert chunked.kl_fitted < chunked.kl_rms_matched  # the fit moved, by the accumulated gradient
    for a, b in ((whole.kl_naive, chunked.kl_naive), (whole.kl_rms_matched, chunked.kl_rms_matched),
                 (whole.kl_fitted, chunked.kl_fitted)):
        assert b == pytest.approx(a, rel=1e-4)
    assert torch.allclose(chunked.q_scale, whole.q_scale, rtol=1e-3)
    assert torch.allclose(chunked.k_scale, whole.k_scale, rtol=1e-3)


def test_the_fit_gives_up_only_when_it_makes_no_headway():
    """A fit that moves runs every step; one whose first FIT_PATIENCE steps stay at the rms-matched KL (here: a
    step size too small to move) stops there, with the rms-matched gains."""
    import qknorm.retrofit.calibrate as cal

    torch.manual_seed(0)
    new = insert_qk_norm(qknorm.TransformerLM(qknorm.get_config("llama", "debug")), "head")
    c = new.config
    spread = torch.linspace(0.3, 3.0, c.head_dim)
    q = torch.randn(4, 16, c.n_heads, c.head_dim) * spread
    k = torch.randn(4, 16, c.n_kv_heads, c.head_dim) * spread.flip(0)
    moving = fit_layer(new, 0, q, k, steps=40)
    assert moving.steps == 40 and moving.kl_fitted < 0.95 * moving.kl_rms_matched
    stuck = fit_layer(new, 0, q, k, steps=40, lr=1e-7)
    assert stuck.steps == cal.FIT_PATIENCE + 1
    assert stuck.kl_fitted == pytest.approx(stuck.kl_rms_matched, rel=1e-4)
    assert fit_layer(new, 0, q, k, steps=40, lr=1e-7, tol=0.0).steps == 40
