"""The estimate's structure (not its timings): every arm (variant x optimizer) is estimated at its own measured
cost — each variant probed, the optimizers' shares solved from an additive model that is exact on the probes —
and with compile each variant's warm compile is measured and counted once per worker process that runs it.

A fake `run_one` stands in for training: its records cost what a table says, and a compile costs what a fake
inductor (in-process graphs, an on-disk cache) would charge, so the estimate must recover those numbers."""
import pytest
import torch

from qknorm.study import estimate as est_mod
from qknorm.study.estimate import _solve, estimate_study, probe_arms
from qknorm.study.plan import make_plan, run_specs
from qknorm.study.records import RunHistory, RunRecord

STEP = {"baseline": 0.050, "qknorm": 0.052, "sigma_reparam": 0.058}  # s a step with AdamW
INDUCTOR_IMPORT = 1.5  # s a worker spends importing inductor before its first compile
MUON_EXTRA = 0.015  # s a step more with Muon, whatever the variant
FIXED = {"adamw": 0.4, "muon": 0.6}
COLD, WARM = {"baseline": 9.0, "qknorm": 9.5, "sigma_reparam": 12.0}, {"baseline": 2.0, "qknorm": 2.5,
                                                                           "sigma_reparam": 3.5}


class FakeTraining:
    """run_one's stand-in: a run costs FIXED + steps x step (+ a compile where a real one would happen)."""

    def __init__(self):
        self.graphs, self.disk, self.calls = set(), set(), []

    def reset(self):
        self.graphs.clear()

    def __call__(self, spec):
        self.calls.append((spec.variant, spec.optimizer, spec.train.steps, spec.train.compile))
        step = STEP[spec.variant] + (MUON_EXTRA if spec.optimizer == "muon" else 0.0)
        cpu = FIXED[spec.optimizer] + spec.train.steps * step
        if spec.train.compile and spec.variant not in self.graphs:
            cpu += WARM[spec.variant] if spec.variant in self.disk else COLD[spec.variant]
            self.graphs.add(spec.variant)
            self.disk.add(spec.variant)
        return RunRecord(variant=spec.variant, lr=spec.lr, seed=spec.seed, optimizer=spec.optimizer, init_loss=5.0,
                         final_loss=3.0, val_loss=3.0, max_attn_logit=10.0, steps=spec.train.steps, cpu_s=cpu,
                         step_cpu_ms=1e3 * step, step_ms=1e3 * step, history=RunHistory(step=[0], loss=[5.0]))


@pytest.fixture
def fake(monkeypatch):
    f = FakeTraining()
    monkeypatch.setattr(est_mod, "run_one", f)
    monkeypatch.setattr(torch._dynamo, "reset", f.reset)
    monkeypatch.setattr(est_mod, "usable_cpus", lambda: 2)
    monkeypatch.setattr(est_mod, "_inductor_import_s", lambda: INDUCTOR_IMPORT)
    return f


def _specs(compile_on: bool):
    plan = make_plan("stabilizers", variants=("baseline", "qknorm", "sigma_reparam"), lrs=(1e-3, 3e-3), seeds=1,
                     workers=2, compile=compile_on)
    return run_specs(plan, 256)


def test_probes_span_the_arms_and_the_additive_model_is_exact_on_them():
    arms = [(v, o) for o in ("adamw", "muon") for v in ("a", "b", "c")]
    probes = probe_arms(arms)
    assert len(probes) == 3 + 2 - 1  # V + O - 1, not V x O
    assert {v for v, _ in probes} == {"a", "b", "c"} and {o for _, o in probes} == {"adamw", "muon"}
    truth = {(v, o): {"a": 1.0, "b": 2.0, "c": 4.0}[v] + {"adamw": 0.5, "muon": 3.0}[o] for v, o in arms}
    solved = _solve({p: truth[p] for p in probes}, arms)
    assert solved == pytest.approx(truth)
    # arms that share no variant or optimizer are separate trees, each probed
    assert probe_arms([("a", "adamw"), ("b", "muon")]) == [("a", "adamw"), ("b", "muon")]


def test_each_arm_gets_its_own_measured_cost(fake):
    specs = _specs(False)
    est = estimate_study(specs, workers=2)
    probed_variants = {v for v, o, steps, _ in fake.calls if steps == est_mod.CALIBRATION_STEPS}
    assert probed_variants == set(STEP)  # every variant was measured, not only the first
    assert len(est.arms) == 6 and est.compiles == ()
    for a in est.arms:
        want = STEP[a.variant] + (MUON_EXTRA if a.optimizer == "muon" else 0.0)
        assert a.step_s == pytest.approx(want, abs=1e-5), a
        assert a.fixed_s == pytest.approx(FIXED[a.optimizer], abs=1e-3), a
        assert a.runs == 2 and a.steps == 150
    assert sum(a.probed for a in est.arms) == 4
    cpu = sum(a.runs * (FIXED[a.optimizer] + 150 * (STEP[a.variant] + (MUON_EXTRA if a.optimizer == "muon" else 0)))
              for a in est.arms)
    assert est.cpu_s == pytest.approx(cpu, abs=0.1)
    lines = est.breakdown()
    assert len(lines) == 3 and lines[2].lstrip().startswith("sigma_reparam:")


def test_compile_is_measured_and_counted_per_variant(fake):
    est = estimate_study(_specs(True), workers=2)
    assert [c.variant for c in est.compiles] == list(STEP)
    for c in est.compiles:
        assert c.first_s == pytest.approx(COLD[c.variant], abs=1e-3)  # here: cold
        assert c.warm_s == pytest.approx(WARM[c.variant], abs=1e-3)  # what a worker pays
        assert c.compiles == 2  # each of the 2 worker processes runs the variant
    for a in est.arms:  # the arms' costs hold no compile
        assert a.fixed_s == pytest.approx(FIXED[a.optimizer], abs=1e-3), a
    eager = estimate_study(_specs(False), workers=2)
    assert est.cpu_s - eager.cpu_s == pytest.approx(2 * sum(WARM.values()), abs=0.1)
    assert "compile 2 x 3.5 s" in est.breakdown()[2]
    assert est.startup_s - eager.startup_s == pytest.approx(INDUCTOR_IMPORT, abs=0.2)  # once per worker
    # one worker is this process, which holds every compiled graph after the calibration: no compile is counted
    one = estimate_study(_specs(True), workers=1)
    assert all(c.compiles == 0 for c in one.compiles) and one.cpu_s == pytest.approx(eager.cpu_s, abs=0.1)
