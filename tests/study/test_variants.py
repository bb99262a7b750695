"""The study's variants (study/variants.py): one shape for all; each stabilizer is the baseline with exactly one
thing switched on, in the model or in the training settings; names stay unique when optimizers are crossed."""
import dataclasses

import pytest

from qknorm import study
from qknorm.study.variants import FAMILY_VARIANTS, QK_CLIP_TAU, SOFTCAP, STABILIZER_VARIANTS, Z_LOSS

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
    assert (SOFTCAP, QK_CLIP_TAU, Z_LOSS) == (50.0, 50.0, 1e-4)
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
    assert len(specs) == len({s.name for s in specs}) == 12 * 2 * len(plan.lrs) * 2


def test_train_settings_record_is_typed_and_validated():
    from qknorm import ConfigError
    from qknorm.study.variants import TrainSettings
    from qknorm.train.config import TrainConfig

    v = study.VARIANTS["qk_clip"]
    assert dataclasses.is_dataclass(v.train) and v.train.to_json() == {"qk_clip": 50.0}
    assert study.VARIANTS["baseline"].train.to_json() == {}
    with pytest.raises(ConfigError, match="qk_clip=-1"):
        TrainSettings(qk_clip=-1.0).apply(TrainConfig())
