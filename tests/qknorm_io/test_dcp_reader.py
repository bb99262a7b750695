"""dcp_reader.py and safe_pickle.py on a small DCP folder written here by torch itself: the safe reader
loads what torch wrote (tensors and plain values alike), and refuses, in one line naming the file, a
`.metadata` asking for any other class, declared sizes beyond the stored bytes, a shard cut short, load
transforms, and shard paths leading outside the folder (symlink, '..', a FIFO that would hang a reader)."""
from __future__ import annotations

import os
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.filesystem import _StorageInfo

from qknorm.io.dcp_reader import load_dcp, read_checked_metadata
from qknorm.errors import CheckpointError, UnsafeCheckpointError
from qknorm.io.safe_pickle import MetadataUnpickler, load_dcp_metadata, load_torch

from helpers.untrusted import ThenReal


def _state():
    g = torch.Generator().manual_seed(0)
    return {"model": {"w": torch.randn(8, 4, generator=g), "b": torch.randn(4, generator=g, dtype=torch.float64)},
            "optim": {"param_groups": [{"lr": 0.1, "betas": (0.9, 0.95), "name": "decay", "foreach": None}]}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("dcp") / "state"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(_state(), storage_writer=dcp.FileSystemWriter(str(d)), no_dist=True)
    return d


@pytest.fixture
def copy(folder, tmp_path) -> Path:
    d = tmp_path / "state"
    shutil.copytree(folder, d)
    return d


def _fresh():
    return {"model": {"w": torch.zeros(8, 4), "b": torch.zeros(4, dtype=torch.float64)},
            "optim": {"param_groups": [{"lr": 0.0, "betas": (0.0, 0.0), "name": "", "foreach": False}]}}


def _edit(d: Path, change) -> None:
    """Rewrite `.metadata` after `change(metadata)` (the metadata read with the allow-list reader)."""
    md = load_dcp_metadata(d / ".metadata")
    change(md)
    (d / ".metadata").write_bytes(pickle.dumps(md))


def test_loads_what_torch_wrote_tensors_and_plain_values(folder):
    state = _fresh()
    load_dcp(state, folder, read_checked_metadata(folder))
    want = _state()
    assert torch.equal(state["model"]["w"], want["model"]["w"]) and torch.equal(state["model"]["b"], want["model"]["b"])
    assert state["optim"]["param_groups"] == want["optim"]["param_groups"]


def test_the_allow_list_reader_builds_the_same_metadata_as_pickle(folder):
    with open(folder / ".metadata", "rb") as f:
        trusted = pickle.load(f)  # noqa: S301 - our own file, written above: the reference
    assert load_dcp_metadata(folder / ".metadata") == trusted


@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "eval"), ("builtins", "getattr"),
                                         ("torch", "load"), ("torch.distributed.checkpoint.metadata", "torch"),
                                         ("subprocess", "Popen"), ("posix", "system")])
def test_the_unpickler_refuses_everything_else_naming_file_and_class(module, name, tmp_path):
    import io

    with pytest.raises(UnsafeCheckpointError, match=rf"x\.metadata: refusing to load {module}\.{name}"):
        MetadataUnpickler(io.BytesIO(b""), source=str(tmp_path / "x.metadata")).find_class(module, name)


def test_a_poisoned_metadata_is_refused_and_runs_nothing(copy, tmp_path):
    marker = tmp_path / "marker"
    (copy / ".metadata").write_bytes(pickle.dumps(ThenReal(marker, load_dcp_metadata(copy / ".metadata"))))
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata: refusing to load _operator\.getitem"):
        read_checked_metadata(copy)
    assert not marker.exists()


def test_torch_files_are_read_weights_only(tmp_path):
    import io

    buf = io.BytesIO()
    torch.save({"a": ThenReal(tmp_path / "marker", 1)}, buf)
    with pytest.raises(UnsafeCheckpointError, match=r"f\.pt: refusing to load _operator\.getitem"):
        load_torch(buf.getvalue(), source=str(tmp_path / "f.pt"))
    assert not (tmp_path / "marker").exists()
    with pytest.raises(CheckpointError, match=r"g\.pt: not a readable torch file") as e:
        load_torch(b"\x80\x02garbage", source=str(tmp_path / "g.pt"))
    assert not isinstance(e.value, UnsafeCheckpointError)  # damage, not a refusal


# ---------------------------------------------------------------------------------------------- sizes
def _info(md, fqn):
    return next((i, v) for i, v in md.storage_data.items() if i.fqn == fqn)


def test_a_declared_shape_beyond_the_stored_bytes_is_refused_before_allocation(copy):
    def inflate(md):
        md.state_dict_metadata["model.w"].size = torch.Size([10 ** 6, 10 ** 6])
        md.state_dict_metadata["model.w"].chunks[0].sizes = torch.Size([10 ** 6, 10 ** 6])
    _edit(copy, inflate)
    with pytest.raises(CheckpointError, match=r"\.metadata: entry 'model\.w' declares shape \(1000000, 1000000\) "
                                              r"of torch\.float32 \(4,000,000,000,000 bytes\) but the shard files"):
        read_checked_metadata(copy)


def test_a_shard_cut_short_is_named(copy):
    shard = next(copy.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"{shard.name}: cut short: '.*' lies at bytes \d+\.\.\d+ but the file"):
        read_checked_metadata(copy)


def test_an_item_beyond_its_file_is_named(copy):
    def stretch(md):
        index, info = _info(md, "model.b")
        md.storage_data[index] = _StorageInfo(info.relative_path, info.offset, 10 ** 12)
    _edit(copy, stretch)
    with pytest.raises(CheckpointError, match=r"cut short: 'model\.b'"):
        read_checked_metadata(copy)


def test_a_chunk_outside_its_shape_is_refused(copy):
    def move(md):
        md.state_dict_metadata["model.b"].chunks[0].offsets = torch.Size([3])
    _edit(copy, move)
    with pytest.raises(CheckpointError, match=r"'model\.b' has a chunk outside its shape"):
        read_checked_metadata(copy)


def test_load_transforms_are_refused(copy):
    def compress(md):
        index, info = _info(md, "model.b")
        md.storage_data[index] = _StorageInfo(info.relative_path, info.offset, info.length, ["zstd"])
    _edit(copy, compress)
    with pytest.raises(CheckpointError, match=r"carries load transforms \['zstd'\]"):
        read_checked_metadata(copy)


# ---------------------------------------------------------------------------------------------- paths
def test_a_shard_path_with_dotdot_is_refused(copy, tmp_path):
    shard = next(copy.glob("*.distcp"))
    shutil.copy(shard, tmp_path / "outside.distcp")

    def escape(md):
        for index, info in list(md.storage_data.items()):
            md.storage_data[index] = _StorageInfo("../outside.distcp", info.offset, info.length)
    _edit(copy, escape)
    with pytest.raises(UnsafeCheckpointError, match=r"stored in '\.\./outside\.distcp', which is not a file name"):
        read_checked_metadata(copy)


def test_a_shard_symlinked_outside_is_refused(copy, tmp_path):
    shard = next(copy.glob("*.distcp"))
    shutil.move(shard, tmp_path / "outside.distcp")
    os.symlink(tmp_path / "outside.distcp", shard)
    with pytest.raises(UnsafeCheckpointError, match=rf"{shard.name}: leads outside"):
        read_checked_metadata(copy)


def test_a_symlink_inside_the_folder_is_fine(copy):
    shard = next(copy.glob("*.distcp"))
    shutil.move(shard, copy / "real.bin")
    os.symlink("real.bin", shard)
    state = _fresh()
    load_dcp(state, copy, read_checked_metadata(copy))
    assert torch.equal(state["model"]["w"], _state()["model"]["w"])


def test_a_fifo_is_refused_without_opening_it(copy):
    shard = next(copy.glob("*.distcp"))
    shard.unlink()
    os.mkfifo(shard)  # opening it for reading would block forever
    with pytest.raises(UnsafeCheckpointError, match=rf"{shard.name}: not a regular file"):
        read_checked_metadata(copy)


def test_the_folder_must_lie_in_the_directory_being_loaded(copy, tmp_path):
    (tmp_path / "ckpt").mkdir()
    os.symlink(copy, tmp_path / "ckpt" / "state")
    with pytest.raises(UnsafeCheckpointError, match=r"state: leads outside"):
        read_checked_metadata(tmp_path / "ckpt" / "state", root=tmp_path / "ckpt")


def test_dtypes_are_looked_up_without_importing_anything():
    """`torch.<name>` is allowed only for a dtype already in torch's namespace (no lazy submodule import)."""
    import io

    u = MetadataUnpickler(io.BytesIO(b""), source="m")
    assert u.find_class("torch", "bfloat16") is torch.bfloat16 and u.find_class("torch", "float8_e4m3fn")
    for name in ("_dynamo", "onnx", "hub", "Tensor"):
        with pytest.raises(UnsafeCheckpointError, match=rf"refusing to load torch\.{name}"):
            u.find_class("torch", name)
