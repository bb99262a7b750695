"""Tensor parallelism for qknorm models, with an exact full-width (OLMo 2) QK-norm.

    from torch.distributed.device_mesh import init_device_mesh
    from qknorm.parallel import check_tp_degree, parallelize_tp

    check_tp_degree(model.config, tp)                    # ConfigError in one line, before any process group
    parallelize_tp(model, init_device_mesh("cuda", (tp,)))

tensor.py: the sharding plan of a TransformerLM; qk_norm_tp.py: the QK-norm on a shard of the heads;
comm.py: what the QK-norm costs in communication under each TP scheme (formulas) and a recorder that counts
the collectives a step actually issues. The fused two-phase kernels are in qknorm.ops.qk_norm_rope_tp.
"""
from .qk_norm_tp import TensorParallelAttention, TensorParallelQKPath, sum_grad_over_group
from .tensor import TP_DIVISIBLE_FIELDS, TensorParallelPlan, check_tp_degree, parallelize_tp

__all__ = ["check_tp_degree", "parallelize_tp", "TensorParallelPlan", "TensorParallelAttention",
           "TensorParallelQKPath", "sum_grad_over_group", "TP_DIVISIBLE_FIELDS"]
