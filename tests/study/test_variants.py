"""The study's variants (study/variants.py): one shape for all; each stabilizer is the baseline with exactly one
thing switched on, in the model or in the training settings; names stay unique when optimizers are crossed."""
import dataclasses

import pytest

from qknorm import study
from qknorm.study.variants import CLIP_QKV, FAMILY_VARIANTS, QK_CLIP_TAU, SOFTCAP, STABILIZER_VARIANTS, Z_LOSS

# what each stabilizer changes against the baseline: (model fields, training fields)
CHANGES = {
    "qknorm": ({"qk_norm": "head"}, {}),
    "qknorm_full": ({"qk_norm": "full"}, {}),
    "qk_layernorm": ({"qk_norm": "head", "qk_norm_type": "layernorm"}, {}),
    "qk_l2": ({"qk_norm": "head", "qk_norm_type": "l2"}, {}),
    "softcap": ({"attn_softcap": 50.0}, {}),
    "qk_clip": ({}, {"qk_clip": 50.0}),
    "z_loss": ({}, {"z_loss": 1e-4}),
    "sigma_reparam": ({"sigma_reparam": True}, {}),
    "clip_qkv": ({"clip_qkv": 8.0}, {}),
}


def _diff(a: dict, b: dict) -> dict:
    return {k: b[k] for k in b if a.get(k) != b[k]}


@pytest.mark.parametrize("variant", STABILIZER_VARIANTS[1:])
def test_each_stabilizer_is_the_baseline_with_one_thing_switched_on(variant):
    plan = study.make_plan("stabilizers")
    base = study.model_config("baseline", plan.shape, 256).to_dict()
    model = study.model_config(variant, plan.shape, 256).to_dict()
    want_model, want_train = CHANGES[variant]
    assert _diff(base, model) == want_model
    train0 = plan.train_config(1e-3, 0, "baseline").to_dict()
    for opt in ("adamw", "muon"):
        train = plan.train_config(1e-3, 0, variant, opt).to_dict()
        assert _diff(plan.train_config(1e-3, 0, "baseline", opt).to_dict(), train) == want_train
        assert train["optimizer"] == opt and train0["optimizer"] == "adamw"


def test_the_chosen_settings_and_the_variant_lists():
    assert (SOFTCAP, QK_CLIP_TAU, Z_LOSS, CLIP_QKV) == (50.0, 50.0, 1e-4, 8.0)
    assert set(CHANGES) | {"baseline"} == set(STABILIZER_VARIANTS)
    assert set(study.VARIANTS) == set(STABILIZER_VARIANTS) | set(FAMILY_VARIANTS)
    assert study.PROFILES["default"].variants == FAMILY_VARIANTS == ("baseline", "qknorm", "olmo2", "gemma3",
                                                                     "postln")
    assert study.PROFILES["stabilizers"].variants == tuple(study.VARIANTS)


def test_run_names_stay_unique_across_optimizers():
    """AdamW runs keep their old names; other optimizers insert theirs. No variant name ends in '_<optimizer>' or
    contains '/', so neither a run name nor an arm label can collide."""
    for v in study.VARIANTS:
        assert "/" not in v and not any(v.endswith(f"_{o}") for o in study.OPTIMIZERS), v
    assert study.run_name("qknorm", 1e-3, 0) == "qknorm_lr0.001_s0"
    assert study.run_name("qknorm", 1e-3, 0, "muon") == "qknorm_muon_lr0.001_s0"
    assert study.arm_label("qknorm", "adamw") == "qknorm" and study.arm_label("qknorm", "muon") == "qknorm/muon"
    plan = study.make_plan("stabilizers")
    specs = study.run_specs(plan, 256)
    assert len(specs) == len({s.name for s in specs}) == 13 * 2 * len(plan.lrs) * 2


def test_train_settings_record_is_typed_and_validated():
    from qknorm import ConfigError
    from qknorm.study.variants import TrainSettings
    from qknorm.train.config import TrainConfig

    v = study.VARIANTS["qk_clip"]
    assert dataclasses.is_dataclass(v.train) and v.train.to_json() == {"qk_clip": 50.0}
    assert study.VARIANTS["baseline"].train.to_json() == {}
    with pytest.raises(ConfigError, match="qk_clip=-1"):
        TrainSettings(qk_clip=-1.0).apply(TrainConfig())


def test_clip_qkv_variant_trains_and_is_in_the_summary(tmp_path):
    """A short real study of baseline and clip_qkv: both train, the clip_qkv arm is on the leaderboard, and the
    model it trained clamps (its config says so and the summary file names the variant)."""
    import json

    plan = study.make_plan("smoke", variants=("baseline", "clip_qkv"), lrs=(1e-2,), steps=3, workers=1,
                           device="cpu")
    s = study.run_study(plan, tmp_path / "s", report=False, log=lambda _: None)
    assert {r.variant: r.status.value for r in s.runs} == {"baseline": "ok", "clip_qkv": "ok"}
    assert "clip_qkv" in {r.variant for r in s.analysis.leaderboard}
    assert study.model_config("clip_qkv", plan.shape, 256).clip_qkv == CLIP_QKV
    text = (tmp_path / "s" / "summary.json").read_text()
    assert "clip_qkv" in json.loads(text)["config"]["variant_descriptions"]
