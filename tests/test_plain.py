"""`qknorm.plain.plain`: the one conversion of a config value to what JSON holds (run.json, checkpoints, messages)."""
import json

import qknorm
from qknorm.config import Placement, QKNormScope
from qknorm.plain import plain
from qknorm.rope_scaling import RopeScaling
from qknorm.train import TrainConfig


def test_plain_writes_enums_tuples_records_and_dicts_as_json_holds_them():
    assert plain(Placement.SANDWICH) == "sandwich" and plain(QKNormScope.HEAD) == "head"
    assert plain(("sliding_attention", "full_attention")) == ["sliding_attention", "full_attention"]
    assert plain(RopeScaling.from_value({"rope_type": "linear", "factor": 2.0})) == {"rope_type": "linear",
                                                                                      "factor": 2.0}
    assert plain({"qk_norm": QKNormScope.FULL, "nope_layers": (1, 3), "d_model": 64}) == \
        {"qk_norm": "full", "nope_layers": [1, 3], "d_model": 64}
    assert plain(None) is None and plain(3e-3) == 3e-3 and plain("x") == "x"


def test_configs_serialize_through_it_and_read_back():
    layers = ("sliding_attention", "full_attention", "full_attention")
    c = qknorm.get_config("gemma3", "debug", n_layers=3, qk_norm="head", layer_types=layers,
                          rope_scaling={"rope_type": "linear", "factor": 4.0})
    d = c.to_dict()
    assert json.loads(json.dumps(d)) == d  # nothing JSON would change (no tuples, no enums)
    assert d["qk_norm"] == "head" and d["layer_types"] == list(layers) and d["placement"] == "sandwich"
    assert d["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    assert qknorm.ModelConfig.from_dict(d) == c
    t = TrainConfig(dtype="bf16", on_nan="skip").to_dict()
    assert json.loads(json.dumps(t)) == t and (t["dtype"], t["on_nan"]) == ("bf16", "skip")
