"""A checkpoint from someone else cannot run code: every qknorm entry point that reads a training checkpoint,
against a pickle payload placed in each pickled part of both checkpoint formats.

The sharded checkpoint comes from a real 2-process run (forked gloo ranks running the CLI, built once per
module); the full one from a 1-process run. Each payload (helpers/untrusted.py) creates a marker file and then
returns the real value, and the checkpoint's sha256 table is rewritten to match, as an attacker would; the
first test shows each payload is live under torch's own readers. Each entry point must then exit 2 with one
line naming the file and the class it asked for, create no marker, and write nothing; an unaltered checkpoint
still loads, and a 2-process run resumed from its sharded checkpoint ends bit-identical to the run itself.
"""
from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import qknorm
from qknorm.cli import main
from qknorm.errors import UnsafeCheckpointError

from helpers.cli import run_cli
from helpers.ranks import run_ranks
from helpers.untrusted import (live_in_plain_pickle, live_in_torch_load, poison_byte_entry, poison_metadata,
                               poison_torch_file, reseal)

TRAIN = ["train", "--preset", "llama", "--batch-size", "4", "--seq-len", "32", "--no-progress", "--device", "cpu"]


def _cli(rank, args):
    return main(args)


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory) -> Path:
    """A 2-process run: sharded checkpoints at steps 2 and 4, and the final model."""
    run = tmp_path_factory.mktemp("sharded") / "run"
    assert run_ranks(_cli, [*TRAIN, "--steps", "4", "--ckpt-every", "2", "--out", str(run)]) == [0, 0]
    assert (run / "checkpoints" / "step_0000004" / "state" / ".metadata").is_file()
    return run


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """A 1-process run: a full-format checkpoint at step 2 (model.safetensors + trainer.pt)."""
    run = tmp_path_factory.mktemp("full") / "run"
    assert main([*TRAIN, "--steps", "2", "--ckpt-every", "2", "--out", str(run)]) == 0
    assert (run / "checkpoints" / "step_0000002" / "trainer.pt").is_file()
    return run


def _newest(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step_*"))[-1]


# attack name -> (which run, what it poisons, the file the refusal must name)
ATTACKS = {
    "metadata": ("sharded", lambda c, m: poison_metadata(c / "state", m), "state/.metadata"),
    "byte_entry": ("sharded", lambda c, m: poison_byte_entry(c / "state", m), ".distcp"),
    "rng": ("sharded", lambda c, m: poison_torch_file(c / "rng.pt", m), "rng.pt"),
    "trainer": ("full", lambda c, m: poison_torch_file(c / "trainer.pt", m), "trainer.pt"),
}


def _snapshot(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(d.rglob("*"))}


def test_each_payload_runs_under_torchs_own_readers(sharded_run, full_run, tmp_path):
    """The payloads are live: pickle.load / torch.load(weights_only=False) / dcp.load run them."""
    import torch.distributed.checkpoint as dcp

    ckpt = tmp_path / "c"
    shutil.copytree(_newest(sharded_run), ckpt)
    poison_metadata(ckpt / "state", tmp_path / "m1")
    md = live_in_plain_pickle((ckpt / "state" / ".metadata").read_bytes())
    assert (tmp_path / "m1").exists() and "model.embed.weight" in md.state_dict_metadata
    (tmp_path / "m1").unlink()
    config = qknorm.get_config("llama", "debug")
    state = {k: torch.empty_like(v) for k, v in qknorm.TransformerLM(config).state_dict().items()}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
        warnings.simplefilter("ignore")
        dcp.load({"model": state}, storage_reader=dcp.FileSystemReader(str(ckpt / "state")), no_dist=True)
    assert (tmp_path / "m1").exists()  # torch's reader ran it and loaded normally: nothing looked wrong
    shutil.rmtree(ckpt)
    shutil.copytree(_newest(sharded_run), ckpt)
    fqn, blob = poison_byte_entry(ckpt / "state", tmp_path / "m2")
    # what DCP's DefaultLoadPlanner.load_bytes does with it: torch.load(weights_only=False)
    assert isinstance(live_in_torch_load(blob), float) and (tmp_path / "m2").exists(), fqn
    rng = ckpt / "rng.pt"
    poison_torch_file(rng, tmp_path / "m3")
    assert "torch" in live_in_torch_load(rng.read_bytes())["rng"] and (tmp_path / "m3").exists()
    trainer = tmp_path / "trainer.pt"
    shutil.copy(_newest(full_run) / "trainer.pt", trainer)
    poison_torch_file(trainer, tmp_path / "m4")
    assert "optimizer" in live_in_torch_load(trainer.read_bytes()) and (tmp_path / "m4").exists()


# ---------------------------------------------------------------------------------------------- entry points
def _cli_case(command, args):
    def run(capsys, ckpt, run_dir, tmp):
        code, _, err = run_cli(command, [a.format(ckpt=ckpt, run=run_dir, tmp=tmp) for a in args], capsys)
        return code, err
    return run


def _load_model(capsys, ckpt, run_dir, tmp):
    with pytest.raises(UnsafeCheckpointError) as e:
        qknorm.load_model(ckpt)
    return 2, [f"qknorm: error: {e.value}"]


ENTRY_POINTS = {
    "inspect": _cli_case("inspect", ["{ckpt}", "--ids", "1,2,3"]),
    "convert_to_hf": _cli_case("convert", ["--to-hf", "{ckpt}", "--out", "{tmp}/hf"]),
    "load_model": _load_model,
    "generate": _cli_case("generate", ["{ckpt}", "--prompt", "ab", "--max-new-tokens", "2"]),
    "init_from": _cli_case("train", ["--init-from", "{ckpt}", "--out", "{tmp}/new", "--steps", "1",
                                     "--no-progress", "--device", "cpu"]),
    "resume": _cli_case("train", ["--out", "{run}", "--resume", "--no-progress", "--device", "cpu"]),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_poisoned_checkpoint_is_refused_in_one_line_and_runs_nothing(entry, attack, sharded_run, full_run,
                                                                         tmp_path, capsys, monkeypatch):
    which, poison, names = ATTACKS[attack]
    run = tmp_path / "run"
    shutil.copytree(sharded_run if which == "sharded" else full_run, run)
    ckpt = _newest(run)
    marker = tmp_path / "marker"
    poison(ckpt, marker)
    reseal(ckpt)
    before = _snapshot(run)
    monkeypatch.chdir(tmp_path)
    code, err = ENTRY_POINTS[entry](capsys, ckpt, run, tmp_path)
    assert not marker.exists()
    assert code == 2 and len(err) == 1, err
    assert "refusing to load" in err[0] and "getitem" in err[0] and names in err[0], err[0]
    assert _snapshot(run) == before  # nothing written, nothing moved aside
    assert not (tmp_path / "hf").exists() and not (tmp_path / "new").exists()


def test_refused_under_two_ranks_too(sharded_run, tmp_path):
    """A resume under torchrun: both ranks refuse (no hang, no fallback to the older checkpoint)."""
    run = tmp_path / "run"
    shutil.copytree(sharded_run, run)
    poison_byte_entry(_newest(run) / "state", tmp_path / "marker")
    reseal(_newest(run))
    before = _snapshot(run)
    assert run_ranks(_cli, ["train", "--out", str(run), "--resume", "--no-progress", "--device", "cpu"]) == [2, 2]
    assert not (tmp_path / "marker").exists() and _snapshot(run) == before


# ---------------------------------------------------------------------------------------------- unaltered
def test_an_unaltered_sharded_checkpoint_loads_through_every_entry_point(sharded_run, tmp_path, capsys):
    ckpt = _newest(sharded_run)
    final = load_file(str(sharded_run / "model.safetensors"))
    got = qknorm.load_model(ckpt).state_dict()
    assert final.keys() == got.keys() and all(torch.equal(final[k], got[k]) for k in final)
    assert run_cli("inspect", [str(ckpt), "--ids", "1,2,3"], capsys)[0] == 0
    assert run_cli("generate", [str(ckpt), "--prompt", "ab", "--max-new-tokens", "2"], capsys)[0] == 0
    assert run_cli("convert", ["--to-hf", str(ckpt), "--out", str(tmp_path / "hf")], capsys)[0] == 0


def test_resuming_a_sharded_checkpoint_under_two_ranks_is_bit_identical(sharded_run, tmp_path):
    """The run resumed from its step-2 checkpoint (byte entries read weights-only, .metadata by the allow-list
    reader) ends with the same weights, bit for bit, and the same losses as the run that never stopped."""
    run = tmp_path / "run"
    shutil.copytree(sharded_run, run)
    shutil.rmtree(run / "checkpoints" / "step_0000004")
    for name in ("model.safetensors", "config.json"):
        (run / name).unlink()
    assert run_ranks(_cli, ["train", "--out", str(run), "--resume", "--no-progress", "--device", "cpu"]) == [0, 0]
    want, got = load_file(str(sharded_run / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    losses = [line.split('"loss": ')[1].split(",")[0] for line in (run / "metrics.jsonl").read_text().splitlines()]
    ref = [line.split('"loss": ')[1].split(",")[0] for line in (sharded_run / "metrics.jsonl").read_text().splitlines()]
    assert losses == ref and len(ref) == 4
