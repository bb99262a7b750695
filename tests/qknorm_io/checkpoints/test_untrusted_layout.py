"""Declared sizes and paths in both checkpoint formats, checked before anything is allocated or read: a model
config or a `.metadata` declaring more than the files hold, a shard cut short (its sha256 table rewritten to
match), and file names or symlinks leading outside the directory being loaded, each one line naming the file.
Checkpoints are written in this process (a 1-process sharded checkpoint has the same files as a 2-process
one; test_untrusted.py covers those)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import qknorm
from qknorm.cli import main
from qknorm.errors import CheckpointError, UnsafeCheckpointError
from qknorm.io.safe_pickle import load_dcp_metadata
from qknorm.io.checkpoints.full import save_checkpoint
from qknorm.io.checkpoints.sharded import save_sharded
from qknorm.train.runtime import Runtime

from helpers.cli import run_cli
from helpers.untrusted import reseal

CFG = qknorm.get_config("llama", "debug")


def _model_and_opt():
    torch.manual_seed(0)
    model = qknorm.TransformerLM(CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    return model, opt


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    model, opt = _model_and_opt()
    sharded = save_sharded(root / "s", 1, Runtime("cpu"), model, opt, model_config=CFG, train_config={})
    full = save_checkpoint(root / "f", 1, model_state=model.state_dict(), optimizer_state=opt.state_dict(),
                           model_config=CFG, train_config={})
    qknorm.save_model(model, root / "m")
    return {"sharded": sharded, "full": full, "model": root / "m", "weights": model.state_dict()}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _set_config(path: Path, name: str, **changes) -> None:
    doc = json.loads((path / name).read_text())
    cfg = doc["model_config"] if "model_config" in doc else doc["qknorm_config"]
    cfg.update(changes)
    (path / name).write_text(json.dumps(doc))


def test_unaltered_checkpoints_load(made):
    for kind in ("sharded", "full", "model"):
        got = qknorm.load_model(made[kind]).state_dict()
        assert all(torch.equal(got[k], v) for k, v in made["weights"].items()), kind


# ---------------------------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("kind,name", [("sharded", "meta.json"), ("full", "meta.json"), ("model", "config.json")])
def test_a_config_declaring_more_than_the_files_hold_allocates_nothing(made, tmp_path, kind, name):
    """d_model 10**9 would need 10**12 bytes for the embedding alone: one line, not an allocation failure."""
    path = _copy(made[kind], tmp_path / "c")
    _set_config(path, name, d_model=10 ** 9)
    with pytest.raises(CheckpointError, match=r"1000000000") as e:
        qknorm.load_model(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_a_metadata_declaring_more_than_its_shards_hold_is_named(made, tmp_path, capsys):
    path = _copy(made["sharded"], tmp_path / "c")
    md = load_dcp_metadata(path / "state" / ".metadata")
    entry = md.state_dict_metadata["model.embed.weight"]
    entry.size = entry.chunks[0].sizes = torch.Size([256 * 10 ** 6, 64])
    (path / "state" / ".metadata").write_bytes(pickle.dumps(md))
    reseal(path)
    code, _, err = run_cli("inspect", [str(path), "--ids", "1,2"], capsys)
    assert code == 2 and len(err) == 1 and ".metadata: entry 'model.embed.weight' declares shape" in err[0], err


def test_a_shard_cut_short_is_named_even_with_its_checksum_rewritten(made, tmp_path, capsys):
    path = _copy(made["sharded"], tmp_path / "c")
    shard = next((path / "state").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    reseal(path)
    code, _, err = run_cli("convert", ["--to-hf", str(path), "--out", str(tmp_path / "hf")], capsys)
    assert code == 2 and len(err) == 1 and f"{shard}: cut short" in err[0], err
    assert not (tmp_path / "hf").exists()


# ---------------------------------------------------------------------------------------------- paths
@pytest.mark.parametrize("kind", ["sharded", "full"])
def test_a_file_table_entry_leading_outside_is_refused(made, tmp_path, kind):
    path = _copy(made[kind], tmp_path / "ck" / "c")
    (tmp_path / "secret.txt").write_text("not model state")
    meta = json.loads((path / "meta.json").read_text())
    meta["files"]["../../secret.txt"] = {}
    (path / "meta.json").write_text(json.dumps(meta))
    reseal(path)
    with pytest.raises(UnsafeCheckpointError, match=r"names the file '\.\./\.\./secret\.txt', which is not a path"):
        qknorm.load_model(path)


@pytest.mark.parametrize("kind,rel", [("sharded", "state/__0_0.distcp"), ("sharded", "state/.metadata"),
                                      ("sharded", "rng.pt"), ("full", "model.safetensors"), ("full", "trainer.pt"),
                                      ("model", "model.safetensors"), ("model", "config.json")])
def test_a_symlink_leading_outside_is_refused(made, tmp_path, kind, rel):
    path = _copy(made[kind], tmp_path / "c")
    outside = tmp_path / "elsewhere" / Path(rel).name
    outside.parent.mkdir()
    shutil.move(path / rel, outside)
    os.symlink(outside, path / rel)
    with pytest.raises(UnsafeCheckpointError, match=rf"{Path(rel).name}: leads outside"):
        qknorm.load_model(path)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """A 1-process run with a full checkpoint at step 2."""
    run = tmp_path_factory.mktemp("run") / "run"
    args = ["train", "--preset", "llama", "--steps", "2", "--ckpt-every", "2", "--batch-size", "2", "--seq-len", "16",
            "--no-progress", "--device", "cpu", "--out", str(run)]
    assert main(args) == 0
    return run


def _tree(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): p.read_bytes() if p.is_file() and not p.is_symlink() else "link/dir"
            for p in sorted(d.rglob("*"))}


def test_a_run_record_declaring_a_huge_model_is_one_line_before_anything_is_built(small_run, tmp_path, capsys):
    """`train --resume` builds the model run.json describes before it reads a checkpoint: d_model 10**9 there
    is refused by the preflight (2 bytes a parameter > this machine's memory), not an allocation failure."""
    run = _copy(small_run, tmp_path / "run")
    doc = json.loads((run / "run.json").read_text())
    doc["model_config"]["d_model"] = 10 ** 9
    (run / "run.json").write_text(json.dumps(doc))
    before = _tree(run)
    code, _, err = run_cli("train", ["--out", str(run), "--resume", "--no-progress", "--device", "cpu"], capsys)
    assert code == 2 and len(err) == 1 and "d_model=1000000000" in err[0] and "GB of memory on cpu" in err[0], err
    assert _tree(run) == before


def test_a_run_whose_checkpoint_is_symlinked_from_elsewhere_is_refused(small_run, tmp_path, capsys):
    run = _copy(small_run, tmp_path / "run")
    ckpt = run / "checkpoints" / "step_0000002"
    shutil.move(ckpt, tmp_path / "foreign")
    os.symlink(tmp_path / "foreign", ckpt)
    for name in ("model.safetensors", "config.json"):
        (run / name).unlink()
    with pytest.raises(UnsafeCheckpointError, match=r"step_0000002: leads outside"):
        qknorm.load_model(run)
    before = _tree(run)
    code, _, err = run_cli("train", ["--out", str(run), "--resume", "--no-progress", "--device", "cpu"], capsys)
    assert code == 2 and len(err) == 1 and "step_0000002: leads outside" in err[0], err
    assert _tree(run) == before  # nothing moved aside, nothing written
