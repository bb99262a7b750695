"""The attention's QK step does no per-call argument checking: the public op checks once at its entry.

The public `qknorm.ops.qk_norm_rope` parses scope and norm_cast and checks every argument (ops/__init__.py
`_check`); an attention layer resolves its numerics at construction (nn/qk_fused.py) and calls the op unchecked.
Counted here by wrapping `Choice.parse` (every enum parse in the package) and `ops._check`: before the change an
attention forward + backward made 8 parses and 1 full check (fused layers), 14 and 2 (composed layers). The
numbers are unchanged: the float64 attention reference (test_attention.py) and the HF parity tests
(tests/interop) run through the same layer.
"""

import pytest
import torch

import qknorm
import qknorm.ops as ops

from helpers.op_counts import count_parses_and_checks

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

# fused: per-head (qwen3, gemma3 with offset 1), full width (olmo2), RoPE only (llama);
# composed in PyTorch (nn/qk_path.py): norm after RoPE, interleaved RoPE
CASES = [("qwen3", {}), ("gemma3", {}), ("olmo2", {}), ("llama", {}),
         ("qwen3", dict(qk_norm_after_rope=True)), ("qwen3", dict(rope_interleaved=True))]


@pytest.fixture
def counted(monkeypatch):
    return count_parses_and_checks(monkeypatch.setattr)


@pytest.mark.parametrize("preset, over", CASES)
def test_attention_forward_parses_and_checks_nothing(counted, preset, over):
    cfg = qknorm.get_config(preset, "debug").replace(**over)
    model = qknorm.TransformerLM(cfg)
    x = torch.randn(2, 5, cfg.d_model)
    cos, sin = model.rope_global(5, x.device)
    attn = model.layers[0].attn
    counted.update(parse=0, check=0)
    attn(x, cos, sin).sum().backward()
    assert counted == {"parse": 0, "check": 0}
    # the counters do count: the public op parses both enums and checks once
    q, k = torch.randn(2, 5, cfg.n_heads, cfg.head_dim), torch.randn(2, 5, cfg.n_kv_heads, cfg.head_dim)
    ops.qk_norm_rope(q, k, None, None, cos, sin, scope="none")
    assert counted["parse"] >= 2 and counted["check"] == 1

