"""`qknorm train --tensorboard` / `qknorm study --tensorboard`: the event files hold the numbers metrics.jsonl (a
run) and runs/<name>.json (a study) hold, read back with TensorBoard's own reader (EventAccumulator); without the
tensorboard package: one line naming the install command, exit 2, nothing written."""
import json
import math
import sys

import pytest

from qknorm import study
from qknorm.cli import main
from qknorm.study import RunHistory, RunRecord

pytest.importorskip("tensorboard", reason="the tensorboard extra (run.sh installs it for the tests)")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY = ["--preset", "llama", "--steps", "3", "--batch-size", "4", "--seq-len", "16", "--device", "cpu",
        "--no-progress", "--set", "stats_every=1", "--set", "n_layers=2", "--set", "d_model=32"]


def _events(log_dir):
    """{tag: {step: value}} of every scalar in the event files under log_dir."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def _same(event_value, json_value):
    """TensorBoard stores float32; metrics.jsonl writes non-finite numbers as null."""
    if json_value is None:
        return not math.isfinite(event_value)
    return event_value == pytest.approx(json_value, rel=1e-6, abs=1e-30)


def test_train_writes_the_metrics_of_every_step_as_tensorboard_scalars(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--tensorboard"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    ev = _events(out / "tb")
    pairs = {"train/loss": "loss", "train/lr": "lr", "train/grad_norm": "grad_norm",
             "attention/max_logit": "max_attn_logit", "val/loss": "val_loss"}
    for tag, key in pairs.items():
        want = {r["step"]: r[key] for r in rows if key in r}
        assert want, key
        assert set(ev[tag]) == set(want), tag
        assert all(_same(ev[tag][s], v) for s, v in want.items()), (tag, ev[tag], want)
    for key, prefix in (("q_rms", "q_rms/layer_"), ("k_rms", "k_rms/layer_"),
                        ("attn_logit_per_layer", "attention/max_logit/layer_")):
        for r in rows:
            assert len(r[key]) == 2
            for i, v in enumerate(r[key]):
                assert _same(ev[f"{prefix}{i:02d}"][r["step"]], v), (key, i, r["step"])


def test_without_tensorboard_one_line_names_the_extra_and_nothing_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now raises ImportError
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--tensorboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'qknorm[tensorboard]'" in err[0], err
    assert not out.exists()
    assert main(["study", "--quick", "--steps", "2", "--out", str(tmp_path / "s"), "--tensorboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'qknorm[tensorboard]'" in err[0], err
    assert not (tmp_path / "s").exists()


def _runner(spec):
    """A fake run with every column TensorBoard shows (two layers, a non-finite value, validation at the end)."""
    lr = spec.lr
    h = RunHistory(step=[0, 1, 2], loss=[5.0, 4.5 + lr, None], lr=[lr / 3, lr, lr / 2], grad_norm=[1.5, 0.25, 3.0],
                   stats_step=[0, 2], max_attn_logit=[7.0, 9.5], attn_logit_per_layer=[[7.0, 6.0], [9.5, 8.0]],
                   q_rms=[[1.0, 1.25], [2.0, None]], k_rms=[[0.5, 0.75], [1.5, 1.125]],
                   attn_entropy=[[1.0, 1.0], [0.5, 0.5]], log_z=[3.0, 3.5], val_step=[2], val_loss=[4.25])
    return RunRecord(variant=spec.variant, lr=lr, seed=spec.seed, init_loss=5.0, final_loss=4.5, val_loss=4.25,
                     max_attn_logit=9.5, steps=3, history=h)


def test_study_writes_each_runs_stored_history_as_tensorboard_scalars(tmp_path):
    out = tmp_path / "s"
    plan = study.make_plan("quick", lrs=(1e-3, 1e-2), workers=1)
    study.run_study(plan, out, runner=_runner, report=False, log=lambda _: None, tensorboard=True)
    names = sorted(p.stem for p in (out / "runs").glob("*.json"))
    assert len(names) == 2 * len(plan.variants)
    assert sorted(p.name for p in (out / "tb").iterdir()) == names
    for name in names:
        h = json.loads((out / "runs" / f"{name}.json").read_text())  # the columns at the top level
        ev = _events(out / "tb" / name)
        for tag, steps, values in (("train/loss", h["step"], h["loss"]), ("train/lr", h["step"], h["lr"]),
                                   ("train/grad_norm", h["step"], h["grad_norm"]),
                                   ("attention/max_logit", h["stats_step"], h["max_attn_logit"]),
                                   ("val/loss", h["val_step"], h["val_loss"])):
            assert sorted(ev[tag]) == steps, tag
            assert all(_same(ev[tag][s], v) for s, v in zip(steps, values)), (tag, ev[tag], values)
        for key, prefix in (("q_rms", "q_rms/layer_"), ("k_rms", "k_rms/layer_")):
            for s, layers in zip(h["stats_step"], h[key]):
                assert all(_same(ev[f"{prefix}{i:02d}"][s], v) for i, v in enumerate(layers)), (key, s)
