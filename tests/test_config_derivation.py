"""Configs derive what nobody set: a field neither the user nor the preset's size table gave is derived from the
final values of the fields it depends on (head_dim = d_model // n_heads, n_kv_heads = n_heads); explicit values
stay explicit, through `get_config` overrides, `ModelConfig.replace` and the `--set` command line alike.

The oracle is written here, independently of config.py: merge the preset's explicit fields with the overrides,
then derive the two fields by the rule above.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qknorm import ConfigError, ModelConfig, TransformerLM, get_config
from qknorm.presets import PRESETS, SIZES, preset_fields

from helpers.load import scaled

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.init and not f.name.startswith("_")}
CASES = [(p, s) for p in sorted(PRESETS) for s in SIZES[p]]

OVERRIDES = st.fixed_dictionaries({}, optional={
    "d_model": st.sampled_from([64, 96, 128, 256, 512, 1024]),
    "n_heads": st.sampled_from([1, 2, 3, 4, 8, 16]),
    "n_kv_heads": st.sampled_from([None, 1, 2, 4]),
    "head_dim": st.sampled_from([None, 16, 32, 64]),
    "vocab_size": st.sampled_from([256, 1000]),
    "n_layers": st.integers(1, 4),
    "d_ff": st.sampled_from([64, 300]),
    "qk_norm": st.sampled_from(["none", "head", "full"]),
    "rope_theta": st.sampled_from([1e4, 5e5]),
    "query_pre_attn_scalar": st.sampled_from([None, 16.0]),
    "rope_local_theta": st.sampled_from([None, 1e4]),
})


def expected_values(preset: str, size: str, overrides: dict) -> dict:
    """Every field's value by the rule: explicit (preset + overrides) else default, then the two derivations."""
    spec = {**_DEFAULTS, **preset_fields(preset, size), **overrides}
    if spec["n_kv_heads"] is None:
        spec["n_kv_heads"] = spec["n_heads"]
    if spec["head_dim"] is None:
        spec["head_dim"] = spec["d_model"] // spec["n_heads"]
    return spec


def assert_follows_rule(cfg: ModelConfig, preset: str, size: str, overrides: dict) -> None:
    want = expected_values(preset, size, overrides)
    got = cfg.to_dict()
    for name in ("d_model", "n_heads", "n_kv_heads", "head_dim", "vocab_size", "n_layers", "d_ff", "rope_theta",
                 "query_pre_attn_scalar", "rope_local_theta"):
        assert got[name] == want[name], (name, got[name], want[name])


@pytest.mark.parametrize("preset,size", CASES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=OVERRIDES, b=OVERRIDES)
def test_overrides_equal_a_config_built_from_scratch(preset, size, a, b):
    merged = {**a, **b}
    try:
        scratch = ModelConfig(**{**preset_fields(preset, size), **merged})
    except ConfigError as e:  # an impossible combination: every path refuses it the same way
        with pytest.raises(ConfigError, match="^" + _escape(str(e)) + "$"):
            get_config(preset, size, **merged)
        return
    cfg = get_config(preset, size, **merged)
    assert cfg == scratch
    assert_follows_rule(cfg, preset, size, merged)
    # replace re-derives what was derived, however the overrides are split across calls
    try:
        stepwise = get_config(preset, size, **a).replace(**b)
    except ConfigError:
        return  # `a` alone may be impossible (e.g. n_heads=3 before head_dim is given)
    assert stepwise == cfg


def _escape(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize("preset", ["olmo2", "llama"])
def test_debug_with_a_new_width_derives_head_dim(preset):
    """The issue's example: the debug size's derived head_dim (16) must not survive a new d_model/n_heads."""
    cfg = get_config(preset, "debug", d_model=512, n_heads=8)
    assert cfg.head_dim == 64
    attn = TransformerLM(cfg, device="meta").layers[0].attn
    assert attn.q_proj.weight.shape == (512, 512) and attn.o_proj.weight.shape == (512, 512)
    assert get_config(preset, "debug", d_model=1024, n_heads=16).head_dim == 64


def test_olmo2_debug_given_the_372m_shape_is_the_372m_model():
    shape = dict(vocab_size=50304, d_model=1024, n_layers=16, n_heads=16, n_kv_heads=16, d_ff=4096)
    small, ref = get_config("olmo2", "debug", **shape), get_config("olmo2", "372m")
    assert small.num_params() == ref.num_params()
    assert TransformerLM(small, device="meta").num_params() == TransformerLM(ref, device="meta").num_params()
    assert (small.head_dim, small.n_kv_heads) == (ref.head_dim, ref.n_kv_heads) == (64, 16)


def test_n_kv_heads_is_derived_unless_given():
    assert get_config("postln", "124m", n_heads=8).n_kv_heads == 8  # 124m leaves it to n_heads
    assert get_config("llama", "debug", n_heads=8).n_kv_heads == 2  # the debug size sets 2 explicitly
    cfg = ModelConfig(n_heads=4)
    assert cfg.replace(n_heads=8).n_kv_heads == 8
    assert cfg.replace(n_kv_heads=2).replace(n_heads=8).n_kv_heads == 2


def test_explicit_values_stay_explicit_and_none_asks_for_derivation():
    cfg = get_config("qwen3", "debug")  # head_dim 32 is explicit there (d_model 64 / 4 heads would be 16)
    assert cfg.head_dim == 32 and cfg.replace(d_model=256).head_dim == 32
    assert cfg.replace(head_dim=None).head_dim == 16
    assert cfg.replace(head_dim=None, d_model=256).head_dim == 64
    derived = ModelConfig(d_model=128, n_heads=4)
    assert derived.head_dim == 32 and derived.replace(head_dim=48).replace(d_model=512).head_dim == 48


def test_dataclasses_replace_is_refused_with_the_way_out():
    cfg = get_config("llama", "debug")
    with pytest.raises(ConfigError, match=r"dataclasses\.replace.*config\.replace\("):
        dataclasses.replace(cfg, d_model=512)


def test_saved_configs_hold_resolved_values_and_load():
    cfg = get_config("olmo2", "debug", d_model=256, n_heads=4)
    saved = json.loads(cfg.to_json())["qknorm_config"]
    assert saved["head_dim"] == 64 and saved["n_kv_heads"] == 2 and "_derived" not in saved
    assert ModelConfig.from_dict(saved) == cfg


def test_cli_set_derives_head_dim(tmp_path):
    """`qknorm train --set d_model=256 --set n_heads=4` on the llama preset writes head_dim 64."""
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [os.path.join(os.path.dirname(__file__), "..", "..", "src"), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-m", "qknorm", "train", "--preset", "llama", "--set", "d_model=256",
                        "--set", "n_heads=4", "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--device",
                        "cpu", "--no-progress", "--out", str(out)], capture_output=True, text=True, env=env,
                       timeout=scaled(300))
    assert p.returncode == 0, p.stderr
    saved = json.loads((out / "config.json").read_text())["qknorm_config"]
    assert (saved["d_model"], saved["n_heads"], saved["head_dim"], saved["n_kv_heads"]) == (256, 4, 64, 2)
    with torch.device("meta"):
        assert ModelConfig.from_dict(saved).num_params() == get_config(
            "llama", "debug", d_model=256, n_heads=4, vocab_size=saved["vocab_size"]).num_params()


def test_configs_saved_before_rope_variants_load_as_the_same_model():
    """Old config.json / checkpoint meta hold rope_scaling as a number: 1 = plain, else a linear factor on the
    full-attention layers, with sliding layers left unscaled (so a config that had no rope_local_theta keeps
    plain RoPE on its sliding layers)."""
    from qknorm.nn.rope import rope_tables
    from qknorm.rope_scaling import RopeScaling

    plain = {**get_config("llama", "debug").to_dict(), "rope_scaling": 1.0}
    assert ModelConfig.from_dict(plain) == get_config("llama", "debug")
    old = {**get_config("gemma3", "debug").to_dict(), "rope_scaling": 8.0, "rope_local_theta": None}
    cfg = ModelConfig.from_dict(old)
    assert cfg.rope_scaling == RopeScaling(rope_type="linear", factor=8.0)
    assert cfg.local_rope == (cfg.rope_theta, None)  # as before: sliding layers plain, with rope_theta
    model = TransformerLM(cfg, device="meta")
    cos, _ = model.rope_local(24, torch.device("cpu"))
    assert torch.equal(cos, rope_tables(24, cfg.head_dim, theta=cfg.rope_theta)[0])
    cos_g, _ = model.rope_global(24, torch.device("cpu"))
    assert torch.equal(cos_g, rope_tables(24, cfg.head_dim, theta=cfg.rope_theta, scaling=8.0)[0])
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg  # and the new form round-trips
    assert cfg.to_dict()["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}


def test_rope_scaling_on_the_command_line_is_none_or_refused_in_one_line():
    """`--set rope_scaling=none` turns a preset's scaling off; any other value is refused (a RoPE variant has
    several numbers: set it in Python, or get it from a checkpoint)."""
    from qknorm.cli._common import parse_set

    assert parse_set(["rope_scaling=none"])[0] == {"rope_scaling": None}
    assert get_config("llama", "1b", rope_scaling=None).rope_scaling is None
    with pytest.raises(ConfigError, match="--set rope_scaling: cannot be set from the command line") as e:
        parse_set(["rope_scaling=8"])
    assert "\n" not in str(e.value)
