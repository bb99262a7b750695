"""`qknorm train`: frozen flags, end-to-end run, typed --set overrides, one-line errors, nothing overwritten."""

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qknorm
from qknorm.cli import main
from qknorm.cli import train as train_cli
from qknorm.cli._common import field_types, parse_set
from qknorm.config import QKNormScope, QKNormType
from qknorm.errors import ConfigError, QKNormError
from qknorm.io.checkpoints.full import load_checkpoint
from qknorm.train.config import OptimizerName

from helpers.load import scaled

torch.set_num_threads(1)

# DESIGN.md's contract plus the flags the training issue adds; removing or renaming one breaks users' scripts
PUBLIC_FLAGS = {"--preset", "--size", "--set", "--data", "--tokenizer", "--steps", "--lr", "--batch-size",
                "--seq-len", "--seed", "--out", "--ckpt-every", "--resume", "--device", "--dtype", "--warmup",
                "--weight-decay", "--z-loss", "--grad-accum", "--clip", "--on-nan", "--eval-every", "--parallel",
                "--no-progress", "--allow-changes", "--tp", "--init-from", "--tensorboard",
                "--compile", "--no-compile"}
SMALL = ["--batch-size", "4", "--seq-len", "16", "--device", "cpu", "--no-progress"]


def _train_parser():
    sub = argparse.ArgumentParser(prog="qknorm").add_subparsers()
    return train_cli.add_parser(sub)


def test_public_flags_are_frozen():
    parser = _train_parser()
    flags = {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"}
    assert flags == PUBLIC_FLAGS == set(train_cli.FLAGS)
    args = parser.parse_args(["--preset", "llama"])
    assert args.size is None and args.device == "auto" and args.parallel is None and args.overrides == []
    help_text = parser.format_help()
    for flag in PUBLIC_FLAGS:
        assert flag in help_text


def test_end_to_end_writes_metrics_model_and_config(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--preset", "qwen3", "--steps", "6", "--ckpt-every", "3", "--out", str(out),
               "--set", "stats_every=2", "--lr", "1e-2", "--warmup", "2", *SMALL])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = captured.out.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith("qknorm train: 6 steps, final loss ")
    assert "val loss" in summary[0] and "max attention logit" in summary[0] and "tokens/s" in summary[0]
    assert "judged on finiteness only" in summary[0]  # 6 steps: fewer than two windows of 5
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.json", "divergence.json", "metrics.jsonl",
                                                     "model.safetensors", "run.json"]

    def strict(c):
        raise ValueError(f"non-strict JSON constant {c}")

    lines = [json.loads(line, parse_constant=strict) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(6))
    assert [r["step"] for r in lines if "max_attn_logit" in r] == [0, 2, 4, 5]
    assert lines[2]["lr"] == pytest.approx(1e-2)
    model = qknorm.load_model(out)
    assert model.config == qknorm.get_config("qwen3", "debug")
    ck = load_checkpoint(out / "checkpoints" / "step_0000006", model.config)
    trained = qknorm.TransformerLM(model.config)
    trained.load_state_dict(ck.model_state)
    ids = torch.randint(0, 256, (2, 16))
    assert torch.equal(model(ids), trained(ids))


def test_set_overrides_are_typed():
    model_types, train_types = field_types()
    m, t = parse_set(["qk_norm=HEAD", "n_kv_heads=none", "tie_embeddings=yes", "d_model=1e2", "rope_theta=5e5",
                      "layer_types=sliding,full", "qk_backend=torch", "stats_every=0", "decay_norms=off"])
    assert m == {"qk_norm": QKNormScope.HEAD, "n_kv_heads": None, "tie_embeddings": True, "d_model": 100,
                 "rope_theta": 5e5, "layer_types": ("sliding_attention", "full_attention"), "qk_backend": "torch"}
    assert t == {"stats_every": 0, "decay_norms": False}
    parser = _train_parser()
    args = parser.parse_args(["--preset", "llama", "--set", "steps=7", "--set", "lr=1e-3", "--lr", "2e-3",
                              "--set", "qk_norm=head", "--device", "cpu"])
    model_cfg, cfg, vocab_given = train_cli.build_configs(args)
    assert cfg.steps == 7 and cfg.lr == 2e-3 and model_cfg.qk_norm is QKNormScope.HEAD and not vocab_given


def test_stabilizer_settings_via_set_end_to_end(tmp_path, capsys):
    m, t = parse_set(["qk_norm_type=L2", "sigma_reparam=true", "optimizer=muon", "qk_clip=20", "z_loss=1e-4"])
    assert m == {"qk_norm_type": QKNormType.L2, "sigma_reparam": True}
    assert t == {"optimizer": OptimizerName.MUON, "qk_clip": 20.0, "z_loss": 1e-4}
    assert parse_set(["qk_clip=none"])[1] == {"qk_clip": None}
    out = tmp_path / "run"
    rc = main(["train", "--preset", "qwen3", "--steps", "2", "--out", str(out), "--set", "qk_norm_type=layernorm",
               "--set", "sigma_reparam=true", "--set", "optimizer=muon", "--set", "z_loss=1e-4", *SMALL])
    assert rc == 0, capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["train_config"]["optimizer"] == "muon" and run["train_config"]["z_loss"] == 1e-4
    model = qknorm.load_model(out)  # config.json keeps the fields; the state holds gamma, u, v
    assert model.config.qk_norm_type is QKNormType.LAYERNORM and model.config.sigma_reparam
    assert "layers.0.mlp.up_proj.u" in model.state_dict()


@pytest.mark.parametrize("item, message", [
    ("qk_norm_type=cos", "--set qk_norm_type='cos': choose one of: rms, layernorm, l2"),
    ("optimizer=sgd", "--set optimizer='sgd': choose one of: adamw, muon"),
    ("qk_clip=high", "--set qk_clip='high': expected a number"),
    ("d_model=abc", "--set d_model='abc': expected an integer"),
    ("d_model=1.5", "--set d_model='1.5': expected an integer"),
    ("lr=fast", "--set lr='fast': expected a number"),
    ("tie_embeddings=maybe", "--set tie_embeddings='maybe': expected a boolean"),
    ("qk_norm=sometimes", "--set qk_norm='sometimes': choose one of: none, head, full"),
    ("layer_types=,", "--set layer_types=',': expected a comma-separated list"),
    ("nosuchkey=1", "--set nosuchkey: unknown key"),
    ("d-model=64", "did you mean 'd_model'?"),
    ("qk_norm", "--set 'qk_norm': expected key=value"),
])
def test_malformed_set_values_name_the_key(item, message):
    with pytest.raises(ConfigError) as e:
        parse_set([item])
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("argv, message", [
    (["--preset", "nope"], "unknown preset 'nope'; choose one of: llama, qwen3, olmo2, gemma3, postln"),
    (["--preset", "llama", "--size", "huge"], "unknown size 'huge' for preset 'llama'"),
    (["--preset", "llama", "--set", "n_heads=3"], "n_kv_heads=2 must divide n_heads=3"),
    (["--preset", "llama", "--set", "steps=0"], "steps=0 must be an integer >= 1"),
    (["--preset", "llama", "--grad-accum", "3"], "--grad-accum=3 must divide --batch-size=4"),
    (["--preset", "llama", "--data", "/nonexistent/corpus.txt"], "does not exist"),
    (["--preset", "llama", "--resume"], "nothing to resume"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    rc = main(["train", *argv, "--out", str(tmp_path / "r"), *SMALL])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("qknorm train: error: ") and message in err[0], err


def test_subprocess_error_has_no_traceback(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "qknorm", "train", "--preset", "llama", "--set", "d_model=abc",
                        "--out", str(tmp_path / "r")], capture_output=True, text=True, env=env, timeout=scaled(120))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr == "qknorm train: error: --set d_model='abc': expected an integer\n"
    assert not (tmp_path / "r").exists()


def test_non_empty_out_dir_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["train", "--preset", "llama", "--steps", "2", "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qknorm train: error: --out ") and "--resume" in err and err.count("\n") == 1
    assert [f.name for f in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"


def test_resume_with_a_different_preset_is_one_line(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["train", "--preset", "llama", "--steps", "2", "--ckpt-every", "2", "--out", out, *SMALL]) == 0
    capsys.readouterr()
    rc = main(["train", "--preset", "llama", "--set", "qk_norm=head", "--steps", "4", "--resume", "--out", out,
               *SMALL])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("qknorm train: error: ") and "qk_norm='none', this run has" in err[-1]


def test_corrupt_checkpoint_warning_is_one_line(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--preset", "llama", "--steps", "4", "--ckpt-every", "2", "--out", str(out), *SMALL]) == 0
    w = out / "checkpoints" / "step_0000004" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:64])
    capsys.readouterr()
    assert main(["train", "--preset", "llama", "--steps", "4", "--resume", "--out", str(out), *SMALL]) == 0
    err = capsys.readouterr().err
    assert "qknorm train: warning: skipping damaged checkpoint step_0000004" in err and "Traceback" not in err


_KEYS = sorted(set(field_types()[0]) | set(field_types()[1])) + ["bogus", "", "lr ", "=", "D_MODEL"]
_VALUES = st.one_of(
    st.sampled_from(["none", "true", "0", "-1", "1e3", "1e400", "nan", "inf", "2", "64", "head", "full",
                     "sliding,full", "sliding_attention", "torch", "triton", "bf16", "skip", "fsdp", "cuda:0", ""]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES), max_size=3),
       preset=st.sampled_from(["llama", "qwen3", "olmo2", "gemma3", "postln", "nope"]))
def test_random_overrides_never_raise_anything_but_a_user_error(items, preset):
    argv = ["--preset", preset, "--device", "cpu"]
    for key, value in items:
        argv += ["--set", f"{key}={value}"]
    args = _train_parser().parse_args(argv)
    try:
        model_cfg, cfg, _ = train_cli.build_configs(args)
    except QKNormError as e:
        assert "\n" not in str(e)
    else:
        assert isinstance(model_cfg, qknorm.ModelConfig)
