"""Tensor parallelism refuses, in one line naming the field, the stabilizers it cannot shard exactly: the
layernorm / l2 QK-norm types (its QK-norm sharding is RMSNorm's) and sigmaReparam (the power iteration needs
whole matrices). tp=1 (no sharding) accepts them."""
import pytest

import qknorm
from qknorm.errors import ConfigError
from qknorm.parallel import check_tp_degree


@pytest.mark.parametrize("over, message", [
    (dict(qk_norm="head", qk_norm_type="l2"), "qk_norm_type='l2' is not supported with tp=2"),
    (dict(qk_norm="full", qk_norm_type="layernorm"), "qk_norm_type='layernorm' is not supported with tp=2"),
    (dict(sigma_reparam=True), "sigma_reparam=True is not supported with tp=2"),
])
def test_tp_refuses_what_it_cannot_shard(over, message):
    cfg = qknorm.get_config("llama", "debug", **over)
    with pytest.raises(ConfigError) as e:
        check_tp_degree(cfg, 2)
    assert message in str(e.value) and "\n" not in str(e.value)
    check_tp_degree(cfg, 1)
    check_tp_degree(qknorm.get_config("llama", "debug", qk_norm="full"), 2)  # the RMS type is sharded exactly
