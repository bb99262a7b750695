"""The two-phase full-width QK-RMSNorm + RoPE (qknorm.ops.qk_norm_rope_tp): torch path and Triton kernels
(interpreted on CPU), forward and every gradient incl. the gains, against the float64 HF-style oracle.

* Simulated groups in one process: the heads (and gain slices) are split into N shards, phase 1 runs per
  shard, the statistics are summed (the all-reduce), phase 2 runs per shard; the shards' outputs and gradients
  concatenated must equal the full-width op on the whole tensors. Rule (flash-attn's): error <= 2 x the
  single-GPU torch op's error (same dtype, whole tensors) + atol, errors as max |diff| to float64.
* Through autograd: group_size=1 with a no-op all-reduce is qk_norm_rope(scope="full"); the all-reduce is
  called once forward and once backward, each on a (2, B*T) fp32 buffer.
* Two gloo ranks, both backends: the real thing.
"""
import pytest
import torch
from helpers.ops_inputs import hf_style_f64, make_inputs

from qknorm import ConfigError
from qknorm.ops import qk_norm_rope
from qknorm.ops.qk_norm_rope_tp import _PHASES, _Args, qk_norm_rope_tp

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

pytest.importorskip("triton")
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the Triton interpreter (tests/conftest.py)
ATOL = {torch.float32: 1e-6, torch.bfloat16: 1e-3, torch.float16: 2e-4}  # x max |ref|
NAMES = ["q_out", "k_out", "dq", "dk", "dq_weight", "dk_weight"]


def _grads_out(B, T, H, Hkv, D):
    g = torch.Generator().manual_seed(7)
    return torch.randn(B, H, T, D, generator=g), torch.randn(B, Hkv, T, D, generator=g)


def _autograd(fn, q, k, qw, kw, cos, sin, gq, gk, **kw_):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, qw, kw)]
    qo, ko = fn(*leaves, cos, sin, **kw_)
    torch.autograd.backward((qo, ko), (gq.to(qo.dtype), gk.to(ko.dtype)))
    return [qo.detach(), ko.detach()] + [t.grad for t in leaves]


def _f64(q, k, qw, kw, cos, sin, gq, gk, **kw_):
    leaves = [t.detach().double().requires_grad_() for t in (q, k, qw, kw)]
    qo, ko = hf_style_f64(*leaves, cos, sin, scope="full", **kw_)
    torch.autograd.backward((qo, ko), (gq.double(), gk.double()))
    return [qo.detach(), ko.detach()] + [t.grad for t in leaves]


def simulate(backend, n, q, k, qw, kw, cos, sin, gq, gk, *, eps, offset, norm_cast):
    """The four phases on n head-shards with the all-reduces done by summing; results concatenated."""
    H, Hkv, D = q.shape[2], k.shape[2], q.shape[3]
    a = _Args(eps=eps, offset=offset, norm_cast=norm_cast, width_q=H * D, width_k=Hkv * D, all_reduce=None,
              backend=backend)
    sumsq, norm_rope, dot, finish = _PHASES[backend]
    qs, ks, qws, kws = q.chunk(n, 2), k.chunk(n, 2), qw.chunk(n), kw.chunk(n)  # (B, T, H/n, D) ... (H/n*D,)
    gqs, gks = gq.to(q.dtype).chunk(n, 1), gk.to(k.dtype).chunk(n, 1)  # (B, H/n, T, D)
    s = sum(sumsq(qs[i], ks[i], a) for i in range(n))  # (2, B*T): the forward all-reduce
    outs = [norm_rope(qs[i], ks[i], qws[i], kws[i], cos, sin, s, a) for i in range(n)]
    parts = [dot(gqs[i], gks[i], qs[i], ks[i], qws[i], kws[i], cos, sin, s, a) for i in range(n)]
    p = sum(part[0] for part in parts)  # the backward all-reduce
    grads = [finish(parts[i][1], gqs[i], gks[i], qs[i], ks[i], qws[i], kws[i], cos, sin, s, p, a) for i in range(n)]
    return [torch.cat([o[0] for o in outs], 1), torch.cat([o[1] for o in outs], 1),
            torch.cat([g[0] for g in grads], 2), torch.cat([g[1] for g in grads], 2),
            torch.cat([g[2] for g in grads]), torch.cat([g[3] for g in grads])]


CASES = [  # (n shards, B, T, H, Hkv, D, dtype, offset, norm_cast)
    (2, 2, 7, 4, 2, 64, torch.float32, 0.0, "fp32"),  # OLMo 2 numerics, GQA
    (2, 2, 7, 4, 2, 128, torch.bfloat16, 0.0, "fp32"),
    (4, 1, 5, 8, 4, 80, torch.float32, 1.0, "input"),  # 4 shards, D not a power of 2, (1+w), round first
    (2, 2, 3, 6, 2, 96, torch.float16, 0.0, "input"),  # 3 heads a shard: masked head axis
    (2, 1, 17, 2, 2, 32, torch.bfloat16, 1.0, "fp32"),  # one head a shard, several token blocks
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("n,B,T,H,Hkv,D,dtype,offset,norm_cast", CASES)
def test_sharded_phases_match_the_full_width_op(backend, n, B, T, H, Hkv, D, dtype, offset, norm_cast):
    q, k, qw, kw, cos, sin = (t.to(DEV) for t in make_inputs(B, T, H, Hkv, D, dtype, "full"))
    gq, gk = (t.to(DEV) for t in _grads_out(B, T, H, Hkv, D))
    kw_ = dict(eps=1e-6, offset=offset, norm_cast=norm_cast)
    got = simulate(backend, n, q, k, qw, kw, cos, sin, gq, gk, **kw_)
    eager = _autograd(qk_norm_rope, q, k, qw, kw, cos, sin, gq, gk, scope="full", backend="torch", **kw_)
    ref = _f64(q, k, qw, kw, cos, sin, gq, gk, round_to=dtype, **kw_)
    for name, a, e, r in zip(NAMES, got, eager, ref):
        assert a.dtype == e.dtype and a.shape == e.shape, name
        err, err_eager = (a.double() - r).abs().max().item(), (e.double() - r).abs().max().item()
        atol = ATOL[a.dtype] * r.abs().max().item()
        assert err <= 2 * err_eager + atol, f"{name}: {backend} {err:.3g} > 2 x eager {err_eager:.3g} + {atol:.3g}"


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_one_rank_is_the_full_width_op_and_all_reduce_runs_once_each_way(backend):
    B, T, H, Hkv, D = 2, 5, 4, 2, 64
    q, k, qw, kw, cos, sin = (t.to(DEV) for t in make_inputs(B, T, H, Hkv, D, torch.float32, "full"))
    gq, gk = (t.to(DEV) for t in _grads_out(B, T, H, Hkv, D))
    calls = []
    got = _autograd(qk_norm_rope_tp, q, k, qw, kw, cos, sin, gq, gk, all_reduce=lambda t: calls.append(t.shape),
                    group_size=1, backend=backend)
    want = _autograd(qk_norm_rope, q, k, qw, kw, cos, sin, gq, gk, scope="full", backend=backend)
    for name, a, b in zip(NAMES, got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert calls == [(2, B * T), (2, B * T)]


def test_float64_torch_path_is_exact():
    q, k, qw, kw, cos, sin = make_inputs(2, 5, 4, 2, 32, torch.float64, "full", wdtype=torch.float64)
    gq, gk = _grads_out(2, 5, 4, 2, 32)
    got = simulate("torch", 2, q, k, qw, kw, cos, sin, gq, gk, eps=1e-6, offset=0.0, norm_cast="fp32")
    for name, a, r in zip(NAMES, got, _f64(q, k, qw, kw, cos, sin, gq, gk, eps=1e-6)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12, msg=name)


def _two_ranks(rank, backend, q, k, qw, kw, cos, sin, gq, gk):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    sl = lambda t, dim: t.chunk(2, dim)[rank]  # noqa: E731  this rank's heads

    def all_reduce(t):
        dist.all_reduce(t)

    return _autograd(qk_norm_rope_tp, sl(q, 2), sl(k, 2), sl(qw, 0), sl(kw, 0), cos, sin, sl(gq, 1), sl(gk, 1),
                     all_reduce=all_reduce, group_size=2, backend=backend, norm_cast="input", offset=1.0)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    torch.cuda.is_available(), reason="forked CPU ranks run Triton only in the interpreter, which is off when a GPU "
                                      "is present; the simulated-shard tests above run the compiled kernels"))])
def test_two_gloo_ranks_match_the_full_width_op(backend):
    from helpers.ranks import run_ranks

    q, k, qw, kw, cos, sin = make_inputs(2, 6, 4, 2, 64, torch.float32, "full")
    gq, gk = _grads_out(2, 6, 4, 2, 64)
    r0, r1 = run_ranks(_two_ranks, backend, q, k, qw, kw, cos, sin, gq, gk)
    got = [torch.cat((a, b), dim) for a, b, dim in zip(r0, r1, (1, 1, 2, 2, 0, 0))]
    want = _autograd(qk_norm_rope, q, k, qw, kw, cos, sin, gq, gk, scope="full", backend="torch", norm_cast="input",
                     offset=1.0)
    for name, a, b in zip(NAMES, got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


def test_bad_arguments_name_themselves():
    q, k, qw, kw, cos, sin = make_inputs(1, 3, 4, 2, 32, torch.float32, "full")
    ok = dict(all_reduce=lambda t: None, group_size=2)
    with pytest.raises(ConfigError, match="q_weight and k_weight must be tensors"):
        qk_norm_rope_tp(q, k, None, None, cos, sin, **ok)
    with pytest.raises(ConfigError, match=r"group_size=0 must be an integer >= 1"):
        qk_norm_rope_tp(q, k, qw, kw, cos, sin, all_reduce=ok["all_reduce"], group_size=0)
    with pytest.raises(ConfigError, match="all_reduce must be callable"):
        qk_norm_rope_tp(q, k, qw, kw, cos, sin, all_reduce=None, group_size=2)
    with pytest.raises(ConfigError, match=r"q_weight must be \(128,\)"):  # the local slice, not the full width
        qk_norm_rope_tp(q, k, torch.ones(256), kw, cos, sin, **ok)
    with pytest.raises(ConfigError, match="norm_cast='bf16' is not allowed"):
        qk_norm_rope_tp(q, k, qw, kw, cos, sin, norm_cast="bf16", **ok)
