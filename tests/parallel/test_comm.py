"""Communication accounting: the collectives one decoder layer really issues under TP=2, counted by
`record_collectives` (a dispatch mode that sees c10d and DTensor's functional collectives), equal the formula of
`layer_collectives`; and the formulas' arithmetic (bytes per scheme) is checked by hand for OLMo 2 7B.

olmo2 (full width): forward = 1 all-reduce of (2, B*T) fp32 (the QK-norm statistic) + o_proj and down_proj
outputs; backward = 1 all-reduce of (2, B*T) fp32 + the attention and MLP input gradients. Nothing else: no
all-gather of q or k, no all-to-all. qwen3 (per head): no QK-norm collective forward, one all-reduce of the
2*D gain gradients backward. CommDebugMode (torch's own counter) agrees on the counts.
"""
from collections import Counter

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

import qknorm
from qknorm.parallel import parallelize_tp
from qknorm.parallel.comm import Collective, layer_collectives, qk_norm_collectives, record_collectives

from helpers.ranks import run_ranks

B, T = 2, 8


def _layer_rank(rank, preset):
    from torch.distributed.tensor.debug import CommDebugMode

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = qknorm.TransformerLM(qknorm.get_config(preset, "debug"))
    parallelize_tp(model, init_device_mesh("cpu", (2,)))
    block, c = model.layers[0], model.config
    rope = model.rope_global(T, torch.device("cpu"))
    x = torch.randn(B, T, c.d_model, generator=torch.Generator().manual_seed(1), requires_grad=True)
    with CommDebugMode() as torch_count:
        with record_collectives("forward") as fwd:
            out = block(x, rope)
        with record_collectives("backward") as bwd:
            out.backward(torch.ones_like(out))
    return fwd + bwd, torch_count.get_total_counts()


@pytest.mark.parametrize("preset", ["olmo2", "qwen3"])
def test_one_layer_issues_exactly_the_formula(preset):
    cfg = qknorm.get_config(preset, "debug")
    want = layer_collectives(cfg, tokens=B * T, tp=2, act_bytes=4)  # fp32 model
    for got, torch_total in run_ranks(_layer_rank, preset):
        assert Counter(c.key() for c in got) == Counter(c.key() for c in want), (got, want)
        assert torch_total == len(want)
    qk = [c for c in want if c.what.startswith("QK-norm")]
    if preset == "olmo2":  # the QK-norm's share: one (2, B*T) fp32 all-reduce each way
        assert [(c.phase, c.numel, c.itemsize) for c in qk] == [("forward", 2 * B * T, 4), ("backward", 2 * B * T, 4)]
    else:
        assert qk == []


def test_formula_bytes_for_olmo2_7b_by_hand():
    # OLMo-2-1124-7B config.json: hidden_size 4096, 32 heads, 32 kv heads (head_dim 128); bf16; TP=2
    kw = dict(tokens=4 * 4096, n_heads=32, n_kv_heads=32, head_dim=128, tp=2)
    per_rank = {s: sum(c.wire_bytes(2) for c in qk_norm_collectives(s, **kw)) for s in ("ours", "gather", "all_to_all")}
    tokens = kw["tokens"]
    assert per_rank["ours"] == 2 * (2 * 1 / 2) * (2 * tokens * 4)  # two all-reduces of 2*tokens fp32
    assert per_rank["gather"] == 2 * (1 / 2) * tokens * (32 + 32) * 128 * 2  # gather fwd + reduce-scatter bwd
    assert per_rank["all_to_all"] == 4 * (1 / 2) * tokens * (32 + 32) * 128 * 2 / 2
    assert per_rank["gather"] / per_rank["ours"] == 1024
    assert len(qk_norm_collectives("all_to_all", **kw)) == 8 and len(qk_norm_collectives("gather", **kw)) == 4
    unfused = qk_norm_collectives("ours", fused=False, **kw)
    fused = qk_norm_collectives("ours", **kw)
    assert len(unfused) == 4 and sum(c.bytes for c in unfused) == sum(c.bytes for c in fused)
    with pytest.raises(ValueError, match="scheme='ring'"):
        qk_norm_collectives("ring", **kw)
    assert Collective("all_gather", "forward", 8, 2).wire_bytes(4) == 12.0


def test_benchmark_table_covers_olmo2_shapes_and_tp_degrees():
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "bench" / "tp_comm_table.py"
    table = runpy.run_path(str(script))["table"]()
    rows = [line for line in table.splitlines() if line.startswith("| OLMo 2")]
    assert [r.split("|")[1:3] for r in rows] == [[f" OLMo 2 {m} ", f" {n} "] for m in ("7B", "13B", "32B")
                                                 for n in (2, 4, 8)]
    assert "| OLMo 2 7B | 2 | 8.4 | 8,590 | 8,590 | 1,024x | 1,024x | 2 / 4 / 8 | 17,180 | 0.049% |" in table
