"""An OLMo-core checkpoint from someone else cannot run code, declare more than it holds, or read outside
its step directory: `qknorm convert --from-olmo-core`, `qknorm inspect` and `qknorm.from_olmo_core` against a
pickle payload in `.metadata`, in a non-tensor entry of a shard (an optimizer param-group value), and in
OLMo-core's own trainer state file (train/rank0.pt, which qknorm never opens). Payloads: helpers/untrusted.py
(each creates a marker file, then returns the real value, so a reader that runs it still loads normally)."""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import qknorm
from qknorm.errors import CheckpointError, UnsafeCheckpointError
from qknorm.io.safe_pickle import load_dcp_metadata

from helpers.cli import run_cli
from helpers.olmo_core_models import build, input_ids, save_native
from helpers.untrusted import live_in_torch_load, poison_byte_entry, poison_metadata, poison_torch_file


@pytest.fixture(scope="module")
def step(tmp_path_factory) -> Path:
    """OLMo-core's olmo2_mha with AdamW state, saved as a trainer step directory (+ a train/rank0.pt)."""
    d = save_native(build("olmo2_mha"), "olmo2_mha", tmp_path_factory.mktemp("o") / "step3")
    (d / "train").mkdir()
    torch.save({"global_step": 3, "rng": torch.get_rng_state()}, d / "train" / "rank0.pt")
    return d


def _copy(step: Path, tmp_path: Path) -> Path:
    d = tmp_path / "step3"
    shutil.copytree(step, d)
    return d


def _entry(name, d, tmp_path, capsys):
    if name == "from_olmo_core":
        with pytest.raises(UnsafeCheckpointError) as e:
            qknorm.from_olmo_core(d)
        return 2, [f"error: {e.value}"]
    if name == "convert":
        code, _, err = run_cli("convert", ["--from-olmo-core", str(d), "--out", str(tmp_path / "out")], capsys)
    else:
        code, _, err = run_cli("inspect", [str(d), "--ids", "1,2,3"], capsys)
    return code, err


@pytest.mark.parametrize("attack", ["metadata", "byte_entry"])
@pytest.mark.parametrize("entry", ["convert", "from_olmo_core", "inspect"])
def test_a_poisoned_checkpoint_is_refused_in_one_line_and_runs_nothing(step, tmp_path, capsys, monkeypatch,
                                                                         entry, attack):
    d = _copy(step, tmp_path)
    marker = tmp_path / "marker"
    if attack == "metadata":
        poison_metadata(d / "model_and_optim", marker)
    else:
        fqn, blob = poison_byte_entry(d / "model_and_optim", marker)
        assert fqn.startswith("optim.") and isinstance(live_in_torch_load(blob), float)  # live (and then removed)
        assert marker.exists()
        marker.unlink()
    monkeypatch.chdir(tmp_path)
    code, err = _entry(entry, d, tmp_path, capsys)
    assert not marker.exists()
    assert code == 2 and len(err) == 1 and "refusing to load" in err[0] and "getitem" in err[0], err
    assert (".metadata" if attack == "metadata" else ".distcp") in err[0]
    assert not (tmp_path / "out").exists()


def test_the_trainer_state_file_is_never_opened(step, tmp_path, capsys):
    """train/rank0.pt is not model state: qknorm does not read it, so a payload there never runs."""
    d = _copy(step, tmp_path)
    poison_torch_file(d / "train" / "rank0.pt", tmp_path / "marker")
    ours = qknorm.from_olmo_core(d)
    assert run_cli("convert", ["--from-olmo-core", str(d), "--out", str(tmp_path / "out")], capsys)[0] == 0
    assert not (tmp_path / "marker").exists()
    with torch.no_grad():
        assert torch.equal(ours(input_ids()), build("olmo2_mha")(input_ids()))  # and the model is right


def test_a_metadata_declaring_more_than_its_shards_hold_is_one_line(step, tmp_path, capsys):
    d = _copy(step, tmp_path)
    path = d / "model_and_optim" / ".metadata"
    md = load_dcp_metadata(path)
    entry = md.state_dict_metadata["model.embeddings.weight"]
    entry.size = entry.chunks[0].sizes = torch.Size([10 ** 7, 10 ** 6])  # 4e13 bytes
    path.write_bytes(pickle.dumps(md))
    code, _, err = run_cli("convert", ["--from-olmo-core", str(d), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err) == 1, err
    assert f"{path}: entry 'model.embeddings.weight' declares shape (10000000, 1000000)" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_shard_symlinked_from_outside_the_step_directory_is_refused(step, tmp_path):
    d = _copy(step, tmp_path)
    shard = max((d / "model_and_optim").glob("*.distcp"), key=lambda p: p.stat().st_size)
    shutil.move(shard, tmp_path / "elsewhere.distcp")
    os.symlink(tmp_path / "elsewhere.distcp", shard)
    with pytest.raises(UnsafeCheckpointError, match=rf"{shard.name}: leads outside"):
        qknorm.from_olmo_core(d)


def test_a_dcp_folder_symlinked_from_outside_the_step_directory_is_refused(step, tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    shutil.copy(step / "config.json", d / "config.json")
    os.symlink(step / "model_and_optim", d / "model_and_optim")
    with pytest.raises(UnsafeCheckpointError, match=r"model_and_optim: leads outside"):
        qknorm.from_olmo_core(d)
    assert isinstance(qknorm.from_olmo_core(d / "model_and_optim"), qknorm.TransformerLM)  # named directly: fine


def test_refusals_are_checkpoint_errors():
    assert issubclass(UnsafeCheckpointError, CheckpointError)
