"""The training loop: schedule, parameter groups, accumulation, resume, NaN handling, signals, golden loss."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qknorm
from qknorm.errors import CheckpointError, ConfigError
from qknorm.train import step as L
from qknorm.io.checkpoints.full import load_checkpoint
from qknorm.io.checkpoints.layout import list_checkpoints
from qknorm.data.tokens import load_tokens
from qknorm.train import TrainConfig
from qknorm.train.loop import train
from qknorm.train.optim import build_optimizer, lr_at, param_groups
from qknorm.train.stop import StopKind

from helpers.load import scaled, wait_until

torch.set_num_threads(1)  # 2-core CI runs two test workers


@pytest.fixture(scope="module")
def data():
    return load_tokens(max_bytes=200_000)  # a fixed slice of the default corpus (whole stdlib files, sorted)


def _cfg(**kw):
    base = dict(steps=12, warmup_steps=3, batch_size=8, seq_len=32, lr=3e-3, eval_batches=2, stats_every=4,
                progress=False)
    return TrainConfig(**{**base, **kw})


MODEL = qknorm.get_config("qwen3", "debug")  # per-head QK-norm, GQA, explicit head_dim


# ---------------------------------------------------------------------------------------------- config


def test_train_config_validation_names_field_and_range():
    with pytest.raises(ConfigError, match=r"steps=0 must be an integer >= 1"):
        TrainConfig(steps=0)
    with pytest.raises(ConfigError, match=r"on_nan='maybe' is not allowed; choose one of: skip, stop"):
        TrainConfig(on_nan="maybe")
    with pytest.raises(ConfigError, match=r"dtype='fp16'.*fp32, bf16"):
        TrainConfig(dtype="fp16")
    with pytest.raises(ConfigError, match=r"beta2=1.0 must be in \[0, 1\)"):
        TrainConfig(beta2=1.0)
    with pytest.raises(ConfigError, match=r"lr=nan must be a finite number"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ConfigError, match=r"grad_accum=3 must divide batch_size=16"):
        TrainConfig(grad_accum=3)
    with pytest.raises(ConfigError, match=r"device='tpu'"):
        TrainConfig(device="tpu")
    with pytest.raises(ConfigError, match=r"progress='yes' must be true or false"):
        TrainConfig(progress="yes")
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)


def test_train_config_choices_parse_like_model_config_choices():
    """Old behaviour: TrainConfig had its own choice enum that did not lowercase, so TrainConfig(dtype="BF16")
    raised while get_config(..., placement="PRE") worked. Both use qknorm.choice.Choice now."""
    from qknorm.choice import Choice
    from qknorm.train.config import DType, NSDType, OnNaN, OptimizerName, Parallel

    assert all(issubclass(c, Choice) for c in (DType, NSDType, OnNaN, OptimizerName, Parallel))
    cfg = TrainConfig(dtype="BF16", on_nan="Skip", optimizer="MUON", muon_ns_dtype="FP32", parallel="FSDP")
    assert (cfg.dtype, cfg.on_nan, cfg.optimizer, cfg.muon_ns_dtype, cfg.parallel) == \
        (DType.BF16, OnNaN.SKIP, OptimizerName.MUON, NSDType.FP32, Parallel.FSDP)
    assert qknorm.get_config("qwen3", "debug", placement="PRE").placement.value == "pre"
    # serialized lowercase, as before: run.json and checkpoints read the same
    d = cfg.to_dict()
    assert (d["dtype"], d["on_nan"], d["optimizer"], d["muon_ns_dtype"], d["parallel"]) == \
        ("bf16", "skip", "muon", "fp32", "fsdp")
    assert json.loads(json.dumps(d)) == d and TrainConfig.from_dict(d) == cfg
    with pytest.raises(ConfigError) as e:
        TrainConfig(dtype="FP16")
    assert str(e.value) == "dtype='FP16' is not allowed; choose one of: fp32, bf16"


# ---------------------------------------------------------------------------------------------- schedule, groups


def test_lr_schedule_warmup_then_cosine_by_hand():
    cfg = TrainConfig(steps=10, warmup_steps=2, lr=1.0, final_lr=0.0)
    assert lr_at(0, cfg) == 0.5 and lr_at(1, cfg) == 1.0  # linear warmup reaching lr at warmup-1
    assert lr_at(2, cfg) == 1.0  # cosine starts at lr
    # t = (step - 2) / 8: step 6 is half way -> (1 + cos(pi/2)) / 2 = 0.5
    assert lr_at(6, cfg) == pytest.approx(0.5)
    assert lr_at(4, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_at(9, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert lr_at(10, cfg) == pytest.approx(0.0) and lr_at(1000, cfg) == pytest.approx(0.0)  # clamped
    cfg = TrainConfig(steps=10, warmup_steps=0, lr=3e-3, final_lr=1e-5)
    assert lr_at(0, cfg) == pytest.approx(3e-3)
    assert lr_at(5, cfg) == pytest.approx(1e-5 + (3e-3 - 1e-5) * 0.5)
    const = TrainConfig(steps=10, warmup_steps=0, lr=1e-3, final_lr=1e-3)
    assert all(lr_at(s, const) == pytest.approx(1e-3) for s in range(10))


def test_weight_decay_groups_exclude_qk_norm_gains_by_default():
    model = qknorm.TransformerLM(MODEL)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: g for g in param_groups(model, weight_decay=0.1)}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    assert groups["decay"]["weight_decay"] == 0.1 and groups["no_decay"]["weight_decay"] == 0.0
    assert "layers.0.attn.q_norm.weight" in no_decay and "layers.1.attn.k_norm.weight" in no_decay
    assert "embed.weight" in no_decay and "norm.weight" in no_decay
    assert "layers.0.attn.q_proj.weight" in decay and "lm_head.weight" in decay
    assert not decay & no_decay and len(decay | no_decay) == len(names)
    groups = param_groups(model, weight_decay=0.1, decay_norms=True)
    assert [g["name"] for g in groups] == ["decay"] and len(groups[0]["params"]) == len(names)
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1, beta1=0.8, beta2=0.9, adam_eps=1e-7))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.8, 0.9)
    assert opt.param_groups[0]["eps"] == 1e-7


def test_weight_decay_applied_to_matrices_only(data):
    # with lr tiny and decay huge, the decayed matrices shrink and the QK-norm gains stay at 1
    r = train(MODEL, _cfg(steps=2, warmup_steps=0, weight_decay=50.0, stats_every=0), data)
    sd = r.model.state_dict()
    assert torch.equal(sd["layers.0.attn.q_norm.weight"].abs() < 1.1, torch.ones(32, dtype=torch.bool))
    torch.manual_seed(0)
    init = qknorm.TransformerLM(MODEL).state_dict()
    assert sd["layers.0.mlp.up_proj.weight"].norm() < 0.9 * init["layers.0.mlp.up_proj.weight"].norm()


# ---------------------------------------------------------------------------------------------- equivalences


def test_grad_accumulation_matches_one_big_batch(data):
    a = train(MODEL, _cfg(steps=3, grad_accum=1, stats_every=0), data)
    b = train(MODEL, _cfg(steps=3, grad_accum=4, stats_every=0), data)
    for (ra, rb) in zip(a.history, b.history):
        assert ra.loss == pytest.approx(rb.loss, rel=1e-5)
        assert ra.grad_norm == pytest.approx(rb.grad_norm, rel=1e-4)
    for (n, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=n)


def test_history_records_and_result_fields(data):
    r = train(MODEL, _cfg(), data)
    assert r.steps_done == 12 and len(r.history) == 12 and r.stop_reason is None
    assert [h.step for h in r.history] == list(range(12))
    h0 = r.history[0]
    assert h0.time_s > 0 and h0.has_stats and h0.logit_max is not None and h0.logit_std is not None
    assert len(h0.attn_logit_per_layer) == MODEL.n_layers == len(h0.q_rms) == len(h0.k_rms)
    stats_steps = [h.step for h in r.history if h.has_stats]
    assert stats_steps == [0, 4, 8, 11]  # every stats_every, and the last
    assert [h.step for h in r.history if h.val_loss is not None] == [11]  # eval_every=0: at the end
    assert r.init_loss == h0.loss and abs(r.init_loss - math.log(256)) < 0.1
    assert r.final_loss == pytest.approx(r.history[-1].loss)  # last max(1, 12 // 20) = 1 step
    assert r.val_loss == r.history[-1].val_loss
    assert r.max_attn_logit == max(h.max_attn_logit for h in r.history if h.has_stats)
    assert not r.diverged and r.history[-1].tokens == 12 * 8 * 32 and r.tokens_per_s > 0
    assert r.history[0].lr == pytest.approx(1e-3)
    assert r.summary.spike_window == 1000 and math.isnan(r.summary.grad_spike_score)  # window 1000: from the 100th
    # QK-norm with unit gains keeps q RMS at ~1 at init (RoPE is a rotation)
    assert h0.q_rms[0] == pytest.approx(1.0, abs=1e-3)


def test_vocab_too_small_for_data_is_a_config_error(data):
    with pytest.raises(ConfigError, match="vocab_size=128 of the model is smaller than the data's vocabulary"):
        train(MODEL.replace(vocab_size=128), _cfg(), data)


def test_fresh_run_refuses_a_non_empty_out_dir(tmp_path, data):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty"):
        train(MODEL, _cfg(steps=1, warmup_steps=0), data, out_dir=tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(MODEL, _cfg(steps=1, warmup_steps=0), data, out_dir=tmp_path, resume=True)


# ---------------------------------------------------------------------------------------------- resume


def _lines(path: Path):
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        rec.pop("time_s")
        out.append(rec)
    return out


def _crash_at(step):
    def callback(record):
        if record["step"] == step:
            raise RuntimeError("simulated crash")

    return callback


@pytest.mark.numerics
def test_resume_after_a_crash_is_bit_identical(tmp_path, data):
    cfg = _cfg(steps=16, ckpt_every=5, keep_last=2, eval_every=5)
    full = train(MODEL, cfg, data, out_dir=tmp_path / "full")

    with pytest.raises(RuntimeError, match="simulated crash"):  # after the step-10 checkpoint
        train(MODEL, cfg, data, out_dir=tmp_path / "cut", callback=_crash_at(12))
    assert [s for s, _ in list_checkpoints(tmp_path / "cut" / "checkpoints")] == [5, 10]
    assert len(_lines(tmp_path / "cut" / "metrics.jsonl")) == 13  # steps 0..12, beyond the checkpoint
    resumed = train(MODEL, cfg, data, out_dir=tmp_path / "cut", resume=True)

    # bit for bit: the same process layout runs the same kernels in the same order, whatever the CPU
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert _lines(tmp_path / "full" / "metrics.jsonl") == _lines(tmp_path / "cut" / "metrics.jsonl")
    assert resumed.final_loss == full.final_loss and resumed.val_loss == full.val_loss
    assert resumed.init_loss == full.init_loss and resumed.max_attn_logit == full.max_attn_logit
    assert resumed.steps_done == 16 and len(resumed.history) == 16
    # the final checkpoint and model are written too, and keep_last holds
    assert [s for s, _ in list_checkpoints(tmp_path / "cut" / "checkpoints")] == [15, 16]
    loaded = qknorm.load_model(tmp_path / "cut")
    for (name, a), b in zip(loaded.state_dict().items(), full.model.state_dict().values()):
        assert torch.equal(a, b), name
    opt_a = load_checkpoint(tmp_path / "full" / "checkpoints" / "step_0000016").optimizer_state
    opt_b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "step_0000016").optimizer_state
    for k, st in opt_a["state"].items():
        assert torch.equal(st["exp_avg_sq"], opt_b["state"][k]["exp_avg_sq"])


@pytest.mark.numerics
def test_resume_falls_back_past_a_truncated_checkpoint(tmp_path, data):
    cfg = _cfg(steps=10, ckpt_every=4, stats_every=0)
    full = train(MODEL, cfg, data, out_dir=tmp_path / "full")
    cut = tmp_path / "cut"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(MODEL, cfg, data, out_dir=cut, callback=_crash_at(8))
    newest = cut / "checkpoints" / "step_0000008" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.warns(RuntimeWarning, match="skipping damaged checkpoint step_0000008"):
        resumed = train(MODEL, cfg, data, out_dir=cut, resume=True)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert _lines(tmp_path / "full" / "metrics.jsonl") == _lines(cut / "metrics.jsonl")


def test_resume_with_a_different_model_config_names_the_field(tmp_path, data):
    train(MODEL, _cfg(steps=2, warmup_steps=1, ckpt_every=2, stats_every=0), data, out_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"saved with n_layers=2, this run has n_layers=3"):
        train(MODEL.replace(n_layers=3), _cfg(steps=4, warmup_steps=1, stats_every=0), data, out_dir=tmp_path,
              resume=True)
    # a changed setting is refused as `qknorm train --resume` refuses it (train/resume.py), unless allowed
    with pytest.raises(ConfigError, match=r"lr=0.001 contradicts the run's record \(lr was 0.003 in "):
        train(MODEL, _cfg(steps=3, warmup_steps=1, stats_every=0, lr=1e-3), data, out_dir=tmp_path, resume=True)
    with pytest.warns(RuntimeWarning, match=r"changed training settings \(lr 0.003 -> 0.001\)"):
        train(MODEL, _cfg(steps=3, warmup_steps=1, stats_every=0, lr=1e-3), data, out_dir=tmp_path, resume=True,
              allow_changes=True)


# ---------------------------------------------------------------------------------------------- NaN / Inf


def _nan_at(monkeypatch, bad_step_call: int):
    """Make the loss of the `bad_step_call`-th call of the loss function NaN."""
    real, calls = L.forward_loss, {"n": 0}

    def fake(model, x, y, z_loss):
        ce, z = real(model, x, y, z_loss)
        calls["n"] += 1
        return (ce * float("nan"), z) if calls["n"] == bad_step_call + 1 else (ce, z)

    monkeypatch.setattr(L, "forward_loss", fake)


def test_nan_skip_skips_the_step_and_keeps_going(monkeypatch, data):
    _nan_at(monkeypatch, 3)
    r = train(MODEL, _cfg(steps=6, on_nan="skip", stats_every=0), data)
    assert r.steps_done == 6 and r.stop_reason is None
    assert r.history[3].skipped and math.isnan(r.history[3].loss)
    assert all(not h.skipped for i, h in enumerate(r.history) if i != 3)
    assert all(torch.isfinite(p).all() for p in r.model.parameters())
    assert math.isfinite(r.final_loss) and r.diverged  # a NaN anywhere counts as divergence


def test_nan_stop_keeps_the_last_good_checkpoint(monkeypatch, tmp_path, data):
    _nan_at(monkeypatch, 5)
    r = train(MODEL, _cfg(steps=10, on_nan="stop", ckpt_every=2, stats_every=0), data, out_dir=tmp_path)
    assert r.stop_reason.kind is StopKind.NON_FINITE and r.steps_done == 5 and r.diverged
    assert str(r.stop_reason).startswith("non-finite loss at step 5")
    assert [s for s, _ in list_checkpoints(tmp_path / "checkpoints")] == [2, 4]
    load_checkpoint(tmp_path / "checkpoints" / "step_0000004", MODEL)  # intact, verifies
    assert not (tmp_path / "model.safetensors").exists()  # no "final" model of a failed run
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[-1])["loss"] is None  # strict JSON: NaN is null
    assert all(torch.isfinite(p).all() for p in r.model.parameters())


# ---------------------------------------------------------------------------------------------- signals


def test_sigterm_finishes_the_step_and_writes_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "qknorm", "train", "--preset", "llama", "--steps", "100000", "--batch-size", "4",
           "--seq-len", "16", "--set", "stats_every=0", "--out", str(out), "--device", "cpu", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = out / "metrics.jsonl"
        wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, "3 training steps", 60,
                   proc=proc, poll=0.1)  # the timeout scaled by the load (helpers/load.py)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=scaled(60))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "stopped by SIGTERM after step" in err and "--resume" in err
    (step, path), = list_checkpoints(out / "checkpoints")
    n_lines = len((out / "metrics.jsonl").read_text().splitlines())
    assert step == n_lines and step >= 3  # the checkpoint holds every completed step
    load_checkpoint(path, qknorm.get_config("llama", "debug"))
    assert (out / "checkpoints" / "latest").read_text().strip() == path.name


# ---------------------------------------------------------------------------------------------- golden loss


@pytest.mark.numerics
def test_golden_loss_debug_preset_30_steps(data):
    """llama debug on the first 200 kB of the default corpus, seed 0, 30 steps (warmup 5, cosine, lr 1e-2).

    Measured with torch 2.13.0+cpu, Python 3.11.7: init loss 5.544 (ln 256 = 5.545), final loss (the last
    step) 3.114, i.e. 2.43 nats below ln 256, val loss 2.824. The bounds leave room for BLAS and Python-version
    (corpus) differences but catch a broken loop, schedule or model.
    """
    r = train(qknorm.get_config("llama", "debug"), TrainConfig(steps=30, warmup_steps=5, batch_size=16,
                                                                 seq_len=64, lr=1e-2, seed=0, progress=False,
                                                                 eval_batches=4), data)
    assert abs(r.init_loss - math.log(256)) < 0.05
    assert r.final_loss < math.log(256) - 2.0, r.final_loss  # measured drop: 2.43 nats
    assert r.final_loss > 2.0  # 30 steps cannot learn the corpus: a much lower loss means leakage
    assert r.val_loss < 3.3 and not r.diverged


def test_bf16_autocast_on_cpu_and_periodic_eval(data):
    r = train(MODEL, _cfg(steps=4, dtype="bf16", eval_every=2, stats_every=2, z_loss=1e-4), data)
    assert [h.step for h in r.history if h.val_loss is not None] == [1, 3]
    assert all(math.isfinite(h.loss) for h in r.history) and r.history[-1].loss < r.init_loss
    assert next(r.model.parameters()).dtype == torch.float32  # weights and optimizer stay fp32
