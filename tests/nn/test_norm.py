"""RMSNorm numerics bit-match the HF transformers classes of each family, in fp32 and bf16."""
import pytest
import torch

from qknorm.nn.norm import RMSNorm

hf_qwen3 = pytest.importorskip("transformers.models.qwen3.modeling_qwen3", reason="transformers not installed")
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRMSNorm  # noqa: E402
from transformers.models.olmo2.modeling_olmo2 import Olmo2RMSNorm  # noqa: E402

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

CASES = [
    (LlamaRMSNorm, dict(cast="input", offset=0.0), 1e-5),
    (hf_qwen3.Qwen3RMSNorm, dict(cast="input", offset=0.0), 1e-6),
    (Olmo2RMSNorm, dict(cast="fp32", offset=0.0), 1e-6),
    (Gemma3RMSNorm, dict(cast="fp32", offset=1.0), 1e-6),
]


@pytest.mark.parametrize("hf_cls,kw,eps", CASES, ids=lambda c: getattr(c, "__name__", ""))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bit_exact_against_hf(hf_cls, kw, eps, dtype):
    torch.manual_seed(0)
    dim = 48
    hf = hf_cls(dim, eps=eps).to(dtype)
    ours = RMSNorm(dim, eps=eps, **kw).to(dtype)
    with torch.no_grad():
        w = torch.randn(dim).to(dtype) * 0.5 + (0.0 if kw["offset"] else 1.0)
        hf.weight.copy_(w)
        ours.weight.copy_(w)
    x = (torch.randn(3, 7, dim) * 3).to(dtype)
    assert torch.equal(ours(x), hf(x))


def test_cast_order_matters_in_bf16():
    # the two orders give different bf16 results: a test that mixes them up would fail
    torch.manual_seed(0)
    a, b = RMSNorm(64, cast="input"), RMSNorm(64, cast="fp32")
    with torch.no_grad():
        w = torch.randn(64) * 0.3 + 1
        a.weight.copy_(w)
        b.weight.copy_(w)
    a, b = a.bfloat16(), b.bfloat16()
    x = torch.randn(64, 64).bfloat16()
    assert not torch.equal(a(x), b(x))


def test_offset_norm_starts_at_identity_scale():
    n = RMSNorm(8, offset=1.0)
    assert torch.equal(n.weight, torch.zeros(8))
    x = torch.randn(4, 8, dtype=torch.float64)
    torch.testing.assert_close(n.double()(x), x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt())


@pytest.mark.parametrize("cast,offset", [("input", 0.0), ("input", 1.0), ("fp32", 0.0), ("fp32", 1.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_norm_and_qk_norm_share_one_numerics(cast, offset, dtype):
    """nn.norm.RMSNorm and the QK-norm op's reference compute the same function for every (cast, offset) —
    with RoPE at position 0 (cos 1, sin 0) the op is the norm alone. They once disagreed for cast="input" with
    offset 1 (the block norm multiplied in fp32, the QK norm rounded first)."""
    from qknorm.ops import qk_norm_rope

    torch.manual_seed(0)
    D = 32
    norm = RMSNorm(D, eps=1e-6, cast=cast, offset=offset)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(D) * 0.3 + (0.0 if offset else 1.0))
    norm = norm.to(dtype)
    x = (torch.randn(2, 5, 3, D) * 2).to(dtype)  # (B, T, heads, D)
    ones, zeros = torch.ones(5, D), torch.zeros(5, D)
    q, _ = qk_norm_rope(x, x, norm.weight, norm.weight, ones, zeros, eps=1e-6, scope="head", offset=offset,
                        norm_cast=cast, backend="torch")  # (B, heads, T, D)
    assert torch.equal(norm(x), q.transpose(1, 2))
