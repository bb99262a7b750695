"""Sharded (DCP) checkpoints: atomic write, resharding between world sizes, both formats, damage fallback.

Ranks are forked gloo processes (helpers.ranks.run_ranks); the single-process side runs in the test process.
"""
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import qknorm
from qknorm.errors import CheckpointError
from qknorm.io.checkpoints.layout import CheckpointMismatch, list_checkpoints
from qknorm.train.checkpointing import load_training_checkpoint, save_training_checkpoint
from qknorm.io.checkpoints.sharded import is_sharded, save_sharded
from qknorm.train.distributed import DistributedRuntime, fqn_to_index_optim_state
from qknorm.train import TrainConfig
from qknorm.train.optim import build_optimizer
from qknorm.train.runtime import Runtime

from helpers.ranks import run_ranks

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

MODEL = qknorm.get_config("gemma3", "debug")  # tied embeddings, sandwich norms, per-head QK-norm: the odd cases
CFG = TrainConfig(steps=4, warmup_steps=0, batch_size=4, seq_len=16, progress=False, weight_decay=0.1)
META = dict(model_config=MODEL, train_config=CFG.to_dict(), extra={"init_loss": 5.0})


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, MODEL.vocab_size, (CFG.batch_size, CFG.seq_len + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def _fresh(rt):
    torch.manual_seed(0)
    model = qknorm.TransformerLM(MODEL)
    wrapped = rt.wrap(model)
    return model, wrapped, build_optimizer(model, CFG)


def _steps(rt, wrapped, opt, n=2):
    x, y = _batch()
    rows = slice(rt.rank * CFG.batch_size // rt.world_size, (rt.rank + 1) * CFG.batch_size // rt.world_size)
    for _ in range(n):
        logits = wrapped(x[rows])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), y[rows].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _full_state(rt, wrapped, opt):
    """A deep copy (the single-process runtime returns the live tensors) of the full model and optimizer state."""
    import copy

    return copy.deepcopy((rt.model_state_dict(wrapped), rt.optimizer_state_dict(wrapped, opt)))


def _assert_same_state(a, b):
    (ma, oa), (mb, ob) = a, b
    assert ma.keys() == mb.keys()
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for name, v in oa["state"][i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(ob["state"][i][name])), (i, name)
    assert [g["params"] for g in oa["param_groups"]] == [g["params"] for g in ob["param_groups"]]


def _save_rank(rank, root, parallel):
    rt = DistributedRuntime("cpu", parallel)
    _, wrapped, opt = _fresh(rt)
    _steps(rt, wrapped, opt)
    save_sharded(root, 2, rt, wrapped, opt, **META)
    _steps(rt, wrapped, opt, n=1)
    save_training_checkpoint(rt, root, 3, wrapped, opt, **META)
    return _full_state(rt, wrapped, opt)


def _load_rank(rank, root, parallel):
    rt = DistributedRuntime("cpu", parallel)
    _, wrapped, opt = _fresh(rt)
    ckpt = load_training_checkpoint(rt, root, wrapped, opt, MODEL)
    return ckpt.step, _full_state(rt, wrapped, opt)


def _load_single(root):
    rt = Runtime("cpu")
    model, wrapped, opt = _fresh(rt)
    ckpt = load_training_checkpoint(rt, root, wrapped, opt, MODEL)
    return ckpt, _full_state(rt, wrapped, opt)


def test_fsdp_sharded_checkpoint_resumes_in_one_process_and_under_ddp(tmp_path):
    root = tmp_path / "checkpoints"
    saved = run_ranks(_save_rank, root, "fsdp")[0]  # rank 0 holds the gathered full state
    assert [s for s, _ in list_checkpoints(root)] == [2, 3] and all(is_sharded(p) for _, p in list_checkpoints(root))
    assert not list(root.glob(".tmp-*")) and (root / "latest").read_text().strip() == "step_0000003"
    meta = json.loads((root / "step_0000003" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["parallel"] == "fsdp" and meta["step"] == 3
    assert {"rng.pt", "state/.metadata", "state/__0_0.distcp", "state/__1_0.distcp"} <= set(meta["files"])

    ckpt, single = _load_single(root)  # 2 ranks -> 1 process, no process group
    assert ckpt.step == 3 and ckpt.extra == {"init_loss": 5.0}
    _assert_same_state(single, saved)

    step, ddp = run_ranks(_load_rank, root, "ddp")[0]  # FSDP-saved -> DDP-resumed
    assert step == 3
    _assert_same_state(ddp, saved)


def test_full_checkpoint_of_one_process_resumes_under_fsdp(tmp_path):
    root = tmp_path / "checkpoints"
    rt = Runtime("cpu")
    _, wrapped, opt = _fresh(rt)
    _steps(rt, wrapped, opt)
    save_training_checkpoint(rt, root, 2, wrapped, opt, **META)
    assert not is_sharded(root / "step_0000002") and (root / "step_0000002" / "model.safetensors").is_file()
    single = _full_state(rt, wrapped, opt)
    step, fsdp = run_ranks(_load_rank, root, "fsdp")[0]
    assert step == 2
    _assert_same_state(fsdp, single)


def test_damaged_sharded_checkpoint_falls_back_and_mismatch_raises(tmp_path):
    root = tmp_path / "checkpoints"
    rt = Runtime("cpu")
    _, wrapped, opt = _fresh(rt)
    _steps(rt, wrapped, opt)
    save_sharded(root, 2, rt, wrapped, opt, **META)  # a one-process sharded checkpoint is legal too
    good = _full_state(rt, wrapped, opt)
    _steps(rt, wrapped, opt, n=1)
    save_sharded(root, 3, rt, wrapped, opt, **META)
    shard = root / "step_0000003" / "state" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.warns(RuntimeWarning, match=r"skipping damaged checkpoint step_0000003: .*__0_0.distcp: truncated"):
        ckpt, state = _load_single(root)
    assert ckpt.step == 2 and (root / "step_0000003.corrupt").is_dir()
    _assert_same_state(state, good)

    other = qknorm.get_config("gemma3", "debug", qk_norm="none")
    with pytest.raises(CheckpointMismatch, match=r"qk_norm='head', this run has qk_norm='none'"):
        load_training_checkpoint(rt, root, wrapped, opt, other)

    meta_file = root / "step_0000002" / "state" / ".metadata"
    meta_file.write_bytes(bytes(b ^ 0xFF for b in meta_file.read_bytes()))  # same size, every bit flipped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match=r"no usable checkpoint \(1 damaged; newest: .*checksum mismatch"):
            _load_single(root)


def test_optimizer_state_in_index_form_matches_torch(tmp_path):
    """The gathered optimizer state has optimizer.state_dict()'s layout, so every runtime can read it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    rt = Runtime("cpu")
    model, wrapped, opt = _fresh(rt)
    _steps(rt, wrapped, opt)
    ours = fqn_to_index_optim_state(get_optimizer_state_dict(model, opt))
    _assert_same_state(({}, ours), ({}, opt.state_dict()))
    assert [g["name"] for g in ours["param_groups"]] == ["decay", "no_decay"]
