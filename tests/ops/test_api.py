"""qk_norm_rope's contract: dispatch, strides, no in-place writes, RoPE only, argument errors, the torch.library
op (opcheck, fake tensors, torch.compile without graph breaks)."""
import pytest
import torch
from helpers.ops_inputs import make_inputs

from qknorm.errors import ConfigError
from qknorm.ops import qk_norm_rope, qk_norm_rope_ref

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

triton = pytest.importorskip("triton")
BACKENDS = ["torch", "triton"]


def _args(scope="head", B=2, T=5, H=4, Hkv=2, D=64, dtype=torch.float32):
    return make_inputs(B, T, H, Hkv, D, dtype, scope)


def test_default_backend_on_cpu_is_the_reference():
    q, k, qw, kw, cos, sin = _args()
    got = qk_norm_rope(q, k, qw, kw, cos, sin)
    ref = qk_norm_rope_ref(q, k, qw, kw, cos, sin)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs_and_no_in_place_writes(backend):
    """q from a transposed (B, H, T, D) buffer, k with a head_dim stride of 2; inputs and weights untouched."""
    B, T, H, Hkv, D = 2, 5, 4, 2, 64
    _, _, qw, kw, cos, sin = _args()
    q = torch.randn(B, H, T, D).transpose(1, 2)  # (B, T, H, D), strides of (B, H, T, D)
    k = torch.randn(B, T, Hkv, 2 * D)[..., ::2]  # (B, T, Hkv, D), stride 2 along D
    q.requires_grad_()
    k.requires_grad_()
    qw, kw = qw.requires_grad_(), kw.requires_grad_()
    before = [t.detach().clone() for t in (q, k, qw, kw, cos, sin)]
    qo, ko = qk_norm_rope(q, k, qw, kw, cos, sin, backend=backend, offset=1.0)
    (qo.square().sum() + ko.sum()).backward()
    for t, b in zip((q, k, qw, kw, cos, sin), before):
        assert torch.equal(t.detach(), b)
    ref = qk_norm_rope_ref(q.detach().contiguous(), k.detach().contiguous(), qw.detach(), kw.detach(), cos, sin,
                           offset=1.0)
    torch.testing.assert_close(qo, ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ko, ref[1], rtol=1e-5, atol=1e-5)
    assert qo.is_contiguous() and ko.is_contiguous()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_rope_only_matches_between_weights_none_and_scope_none(backend):
    q, k, _, _, cos, sin = _args("none")
    a = qk_norm_rope(q, k, None, None, cos, sin, scope="none", backend=backend)
    b = qk_norm_rope(q, k, None, None, cos, sin, scope="head", backend=backend)  # no weights: RoPE only
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = q.transpose(1, 2)  # (B, H, T, D)
    assert not torch.equal(a[0], c)  # RoPE did rotate
    torch.testing.assert_close(a[0][:, :, 0], c[:, :, 0])  # position 0 is the identity


@pytest.mark.parametrize("backend", BACKENDS)
def test_scope_accepts_a_str_enum(backend):
    import enum

    class Scope(str, enum.Enum):
        FULL = "full"

    q, k, qw, kw, cos, sin = _args("full")
    a = qk_norm_rope(q, k, qw, kw, cos, sin, scope=Scope.FULL, backend=backend)
    b = qk_norm_rope_ref(q, k, qw, kw, cos, sin, scope="full")
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    q, k, qw, kw, cos, sin = _args(B=1, T=3)
    q0, k0 = q[:0].requires_grad_(), k[:0].requires_grad_()
    qw.requires_grad_()
    qo, ko = qk_norm_rope(q0, k0, qw, kw, cos, sin, backend=backend)
    assert qo.shape == (0, 4, 3, 64) and ko.shape == (0, 2, 3, 64)
    (qo.sum() + ko.sum()).backward()
    assert torch.count_nonzero(qw.grad) == 0


BAD = [  # (change to the good arguments, words the message must contain)
    (dict(scope="qk"), ["scope", "none, head, full"]),
    (dict(norm_cast="bf16"), ["norm_cast", "fp32, input"]),
    (dict(backend="cuda"), ["backend", "triton"]),
    (dict(q_weight=torch.ones(32)), ["q_weight", "(64,)"]),
    (dict(k_weight=None), ["q_weight and k_weight", "None"]),
    (dict(scope="none"), ["scope='none'", "q_weight=None"]),
    (dict(q=torch.randn(2, 5, 256)), ["4-D"]),
    (dict(k=torch.randn(2, 6, 2, 64)), ["k (2, 6, 2, 64)", "match q"]),
    (dict(q=torch.randn(2, 5, 4, 63), k=torch.randn(2, 5, 2, 63)), ["head_dim", "even"]),
    (dict(k=torch.randn(2, 5, 2, 64, dtype=torch.bfloat16)), ["dtype", "bfloat16"]),
    (dict(cos=torch.randn(6, 64)), ["cos and sin", "(T, D)=(5, 64)"]),
    (dict(eps=-1.0), ["eps", ">= 0"]),
    (dict(q="q"), ["q must be a torch.Tensor"]),
]


@pytest.mark.parametrize("change,words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_arguments_raise_config_error(change, words):
    q, k, qw, kw, cos, sin = _args()
    a = dict(q=q, k=k, q_weight=qw, k_weight=kw, cos=cos, sin=sin)
    a.update(change)
    kwargs = {n: a.pop(n) for n in ("scope", "norm_cast", "backend", "eps") if n in a}
    with pytest.raises(ConfigError) as e:
        qk_norm_rope(a["q"], a["k"], a["q_weight"], a["k_weight"], a["cos"], a["sin"], **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert isinstance(e.value, ValueError)


def test_full_scope_weight_shapes_are_checked():
    q, k, qw, kw, cos, sin = _args("head")
    with pytest.raises(ConfigError, match=r"scope='full'.*\(256,\).*\(128,\)"):
        qk_norm_rope(q, k, qw, kw, cos, sin, scope="full")


def test_triton_backend_refusals(monkeypatch):
    q, k, qw, kw, cos, sin = _args()
    with pytest.raises(ConfigError, match="float32, bfloat16, float16"):
        qk_norm_rope(q.double(), k.double(), qw, kw, cos, sin, backend="triton")
    big_q = torch.empty(1, 1, 129, 128)  # 256 padded heads x 128 > the kernel's tile
    with pytest.raises(ConfigError, match="backend='torch'"):
        qk_norm_rope(big_q, big_q, None, None, torch.zeros(1, 128), torch.zeros(1, 128), backend="triton")
    if not torch.cuda.is_available():
        import qknorm.ops

        monkeypatch.setattr(qknorm.ops, "_interpreting", lambda: False)
        with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
            qk_norm_rope(q, k, qw, kw, cos, sin, backend="triton")


def test_opcheck_custom_op():
    from qknorm.ops.op import qk_norm_rope_op  # noqa: F401  (registers the op)

    for scope in ("head", "none"):
        q, k, qw, kw, cos, sin = _args(scope, B=1, T=3, H=2, Hkv=1)
        q.requires_grad_()
        k.requires_grad_()
        args = (q, k, qw, kw, cos, sin, 1e-6, scope, 0.0, "fp32")
        torch.library.opcheck(torch.ops.qknorm.qk_norm_rope.default, args,
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from qknorm.ops.op import qk_norm_rope_op

    with FakeTensorMode():
        q, k = torch.empty(2, 9, 6, 80).transpose(1, 1), torch.empty(2, 9, 3, 80)
        qo, ko = qk_norm_rope_op(q, k, torch.empty(480), torch.empty(240), torch.empty(9, 80), torch.empty(9, 80),
                                 1e-6, "full", 0.0, "fp32")
        assert qo.shape == (2, 6, 9, 80) and ko.shape == (2, 3, 9, 80)


def test_torch_compile_keeps_the_op_in_one_graph():
    """fullgraph=True fails on any graph break; aot_eager traces forward and backward through the op."""
    q, k, qw, kw, cos, sin = _args(B=1, T=3, H=2, Hkv=1)
    qw.requires_grad_()

    def f(q, k):
        qo, ko = qk_norm_rope(q * 2, k, qw, kw, cos, sin, backend="triton")
        return qo.square().sum() + ko.sum()

    q1, k1 = q.clone().requires_grad_(), k.clone().requires_grad_()
    loss = torch.compile(f, fullgraph=True, backend="aot_eager")(q1, k1)
    loss.backward()
    q2, k2 = q.clone().requires_grad_(), k.clone().requires_grad_()
    ref = qk_norm_rope_ref(q2 * 2, k2, qw, kw, cos, sin)
    (ref[0].square().sum() + ref[1].sum()).backward()
    torch.testing.assert_close(loss, ref[0].square().sum() + ref[1].sum(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA GPU")
def test_gpu_default_backend_is_triton_and_inductor_compiles():
    q, k, qw, kw, cos, sin = [t.cuda() for t in _args(B=2, T=33, H=8, Hkv=2, D=128, dtype=torch.bfloat16)]
    got = qk_norm_rope(q, k, qw, kw, cos, sin)
    tri = qk_norm_rope(q, k, qw, kw, cos, sin, backend="triton")
    assert all(torch.equal(a, b) for a, b in zip(got, tri))
    f = torch.compile(lambda q, k: qk_norm_rope(q, k, qw, kw, cos, sin), fullgraph=True)
    assert all(torch.equal(a, b) for a, b in zip(f(q, k), tri))


@pytest.mark.parametrize("scope", ["head", "full", "none"])
def test_eager_function_and_library_op_agree(scope):
    """Eager mode runs the kernels through a plain autograd.Function (less host time), torch.compile through the
    torch.library op: both must give the same outputs and gradients, including the weights' and a missing
    output gradient (only q's output used)."""
    from qknorm.ops.op import _qk_norm_rope

    q, k, qw, kw, cos, sin = _args(scope if scope != "none" else "head", T=7)
    if scope == "none":
        qw = kw = None
    results = []
    for path in ("eager", "op"):
        leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (q, k, qw, kw)]
        if path == "eager":
            qo, ko = qk_norm_rope(*leaves, cos, sin, scope=scope, backend="triton")
            assert "EagerQKNormRope" in type(qo.grad_fn).__name__
        else:
            qo, ko = _qk_norm_rope(*leaves, cos, sin, 1e-6, scope, 0.0, "fp32")
        qo.square().sum().backward()  # k's output unused: its gradient arrives as None
        results.append([qo, ko] + [t.grad for t in leaves if t is not None])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
