"""The QK-norm of a tensor-parallel attention: placements, the per-head gain's gradient sum, saving whole gains.

* After parallelize_tp the attention sees its local head counts; full-width gains are Shard(0) of the (H*D,)
  vector (this rank's heads), per-head gains Replicate (D,).
* NEGATIVE CONTROL (per head): without summing the shared (D,) gain's gradient over the group, each rank
  updates its "replicated" gain from its own heads only; the qwen3 TP=2 run then differs from one process (and
  the ranks' gains differ from each other). test_tensor.py shows the summed version matches.
* Saved whole: a torch.distributed.checkpoint (DCP) written by the TP=2 ranks (sharded gains) loads into a
  plain one-process model, every tensor (the full (H*D,) gains included) equal to the gathered weights.
"""
import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard

import qknorm
from qknorm.parallel import TensorParallelAttention, parallelize_tp
from qknorm.parallel import qk_norm_tp as qk_norm_tp_module

from helpers.ranks import run_ranks
from helpers.tp_training import batches, mismatches, single, train_steps

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels


def _placements_rank(rank):
    dist.init_process_group("gloo")
    out = {}
    for preset in ("olmo2", "qwen3"):
        model = parallelize_tp(qknorm.TransformerLM(qknorm.get_config(preset, "debug")), init_device_mesh("cpu", (2,)))
        attn = model.layers[0].attn
        w = attn.q_norm.weight
        out[preset] = dict(cls=type(attn), heads=(attn.n_heads, attn.n_kv_heads), placements=w.placements,
                           local=tuple(w.to_local().shape), full=tuple(w.shape),
                           k_local=tuple(attn.k_norm.weight.to_local().shape))
    return out


def test_local_heads_and_gain_placements():
    for got in run_ranks(_placements_rank):
        o, q = got["olmo2"], got["qwen3"]  # debug: 4 heads, 2 kv heads, head_dim 16 (olmo2) / 32 (qwen3)
        assert o["cls"] is TensorParallelAttention and o["heads"] == (2, 1) and q["heads"] == (2, 1)
        assert o["placements"] == (Shard(0),) and (o["full"], o["local"], o["k_local"]) == ((64,), (32,), (16,))
        assert q["placements"] == (Replicate(),) and (q["full"], q["local"], q["k_local"]) == ((32,), (32,), (32,))


def _unsummed_rank(rank, init, data):
    dist.init_process_group("gloo")
    qk_norm_tp_module.sum_grad_over_group = lambda group, *tensors: tensors  # the planted bug (forked child)
    model = qknorm.TransformerLM(qknorm.get_config("qwen3", "debug"), dtype=torch.float64)
    model.load_state_dict(init)
    parallelize_tp(model, init_device_mesh("cpu", (2,)), loss_parallel=True)
    return train_steps(model, data, loss_parallel=True)


def test_negative_control_per_head_gain_gradient_not_summed_is_caught():
    init, ref = single("qwen3")
    r0, r1 = run_ranks(_unsummed_rank, init, batches(256))
    bad = mismatches(ref, r0)
    assert any("attn.q_norm.weight" in b for b in bad) and any("attn.k_norm.weight" in b for b in bad), bad
    name = "layers.0.attn.q_norm.weight"
    assert not torch.allclose(r0["weights"][name], r1["weights"][name])  # the replicas drifted apart


def _dcp_rank(rank, init, data, path):
    import torch.distributed.checkpoint as dcp

    dist.init_process_group("gloo")
    model = qknorm.TransformerLM(qknorm.get_config("olmo2", "debug"), dtype=torch.float64)
    model.load_state_dict(init)
    parallelize_tp(model, init_device_mesh("cpu", (2,)), loss_parallel=True)
    out = train_steps(model, data, loss_parallel=True)  # gains moved away from their init
    dcp.save(model.state_dict(), checkpoint_id=path)
    return out["weights"]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_dcp_checkpoint_of_tp2_loads_whole_in_one_process(tmp_path):
    import torch.distributed.checkpoint as dcp

    init, _ = single("olmo2")
    weights = run_ranks(_dcp_rank, init, batches(256, 2), str(tmp_path / "ckpt"))[0]
    model = qknorm.TransformerLM(qknorm.get_config("olmo2", "debug"), dtype=torch.float64)
    state = model.state_dict()
    dcp.load(state, checkpoint_id=str(tmp_path / "ckpt"))  # no process group: TP=2 -> one process
    assert state.keys() == weights.keys()
    for name, w in weights.items():
        assert torch.equal(state[name], w), name
    gain = state["layers.1.attn.q_norm.weight"]
    assert gain.shape == (64,) and not torch.equal(gain, init["layers.1.attn.q_norm.weight"])
