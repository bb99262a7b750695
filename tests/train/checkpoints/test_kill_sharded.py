"""kill -9 a real `torchrun --nproc_per_node=2 -m qknorm train --parallel fsdp` while it writes a sharded checkpoint,
then resume it in one process: the last good checkpoint survives and the final weights are bit-identical.

The run is held inside the sharded save of checkpoint PAUSE_AT by the test-only hook
QKNORM_TEST_PAUSE_IN_CHECKPOINT_WRITE (io/checkpoints/sharded.py): both ranks sleep once the temporary directory
is complete (DCP shards, rng.pt, meta.json, fsynced) but not yet renamed into place - the most tempting state
for a reader to mistake for a checkpoint. Then the launcher and both workers are SIGKILLed (torchrun starts each
worker in its own session, so killing the launcher's process group alone would leave them running: every process
group of the job is killed).

The reference is an uninterrupted run that does the same thing: `torchrun` (2 processes, FSDP) to the checkpoint
step, then `qknorm train --resume` in one process to STEPS. It is not an uninterrupted 2-process run to STEPS,
nor a 1-process one: those differ from the resumed run in the last bits (measured: all three final
model.safetensors differ), because 2 ranks reduce their gradients in another summation order than one process
summing the whole batch. Comparing bit for bit against the like-for-like run needs no tolerance, and checks
besides that the surviving checkpoint's shards are byte-identical to the reference's. The learning rate is
constant (warmup 0, final_lr = lr), so the reference's 2-step plan and the killed run's STEPS-step plan agree on
the steps they share. The two torchrun jobs (fresh interpreters: the expensive part) run concurrently.
"""
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import qknorm
from qknorm.cli import main
from qknorm.io.checkpoints.layout import PAUSE_ENV, list_checkpoints
from qknorm.train.checkpointing import load_training_checkpoint
from qknorm.io.checkpoints.sharded import is_sharded
from qknorm.train import TrainConfig
from qknorm.train.optim import build_optimizer
from qknorm.train.runtime import Runtime

from helpers.load import Deadline, scaled
from helpers.ranks import python_env, torchrun

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

torch.set_num_threads(1)

STEPS, CKPT_EVERY, PAUSE_AT = 6, 2, 4
GOOD = PAUSE_AT - CKPT_EVERY  # the newest complete checkpoint when the kill lands
ARGS = ["--preset", "qwen3", "--batch-size", "4", "--seq-len", "16", "--seed", "1", "--lr", "3e-3", "--warmup", "0",
        "--set", "final_lr=3e-3", "--set", "stats_every=0", "--set", "eval_batches=1", "--device", "cpu",
        "--no-progress", "--ckpt-every", str(CKPT_EVERY)]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "qknorm"]


def _env(**extra):
    env = python_env(**extra)
    if not extra:
        env.pop(PAUSE_ENV, None)
    return env


def _children(pid: int):
    """Direct children of `pid` (from /proc)."""
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_job(proc: subprocess.Popen) -> list:
    """SIGKILL torchrun's launcher and every worker, each with its process group; returns the worker pids."""
    workers = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher first: it must not react to its workers dying
    for pid in workers:
        try:
            os.killpg(pid, signal.SIGKILL)  # start_new_session=True in torch.distributed.elastic
        except ProcessLookupError:
            pass
    proc.wait(timeout=scaled(30))
    deadline = Deadline(30)
    while any(_alive(p) for p in workers) and not deadline.expired():
        time.sleep(0.01)
    return workers


def _records(out: Path):
    """(step, loss, grad_norm, lr, tokens) of each metrics.jsonl line (val_loss is only on a plan's last step)."""
    return [tuple(r[k] for k in ("step", "loss", "grad_norm", "lr", "tokens"))
            for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def _shards(ckpt: Path):
    """{file: sha256} of a sharded checkpoint's per-rank shard files (.metadata holds a per-save uuid)."""
    files = json.loads((ckpt / "meta.json").read_text())["files"]
    return {k: v["sha256"] for k, v in files.items() if k.endswith(".distcp")}


def test_sigkill_of_torchrun_mid_sharded_write_keeps_last_good_and_resumes_bit_identical(tmp_path, capsys):
    out, ref = tmp_path / "killed", tmp_path / "ref"
    ckpts = out / "checkpoints"
    with open(tmp_path / "killed.log", "w") as log, ThreadPoolExecutor(1) as pool:
        proc = subprocess.Popen([*TORCHRUN, "train", *ARGS, "--steps", str(STEPS), "--parallel", "fsdp",
                                 "--out", str(out)], env=_env(**{PAUSE_ENV: str(PAUSE_AT)}), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        reference = pool.submit(torchrun, ["train", *ARGS, "--steps", str(GOOD), "--parallel", "fsdp",
                                           "--out", str(ref)], env=_env())
        try:
            meta = ckpts / f".tmp-step_{PAUSE_AT:07d}-dcp" / "meta.json"
            deadline = Deadline(150)  # scaled by the load (helpers/load.py)
            while True:  # rank 0 writes meta.json last, just before both ranks pause
                try:
                    json.loads(meta.read_text())
                    break
                except (OSError, ValueError):
                    pass
                assert proc.poll() is None, f"torchrun exited ({proc.returncode}) before checkpoint {PAUSE_AT}:\n" \
                                            + (tmp_path / "killed.log").read_text()[-4000:]
                assert not deadline.expired(), f"timed out after {deadline.describe()} waiting for the sharded write"
                time.sleep(0.005)
            time.sleep(0.2)  # the fsyncs after meta.json, then the pause
            workers = _kill_job(proc)
        finally:
            if proc.poll() is None:
                _kill_job(proc)
        ref_run = reference.result()

    assert proc.returncode == -signal.SIGKILL
    assert len(workers) == 2 and not any(_alive(p) for p in workers), workers
    assert "Traceback" not in ref_run.stderr

    # the complete-looking temp dir never became a checkpoint; the previous one is still the newest, and loads
    assert [s for s, _ in list_checkpoints(ckpts)] == [CKPT_EVERY * i for i in range(1, GOOD // CKPT_EVERY + 1)]
    assert (ckpts / "latest").read_text().strip() == f"step_{GOOD:07d}"
    tmp, = ckpts.glob(".tmp-*")
    assert tmp.name == f".tmp-step_{PAUSE_AT:07d}-dcp" and (tmp / "state" / ".metadata").is_file()
    assert not (out / "model.safetensors").exists()
    good = ckpts / f"step_{GOOD:07d}"
    assert is_sharded(good) and json.loads((good / "meta.json").read_text())["world_size"] == 2
    assert _shards(good) == _shards(ref / "checkpoints" / f"step_{GOOD:07d}")  # the same bytes as uninterrupted
    config = qknorm.get_config("qwen3", "debug")
    model = qknorm.TransformerLM(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing damaged is found, nothing is moved aside
        ckpt = load_training_checkpoint(Runtime(), ckpts, model, build_optimizer(model, TrainConfig(steps=STEPS)),
                                        config)
    assert ckpt.step == GOOD and ckpt.path == good

    # resume both in one process (torch single-threaded here, as OMP_NUM_THREADS=1 in the torchrun workers)
    for run in (out, ref):
        capsys.readouterr()
        assert main(["train", *ARGS, "--steps", str(STEPS), "--resume", "--out", str(run)]) == 0
        err = capsys.readouterr().err
        assert "warning" not in err and "Traceback" not in err, err
    assert not list(ckpts.glob(".tmp-*"))  # the next save cleared the leftover
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert (out / "config.json").read_text() == (ref / "config.json").read_text()
    assert _records(out) == _records(ref) and [r[0] for r in _records(out)] == list(range(STEPS))
