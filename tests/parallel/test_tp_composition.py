"""Tensor parallelism by composition, and its QK step checked once.

* parallelize_tp leaves the model a `TransformerLM` (no class swap: it holds a TensorParallelPlan) and puts a
  `TensorParallelAttention` in each block, whose QK step is a `TensorParallelQKPath` installed by `set_qk_path`.
* A TP=2 forward + backward parses no enum and runs no argument check (`Choice.parse`, `ops._check` counted in
  each rank): per head (qwen3) and full width (olmo2, the two-phase op). Before, every layer's call ran the
  public op's parse + checks. That the numbers are unchanged is test_tensor.py's (TP=2 training == one process).
* A second parallelize_tp is refused in one line.
"""
import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

import qknorm
from qknorm import ConfigError
from qknorm.parallel import TensorParallelAttention, TensorParallelPlan, TensorParallelQKPath, parallelize_tp

from helpers.op_counts import count_parses_and_checks
from helpers.ranks import run_ranks

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels


def _rank(rank):
    dist.init_process_group("gloo")
    counts = count_parses_and_checks()  # forked child: the wrappers die with it
    out = {}
    for preset in ("qwen3", "olmo2"):
        model = qknorm.TransformerLM(qknorm.get_config(preset, "debug"))
        mesh = init_device_mesh("cpu", (2,))
        parallelize_tp(model, mesh)
        attn = model.layers[0].attn
        counts.update(parse=0, check=0)
        model(torch.randint(0, 256, (2, 6))).float().pow(2).mean().backward()
        try:
            parallelize_tp(model, mesh)
            refused = ""
        except ConfigError as e:
            refused = str(e)
        out[preset] = dict(counts=dict(counts), model=type(model), attn=type(attn), path=type(attn.qk_path),
                           plan=type(model.parallel_plan), refused=refused)
    return out


def test_tp_is_composed_and_its_qk_step_checks_nothing():
    for got in run_ranks(_rank):
        for preset, o in got.items():
            assert o["counts"] == {"parse": 0, "check": 0}, preset
            assert o["model"] is qknorm.TransformerLM and o["plan"] is TensorParallelPlan
            assert o["attn"] is TensorParallelAttention and o["path"] is TensorParallelQKPath
            assert "already tensor-parallel" in o["refused"] and "\n" not in o["refused"]
