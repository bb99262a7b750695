"""kill -9 a real `python -m qknorm train` and resume it: the weights end bit-identical to an uninterrupted run.

Three processes start together (module fixture): the uninterrupted reference, a run SIGKILLed at a random
(seeded) step, and a run SIGKILLed while it is writing a checkpoint (held there by the test-only hook
QKNORM_TEST_PAUSE_IN_CHECKPOINT_WRITE, train/checkpoint.py). The resumes run in this process through
`qknorm.cli.main` (torch single-threaded here and OMP_NUM_THREADS=1 there, so the arithmetic is the same).
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import qknorm
from qknorm.cli import main
from qknorm.io.checkpoints.full import load_checkpoint
from qknorm.io.checkpoints.layout import PAUSE_ENV, list_checkpoints

from helpers.load import scaled, wait_until

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

torch.set_num_threads(1)

STEPS, CKPT_EVERY, PAUSE_AT = 24, 2, 6
ARGS = ["train", "--preset", "qwen3", "--steps", str(STEPS), "--ckpt-every", str(CKPT_EVERY), "--seed", "7",
        "--batch-size", "4", "--seq-len", "16", "--lr", "1e-2", "--set", "stats_every=5", "--set", "eval_batches=1",
        "--device", "cpu", "--no-progress"]
KILL_SEED = 20261126  # the "random" step is drawn from this seed, so a failure reproduces
KILL_STEP = random.Random(KILL_SEED).randint(5, 18)  # >= 5: checkpoints 2 and 4 exist when it lands


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", PAUSE_ENV)}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def _start(out: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "qknorm", *ARGS, "--out", str(out)], env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc, what, cond, timeout=120):
    wait_until(cond, what, timeout, proc=proc, poll=0.002)  # the timeout scaled by the load (helpers/load.py)


def _n_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _records(out: Path):
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("time_s")
    return recs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    procs = {"ref": _start(root / "ref"), "kill": _start(root / "kill"),
             "pause": _start(root / "pause", **{PAUSE_ENV: str(PAUSE_AT)})}
    yield root, procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()
        p.communicate()


def _reference(runs) -> Path:
    """The uninterrupted run's directory, once it has finished (call only after any kill: it blocks)."""
    root, procs = runs
    if procs["ref"].returncode is None:
        _, err = procs["ref"].communicate(timeout=scaled(180))
        assert procs["ref"].returncode == 0, err
    return root / "ref"


def _assert_same_final(out: Path, ref: Path):
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert (out / "config.json").read_text() == (ref / "config.json").read_text()
    assert _records(out) == _records(ref)  # every step's loss, grad norm, stats: the same numbers


def test_sigkill_at_a_random_step_then_truncated_newest_checkpoint_resumes_bit_identical(runs, capsys):
    root, procs = runs
    out, proc = root / "kill", procs["kill"]
    _wait_for(proc, f"step {KILL_STEP}", lambda: _n_lines(out / "metrics.jsonl") >= KILL_STEP)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=scaled(30))
    assert proc.returncode == -signal.SIGKILL
    done = _n_lines(out / "metrics.jsonl")
    assert KILL_STEP <= done < STEPS and not (out / "model.safetensors").exists(), f"killed too late ({done})"
    found = [s for s, _ in list_checkpoints(out / "checkpoints")]
    assert found and found[-1] >= 4 and all(s % CKPT_EVERY == 0 and s <= done for s in found), found

    # a new user's second accident: the newest checkpoint file gets cut short (full disk, bad copy)
    newest = out / "checkpoints" / f"step_{found[-1]:07d}" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])
    capsys.readouterr()
    assert main([*ARGS, "--out", str(out), "--resume"]) == 0, f"kill step {KILL_STEP} (seed {KILL_SEED})"
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert warnings == [line for line in err.splitlines() if "skipping damaged checkpoint" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"qknorm train: warning: skipping damaged checkpoint "
                                                         f"step_{found[-1]:07d}: ") and "truncated" in warnings[0]
    assert "Traceback" not in err
    _assert_same_final(out, _reference(runs))


def test_sigkill_while_a_checkpoint_is_written_keeps_the_last_good_one(runs, capsys):
    root, procs = runs
    out, proc = root / "pause", procs["pause"]
    ckpts = out / "checkpoints"
    _wait_for(proc, f"checkpoint {PAUSE_AT} mid-write",
              lambda: any(ckpts.glob(f".tmp-step_{PAUSE_AT:07d}-*/model.safetensors")))
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=scaled(30))
    assert proc.returncode == -signal.SIGKILL
    # the half-written one never became a checkpoint; the previous one is intact and still the newest
    assert [s for s, _ in list_checkpoints(ckpts)] == [PAUSE_AT - 4, PAUSE_AT - 2]
    assert (ckpts / "latest").read_text().strip() == f"step_{PAUSE_AT - 2:07d}"
    tmp, = ckpts.glob(".tmp-*")
    assert not (tmp / "meta.json").exists()
    good = load_checkpoint(ckpts / f"step_{PAUSE_AT - 2:07d}", qknorm.get_config("qwen3", "debug"))
    assert good.step == PAUSE_AT - 2

    capsys.readouterr()
    assert main([*ARGS, "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err and "Traceback" not in err  # nothing damaged was ever a candidate
    assert not list(ckpts.glob(".tmp-*"))  # the next save cleared the leftover
    _assert_same_final(out, _reference(runs))
