"""`qknorm retrofit`: a small trained llama, exported to transformers, gets QK-norm; the result is a transformers
Qwen3 directory whose logits equal ours, calibration lowers the next-token KL to the original below gains 1,
healing lowers it further, and the report holds every number, finite. Scope full writes our format. Bad input
is one line, exit 2, nothing written."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import qknorm
from qknorm.cli import main
from qknorm.cli import retrofit as retrofit_cli
from qknorm.train import TrainConfig
from qknorm.train.loop import train
from qknorm.data.tokens import load_tokens
from helpers.cli import run_cli

torch.set_num_threads(1)
PUBLIC_FLAGS = {"--from", "--scope", "--out", "--data", "--calib-tokens", "--calib-steps", "--heal-steps",
                "--distill", "--lm-loss", "--lr", "--batch-size", "--seq-len", "--eval-tokens", "--seed", "--device",
                "--no-progress", "--keep-healed"}
SMALL = ["--seq-len", "32", "--batch-size", "8", "--calib-tokens", "2048", "--calib-steps", "20", "--eval-tokens",
         "2048", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A byte-level llama trained 120 steps on the embedded corpus (val loss ~2.7), and its transformers export."""
    root = tmp_path_factory.mktemp("retrofit")
    cfg = TrainConfig(steps=120, lr=1e-2, batch_size=8, seq_len=32, stats_every=0, eval_batches=2, progress=False)
    train(qknorm.get_config("llama", "debug", d_model=32, d_ff=64), cfg, load_tokens(max_bytes=200_000),
          out_dir=root / "run")
    assert main(["convert", "--to-hf", str(root / "run"), "--out", str(root / "hf")]) == 0
    return root


def _run(args, capsys):
    code, out, err = run_cli("retrofit", args, capsys)
    return code, out.strip().splitlines(), err


def test_public_flags_are_frozen():
    import argparse

    parser = retrofit_cli.add_parser(argparse.ArgumentParser(prog="qknorm").add_subparsers())
    flags = {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"}
    assert flags == PUBLIC_FLAGS == set(retrofit_cli.FLAGS)


def test_head_scope_on_a_transformers_llama_gives_a_qwen3_that_transformers_loads(trained, capsys):
    transformers = pytest.importorskip("transformers")
    out = trained / "qk"
    code, stdout, err = _run(["--from", str(trained / "hf"), "--scope", "head", "--out", str(out),
                              "--heal-steps", "30", *SMALL], capsys)
    assert code == 0, err
    assert len(stdout) == 1 and stdout[0].startswith("qknorm retrofit: scope head: next-token KL")
    r = json.loads((out / "retrofit_report.json").read_text())
    for key in ("kl_naive", "kl_calibrated", "kl_healed", "val_loss_original", "val_loss_naive",
                "val_loss_retrofitted", "val_loss_healed"):
        assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] >= 0, key
    assert r["kl_calibrated"] <= r["kl_naive"] and r["kl_healed"] < r["kl_calibrated"], r
    assert r["kept"] == "healed" and r["calibration_kept"] == "fitted" and "wrote the healed model" in stdout[0]  # healing helped: the healed is written
    assert r["export"] == "hf/qwen3" and r["heal"]["objective"] == "distill" and len(r["heal"]["curve"]["loss"]) == 30
    # every stage timed (wall and CPU) in the report, and told on stderr (not a terminal: one line each)
    names = [t["name"] for t in r["stages"]]
    assert names[0] == "reading the model and data" and "calibration: fitting the gains" in names
    assert names[-1] == "healing" and all(t["seconds"] >= 0 and t["cpu_seconds"] >= 0 for t in r["stages"])
    assert r["peak_rss_mb"] > 10
    for name in names:
        assert sum(line.startswith(f"qknorm retrofit: {name}: ") for line in err) == 1, (name, err)
    assert r["source"]["weights_sha256"] == {
        "model.safetensors": hashlib.sha256((trained / "hf" / "model.safetensors").read_bytes()).hexdigest()}
    # calibration moved the gains away from 1, and every layer attends closer to the original than with gains 1
    for layer in r["layers"]:
        assert layer["attn_kl_fitted"] < layer["attn_kl_naive"]
        assert max(abs(v - 1) for v in layer["q_scale"] + layer["k_scale"]) > 0.1
    assert (out / "healing_curve.png").stat().st_size > 0 and "data:image/png;base64" in \
        (out / "retrofit_report.html").read_text()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    ours = qknorm.from_hf(out).eval()
    assert ours.config.qk_norm.value == "head" and ours.config.norm_cast.value == "input"
    assert not torch.allclose(ours.layers[0].attn.q_norm.weight, torch.ones(ours.config.head_dim))
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = hf(ids).logits, ours(ids)
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_full_scope_writes_our_format_and_heals_by_the_loss_when_asked(trained, capsys):
    out = trained / "qk_full"
    code, stdout, err = _run(["--from", str(trained / "run"), "--scope", "full", "--out", str(out), "--heal-steps",
                              "2", "--lm-loss", "--no-progress", *SMALL], capsys)
    assert code == 0, err
    assert "qknorm format" in stdout[0]
    assert not any(" CPU " in line for line in err), err  # --no-progress: the result lines only
    model = qknorm.load_model(out)
    assert model.config.qk_norm.value == "full"
    r = json.loads((out / "retrofit_report.json").read_text())
    assert r["export"] == "qknorm" and r["heal"]["objective"] == "lm" and r["kl_calibrated"] <= r["kl_naive"]
    assert len(r["layers"][0]["q_scale"]) == model.config.n_heads * model.config.head_dim


def test_a_failure_inside_a_stage_is_one_line_naming_it(trained, tmp_path, capsys, monkeypatch):
    """Out of memory (or any backend failure) in the middle: one line naming the stage, exit 1, nothing written."""
    import qknorm.retrofit.pipeline as pipeline

    def oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory\nmore")

    monkeypatch.setattr(pipeline, "calibrate", oom)
    out = tmp_path / "out"
    code, stdout, err = _run(["--from", str(trained / "run"), "--scope", "head", "--out", str(out), "--no-progress",
                              *SMALL], capsys)
    assert code == 1 and not stdout and not out.exists(), err
    assert err[-1] == ("qknorm retrofit: error: calibration: fitting the gains failed: [enforce fail at "
                       "alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory; nothing written"), err
    assert not any("Traceback" in line for line in err)


def test_sigterm_during_healing_finishes_the_step_and_exits_143_writing_nothing(trained, tmp_path, capsys,
                                                                                 monkeypatch):
    """SIGTERM arrives during healing step 3 (of 50): the training loop finishes that step and stops; one line,
    exit 128 + SIGTERM, nothing written, and the signal's handler is given back."""
    import os
    import signal

    import qknorm.retrofit.pipeline as pipeline

    real = pipeline.heal

    def heal(*a, tick=None, **k):
        calls = []
        return real(*a, tick=lambda n: calls.append(n) or (os.kill(os.getpid(), signal.SIGTERM)
                                                           if len(calls) == 3 else None), **k)

    monkeypatch.setattr(pipeline, "heal", heal)
    old = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    code, stdout, err = _run(["--from", str(trained / "run"), "--scope", "head", "--out", str(out), "--no-progress",
                              "--heal-steps", "50", *SMALL], capsys)
    assert code == 128 + signal.SIGTERM and not stdout and not out.exists(), err
    assert err[-1] == "qknorm retrofit: healing stopped by SIGTERM after 3 of 50 steps; nothing written", err
    assert not any("Traceback" in line for line in err) and signal.getsignal(signal.SIGTERM) is old


def _ids_file(tmp_path: Path) -> Path:
    path = tmp_path / "ids.bin"
    (np.arange(40_000) % 300).astype(np.uint16).tofile(path)  # ids up to 299: more than the byte vocabulary
    return path


@pytest.mark.parametrize("case", ["has_qk_norm", "missing", "busy_out", "long_seq", "vocab", "scope", "objective"])
def test_bad_input_is_one_line_and_writes_nothing(trained, tmp_path, capsys, case):
    out = tmp_path / "out"
    src, extra = str(trained / "run"), []
    if case == "has_qk_norm":
        src = str(trained / "qk_has")
        if not Path(src).exists():
            qknorm.save_model(qknorm.TransformerLM(qknorm.get_config("qwen3", "debug")), src)
    elif case == "missing":
        src = str(tmp_path / "nowhere")
    elif case == "busy_out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "long_seq":
        extra = ["--seq-len", "4096"]
    elif case == "vocab":
        extra = ["--data", str(_ids_file(tmp_path))]
    elif case == "scope":
        extra = ["--scope", "both"]
    elif case == "objective":
        extra = ["--distill", "--lm-loss"]
    args = ["--from", src, "--scope", "head", "--out", str(out), *SMALL, *extra]
    code, stdout, err = _run(args, capsys)
    assert code == 2 and len(err) == 1 and "error: " in err[0] and not stdout, err
    expect = {"has_qk_norm": "already has QK-norm", "missing": "nowhere", "busy_out": "not empty",
              "long_seq": "--seq-len=4096", "vocab": "vocabulary", "scope": "--scope", "objective": "--lm-loss"}[case]
    assert expect in err[0], err
    if case == "busy_out":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
