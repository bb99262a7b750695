"""`qknorm train --tp N`: every bad degree is one line on stderr, exit status 2, before anything is written and
before any process group is joined (so a torchrun job fails at once on every rank instead of hanging).

Under torchrun the checks see the job through its environment (WORLD_SIZE, RANK); here that environment is
set for the in-process command, which is all the checks read (the process group is created lazily, later).
"""
import subprocess
import sys

import pytest
import torch.distributed as dist

from qknorm.cli import main

from helpers.load import scaled
from helpers.ranks import python_env

ARGS = ["train", "--preset", "olmo2", "--steps", "2", "--batch-size", "4", "--seq-len", "16", "--device", "cpu",
        "--no-progress"]


@pytest.mark.parametrize("world, flags, message", [
    (1, ["--tp", "3"], "error: n_heads=4 is not divisible by --tp=3: tensor parallelism splits n_heads evenly"),
    (1, ["--tp", "2"], "error: --tp=2 needs 2 processes (one per shard), this run has 1: launch with torchrun "
                       "--nproc_per_node=2"),
    (4, ["--tp", "8"], "error: n_heads=4 is not divisible by --tp=8"),
    (4, ["--tp", "4"], "error: n_kv_heads=2 is not divisible by --tp=4"),  # GQA: kv heads cannot split 4 ways
    (2, ["--tp", "2", "--set", "n_kv_heads=1"], "error: n_kv_heads=1 is not divisible by --tp=2"),  # MQA
    (4, ["--tp", "2", "--set", "vocab_size=257"], "error: vocab_size=257 is not divisible by --tp=2: tensor "
     "parallelism splits vocab_size evenly over the ranks; choose a --tp that divides it or pad vocab_size to 258"),
    (6, ["--tp", "4", "--set", "n_heads=8", "--set", "n_kv_heads=4", "--set", "d_ff=256"],
     "error: --tp=4 does not divide the number of processes (6)"),
    (2, ["--tp", "4", "--set", "n_heads=8", "--set", "n_kv_heads=4", "--set", "d_ff=256"],
     "error: --tp=4 needs 4 processes (one per shard), this run has 2"),
    (4, ["--tp", "2"], "error: --parallel=ddp cannot be combined with --tp=2 over 4 processes; data x tensor "
                       "parallelism is --parallel=fsdp"),
])
def test_bad_tp_is_one_line_before_anything(world, flags, message, tmp_path, monkeypatch, capsys):
    if world > 1:  # what torchrun sets; no MASTER_ADDR: joining a group would fail, so none may be joined
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("LOCAL_RANK", "0")
    out = tmp_path / "run"
    assert main([*ARGS, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qknorm train: " + message), err
    assert not out.exists() and not dist.is_initialized()


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_tp_must_be_a_positive_integer(value, capsys):
    with pytest.raises(SystemExit) as e:
        main([*ARGS, "--tp", value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --tp: expected a positive integer" in err[0]


def test_tp3_in_one_process_exits_2_in_one_line(tmp_path):
    """The acceptance check's own command, as a user types it."""
    proc = subprocess.run([sys.executable, "-m", "qknorm", "train", "--preset", "olmo2", "--size", "debug", "--tp",
                           "3", "--steps", "6", "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          env=python_env(), timeout=scaled(120))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("qknorm train: error: n_heads=4 is not divisible "
                                                                   "by --tp=3"), proc.stderr
    assert not (tmp_path / "run").exists()
