"""A plan crossed with optimizers (study/plan.py): every variant x optimizer x LR x seed, each run's training
settings, stored identities that tell the optimizers apart, an AdamW-only plan that reads as before, errors."""
import json

import pytest

from qknorm import ConfigError, study
from qknorm.cli import main


def test_optimizers_cross_every_variant_lr_and_seed():
    plan = study.make_plan("smoke", variants=("baseline", "qk_clip", "sigma_reparam"), optimizers=("adamw", "muon"),
                           lrs=(1e-3, 1e-2), seeds=2)
    specs = study.run_specs(plan, 256)
    assert len(specs) == 3 * 2 * 2 * 2 == len({s.name for s in specs})
    assert {(s.variant, s.optimizer, s.lr, s.seed) for s in specs} == {
        (v, o, lr, s) for v in plan.variants for o in ("adamw", "muon") for lr in (1e-3, 1e-2) for s in (0, 1)}
    by = {s.name: s for s in specs}
    clip = by["qk_clip_muon_lr0.01_s1"]
    assert clip.train.optimizer.value == "muon" and clip.train.qk_clip == 50.0 and clip.train.lr == 1e-2
    assert by["baseline_lr0.01_s1"].train.qk_clip is None and by["sigma_reparam_muon_lr0.001_s0"].model.sigma_reparam
    # the stored identity of a run tells the optimizers apart (a Muon run is never reused for an AdamW one)
    a, m = by["baseline_lr0.001_s0"].identity(), by["baseline_muon_lr0.001_s0"].identity()
    assert a["train"]["optimizer"] == "adamw" and m["train"]["optimizer"] == "muon"
    assert {k: v for k, v in a["train"].items() if k != "optimizer"} == {
        k: v for k, v in m["train"].items() if k != "optimizer"}


def test_an_adamw_only_plan_reads_as_before():
    """plan.json of an AdamW-only study has no "optimizers" key (its fingerprint, which guards a study directory,
    is what it was before optimizers were crossed); crossing changes the fingerprint."""
    plan = study.make_plan("default")
    assert plan.optimizers == ("adamw",) and "optimizers" not in plan.to_json()
    crossed = study.make_plan("default", optimizers=("adamw", "muon"))
    assert crossed.to_json()["optimizers"] == ["adamw", "muon"]
    assert study.plan_fingerprint(crossed) != study.plan_fingerprint(plan)
    assert study.plan_label(crossed) == "default profile, custom optimizers"
    assert study.make_plan("stabilizers").optimizers == ("adamw", "muon")


def test_optimizer_errors_name_the_field():
    with pytest.raises(ConfigError, match="^optimizers: unknown optimizer 'sgd'; choose from: adamw, muon"):
        study.parse_optimizers("adamw,sgd")
    with pytest.raises(ConfigError, match="^optimizers: 'muon,muon' names an optimizer twice"):
        study.parse_optimizers("muon,muon")
    with pytest.raises(ConfigError, match="^optimizers="):
        study.make_plan("quick", optimizers=())
    assert study.parse_optimizers(" muon , adamw") == ("muon", "adamw")


def test_cli_optimizer_error_is_one_line_exit_2(tmp_path, capsys):
    assert main(["study", "--quick", "--optimizers", "adamw,lion", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--optimizers: unknown optimizer 'lion'" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_stabilizers_profile_on_cuda_is_its_gpu_twin():
    assert study.device_profile("stabilizers", "cuda") == "stabilizers_gpu"
    assert study.device_profile("stabilizers", "cuda:1") == "stabilizers_gpu"
    assert study.device_profile("stabilizers", "cpu") == study.device_profile("stabilizers", None) == "stabilizers"
    assert study.device_profile("default", "cuda") == "default"  # an explicit profile is kept
    gpu = study.PROFILES["stabilizers_gpu"]
    assert gpu.device == "cuda" and gpu.variants == study.PROFILES["stabilizers"].variants
    assert gpu.optimizers == ("adamw", "muon") and gpu.seeds >= 2
    json.dumps(study.make_plan("stabilizers_gpu").to_json())  # plannable on a machine without CUDA
