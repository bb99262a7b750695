"""The Ray scheduler (study/ray_backend.py) on a local Ray instance with 2 CPUs, started once for this module: the
same plan gives the same numbers as the local pool; a worker that dies is retried, then its run is recorded
failed (not diverged, not dropped); a run that raises is failed; data missing on a worker fails the run with the
reason; Ctrl-C cancels the outstanding tasks and a rerun resumes from the runs on disk."""
import dataclasses
import json
import logging
import os
from pathlib import Path

import pytest

from qknorm import ConfigError, study
from qknorm.cli import main

ray = pytest.importorskip("ray", reason="Ray is not installed: the ray extra (pip install 'qknorm[ray]'; "
                                        "bash run.sh test installs it)")

from helpers.load import wait_until  # noqa: E402
from helpers.study_runners import attempts, fast_runner, faulty_runner, slow_runner  # noqa: E402
from qknorm.study import ray_backend  # noqa: E402

pytestmark = pytest.mark.xdist_group("ray")  # these tests on one xdist worker, one Ray instance (--dist loadgroup)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ray_instance(tmp_path_factory):
    """A local Ray instance, 2 CPUs, no dashboard, started once for the session (the xdist group keeps these tests
    on one worker; session scope, since other modules' tests may run between them there). Its workers import
    qknorm and the test helpers from this checkout and report through QKNORM_TEST_DIR: Ray's processes keep the
    environment they were started with, which is set for ray.init only."""
    marks = tmp_path_factory.mktemp("ray_attempts")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"),
                                                 os.environ.get("PYTHONPATH", "")]))
        mp.setenv("QKNORM_TEST_DIR", str(marks))
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    try:
        yield marks
    finally:
        ray.shutdown()


def _quiet():
    return study.RayScheduler(log=lambda _: None)


def test_the_same_plan_gives_the_same_numbers_on_ray_as_in_the_local_pool(ray_instance, tmp_path, capsys):
    """`qknorm study --backend ray` (Ray tasks in Ray's worker processes) against the same plan in this process
    (the local pool with one worker): every run's validation loss, max attention logit and per-step loss agree."""
    flags = ["--profile", "smoke", "--variants", "baseline,qknorm", "--lrs", "1e-2,3e-2", "--steps", "4",
             "--device", "cpu"]
    assert main(["study", *flags, "--backend", "ray", "--out", str(tmp_path / "ray")]) == 0
    assert "ray: the running Ray instance, 1 node, 2 CPUs" in capsys.readouterr().err
    plan = study.make_plan("smoke", variants=("baseline", "qknorm"), lrs=(1e-2, 3e-2), steps=4, device="cpu",
                           workers=1)
    study.run_study(plan, tmp_path / "local", report=False, log=lambda _: None)
    runs = {}
    for side in ("ray", "local"):
        for r in json.loads((tmp_path / side / "summary.json").read_text())["runs"]:
            name = f"{r['variant']}_lr{r['lr']:g}_s{r['seed']}"
            stored = json.loads((tmp_path / side / "runs" / f"{name}.json").read_text())
            runs.setdefault((r["variant"], r["lr"], r["seed"]), {})[side] = (r, stored["loss"])
    assert len(runs) == 4
    for key, sides in runs.items():
        (ray_rec, ray_loss), (local_rec, local_loss) = sides["ray"], sides["local"]
        assert ray_rec["status"] == local_rec["status"] and ray_rec["status"] in ("ok", "diverged"), key
        for field in ("val_loss", "max_attn_logit", "final_loss"):
            assert ray_rec[field] is not None, (key, field)
            assert ray_rec[field] == pytest.approx(local_rec[field], rel=1e-6, abs=0), (key, field)
        assert ray_loss == pytest.approx(local_loss, rel=1e-6, abs=0), key
    assert not (tmp_path / "ray" / "workers.log").exists()  # Ray workers print to Ray's logs, not to OUT


def test_a_dead_worker_is_retried_then_its_run_is_failed_and_a_run_that_raises_is_failed(ray_instance, tmp_path):
    """A Ray worker process that dies inside the task (os._exit once; SIGKILL to its own pid every time) is retried
    by Ray, at most MAX_RETRIES times, then its run is recorded failed with the reason; a run that raises is failed
    at once (a Python error is not retried: it would raise again)."""
    plan = study.make_plan("quick", variants=("qknorm",), lrs=(1e-3, 1e-2, 1e-1), workers=2)
    summary = study.run_study(plan, tmp_path / "s", runner=faulty_runner, scheduler=_quiet(), report=False,
                              log=lambda _: None)
    by_lr = {r.lr: r for r in summary.runs}
    assert len(by_lr) == 3
    # died once, retried, then finished
    assert by_lr[1e-3].status.value == "ok" and attempts("qknorm_lr0.001_s0", ray_instance) == 2
    # raised: failed on the first attempt, with the error and the node
    assert by_lr[1e-2].failed and by_lr[1e-2].error.startswith("RuntimeError: boom [on ")
    assert attempts("qknorm_lr0.01_s0", ray_instance) == 1
    # died on every attempt: tried 1 + MAX_RETRIES times, then failed (not diverged), on disk like any run
    dead = by_lr[1e-1]
    assert dead.failed and not dead.diverged
    assert attempts("qknorm_lr0.1_s0", ray_instance) == 1 + ray_backend.MAX_RETRIES == 3
    assert dead.error.startswith("its Ray worker died 3 times (WorkerCrashedError: ")
    stored = json.loads((tmp_path / "s" / "runs" / "qknorm_lr0.1_s0.json").read_text())["record"]
    assert stored["status"] == "failed" and stored["diverged"] is False
    assert summary.analysis.lr_sensitivity["qknorm"].value is None  # failed runs are left out, never l0


def test_data_missing_or_different_on_a_worker_fail_the_run_with_the_reason(ray_instance, tmp_path, monkeypatch):
    """The worker reads the data at the spec's path (made absolute on the driver) and checks its fingerprint."""
    monkeypatch.chdir(tmp_path)
    plan = study.make_plan("smoke", variants=("baseline",), lrs=(1e-3, 1e-1), steps=2, device="cpu")
    specs = {s.lr: s for s in study.run_specs(plan, 256, data_fingerprint="0" * 16)}
    got = []
    _quiet().execute([dataclasses.replace(specs[1e-3], data="missing/corpus.txt"), specs[1e-1]], study.run_one, 2,
                     got.append)
    by_lr = {r.lr: r for r in got}
    assert by_lr[1e-3].failed and by_lr[1e-1].failed and len(got) == 2
    assert by_lr[1e-3].error.startswith(f"DataError: data path {tmp_path / 'missing' / 'corpus.txt'} does not exist "
                                        "[on ")
    assert by_lr[1e-1].error.startswith("DataError: the embedded corpus (this Python's standard library sources) "
                                        "read on ")
    assert "not the 0000000000000000 the study was planned on" in by_lr[1e-1].error


def test_ctrl_c_cancels_the_outstanding_runs_and_a_rerun_resumes(ray_instance, tmp_path):
    """KeyboardInterrupt in the driver (raised here by the progress log after the first run) cancels the two runs
    still sleeping on the 2 CPUs: the CPUs come free at once, instead of after the runs' ten minutes."""
    plan = study.make_plan("quick", variants=("baseline",), lrs=(1e-3, 1e-2, 1e-1), workers=2)
    out = tmp_path / "s"

    def interrupt_after_the_first_run(line):
        if "[  1/3]" in line:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        study.run_study(plan, out, runner=slow_runner, scheduler=_quiet(), report=False,
                        log=interrupt_after_the_first_run)
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["baseline_lr0.1_s0.json"]
    assert not (out / "summary.json").exists()
    wait_until(lambda: ray.available_resources().get("CPU", 0) >= 2, "the cancelled runs to free their CPUs", 30,
               poll=0.2)  # scaled by the load (helpers/load.py); the runs would hold them for ten minutes
    assert ray.available_resources().get("CPU", 0) == 2, "cancelled runs still hold their CPUs"
    lines = []
    summary = study.run_study(plan, out, runner=fast_runner, scheduler=_quiet(), report=False, log=lines.append)
    assert "reusing 1 finished run" in lines[0] and summary.config.reused_runs == 1
    assert attempts("baseline_lr0.1_s0", ray_instance) == 1 and all(r.status.value == "ok" for r in summary.runs)


def test_gpu_runs_share_a_gpu_by_workers_and_a_cluster_without_gpus_is_refused(ray_instance):
    for workers in (1, 2, 3, 7, 8):
        share = ray_backend.gpu_share(workers)
        assert workers * share <= 1.0 and share > 1.0 / workers - 1e-4
    assert ray_backend.gpu_share(1) == 1.0 and ray_backend.gpu_share(8) == 0.125
    with pytest.raises(ConfigError, match="^device=cuda: the running Ray instance has no GPU"):
        _quiet().prepare(workers=4, device="cuda")
    with pytest.raises(ConfigError, match="^device=cuda:1: with backend=ray each run trains on the GPU Ray assigns"):
        _quiet().prepare(workers=4, device="cuda:1")


def test_a_worker_with_other_versions_refuses_the_run():
    """The installed versions are part of a run's identity: a node with another torch or qknorm must not run it."""
    plan = study.make_plan("smoke", variants=("baseline",), lrs=(1e-3,), steps=2, device="cpu")
    spec = study.run_specs(plan, 256)[0]
    rec = ray_backend._on_worker(spec, fast_runner, ray_backend._Driver(qknorm="0.0.1", torch="1.0"))
    assert rec.failed and "the study runs qknorm 0.0.1, torch 1.0: install the same versions on every node" in rec.error
