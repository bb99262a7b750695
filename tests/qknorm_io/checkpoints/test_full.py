"""Training checkpoints: atomic layout, keep-last-K, verification, fallback, config mismatch, RNG, metrics log."""

import json
import math
import random

import numpy as np
import pytest
import torch

import qknorm
from qknorm.errors import CheckpointError, UnsafeCheckpointError
from qknorm.io.checkpoints.full import load_checkpoint, load_latest, save_checkpoint
from qknorm.io.checkpoints.layout import CheckpointMismatch, list_checkpoints
from qknorm.io.checkpoints.rng import capture_rng_state, restore_rng_state
from qknorm.train.metrics_log import MetricsLog
from qknorm.train.step_record import StepRecord

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

CFG = qknorm.get_config("llama", "debug")


def _save(root, step, model=None, keep_last=3, config=CFG):
    model = model or qknorm.TransformerLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    return save_checkpoint(root, step, model_state=model.state_dict(), optimizer_state=opt.state_dict(),
                           model_config=config, train_config={"lr": 1e-3}, extra={"init_loss": 5.5},
                           keep_last=keep_last), model, opt


def test_layout_roundtrip_and_latest_pointer(tmp_path):
    path, model, opt = _save(tmp_path, 7)
    assert path.name == "step_0000007" and (tmp_path / "latest").read_text().strip() == "step_0000007"
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.safetensors", "trainer.pt"]
    meta = json.loads((path / "meta.json").read_text())
    assert meta["step"] == 7 and meta["model_config"] == CFG.to_dict() and meta["train_config"] == {"lr": 1e-3}
    assert set(meta["files"]) == {"model.safetensors", "trainer.pt"}
    ck = load_checkpoint(path, CFG)
    assert ck.step == 7 and ck.extra == {"init_loss": 5.5}
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model_state[k], v)
    for k, st in opt.state_dict()["state"].items():
        assert torch.equal(ck.optimizer_state["state"][k]["exp_avg"], st["exp_avg"])
    assert not list(tmp_path.glob(".tmp-*"))


def test_keep_last_prunes_oldest_and_ignores_stale_temp_dirs(tmp_path):
    (tmp_path / ".tmp-step_0000099-1").mkdir(parents=True)  # left by a crash mid-write
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert not list(tmp_path.glob(".tmp-*"))
    _save(tmp_path, 4, keep_last=2)  # the same step again replaces it
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]


@pytest.mark.parametrize("damage", ["truncate_weights", "flip_byte", "drop_meta", "bad_meta", "drop_trainer"])
def test_damaged_newest_falls_back_with_a_warning(tmp_path, damage):
    _save(tmp_path, 1)
    newest, _, _ = _save(tmp_path, 2)
    w = newest / "model.safetensors"
    if damage == "truncate_weights":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif damage == "flip_byte":
        b = bytearray(w.read_bytes())
        b[-1] ^= 0xFF
        w.write_bytes(bytes(b))
    elif damage == "drop_meta":
        (newest / "meta.json").unlink()
    elif damage == "bad_meta":
        (newest / "meta.json").write_text("{not json")
    else:
        (newest / "trainer.pt").unlink()
    with pytest.warns(RuntimeWarning, match="skipping damaged checkpoint step_0000002"):
        ck = load_latest(tmp_path, CFG)
    assert ck.step == 1
    # moved aside so keep-last pruning never counts it
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1] and (tmp_path / "step_0000002.corrupt").is_dir()


def test_no_usable_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        load_latest(tmp_path, CFG)
    only, _, _ = _save(tmp_path, 3)
    (only / "trainer.pt").write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning), pytest.raises(CheckpointError, match=r"no usable checkpoint \(1 damaged"):
        load_latest(tmp_path, CFG)


def test_checksum_valid_but_unparseable_file_is_damage(tmp_path):
    path, _, _ = _save(tmp_path, 1)
    meta = json.loads((path / "meta.json").read_text())
    (path / "trainer.pt").write_bytes(b"x" * 10)
    import hashlib

    meta["files"]["trainer.pt"] = {"size": 10, "sha256": hashlib.sha256(b"x" * 10).hexdigest()}
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"trainer.pt: not a readable torch file") as e:
        load_checkpoint(path)
    assert not isinstance(e.value, UnsafeCheckpointError)  # damage (the fallback skips it), not a refusal


def test_different_model_config_names_the_field_and_does_not_fall_back(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    other = CFG.replace(qk_norm="head")
    with pytest.raises(CheckpointMismatch, match=r"saved with qk_norm='none', this run has qk_norm='head'"):
        load_latest(tmp_path, other)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1, 2]  # nothing moved aside
    assert issubclass(CheckpointMismatch, CheckpointError)


def test_rng_state_roundtrip():
    state = capture_rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_metrics_log_truncates_to_the_checkpoint_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path, resume_step=None)
    for step in range(5):
        log.write(StepRecord(step=step, q_rms=(math.inf,), loss=float("nan") if step == 1 else 1.0 / (step + 1),
                             lr=1e-3, grad_norm=1.0, tokens=8 * (step + 1)))
    log.close()
    with open(path, "a") as f:
        f.write('{"step": 5, "loss"')  # a line cut by a crash
    lines = path.read_text().splitlines()
    assert json.loads(lines[1]) == {"step": 1, "q_rms": [None], "loss": None, "lr": 1e-3, "grad_norm": 1.0,
                                    "tokens": 16}  # strict JSON
    log = MetricsLog(path, resume_step=3)
    assert [r.step for r in log.history] == [0, 1, 2] and math.isnan(log.history[1].loss)
    log.write(StepRecord(step=3, loss=0.5, lr=1e-3, grad_norm=1.0, tokens=32))
    log.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2, 3]
