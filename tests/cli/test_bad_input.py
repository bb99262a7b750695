"""Bad input on every subcommand: exit 2, one line on stderr naming the field or file, no traceback, and nothing
in the run / output directories touched (every file is hashed before and after).

One case per bad-input class of issue 6 (malformed --set values, unknown keys, missing / corrupt / truncated
checkpoints, a checkpoint of a different config on --resume, unreadable or unusable data, bad flag values)
and subcommand (train, convert, inspect, study, bench). Cases already covered elsewhere are not repeated:
--set parsing messages (tests/cli/test_train_cli.py), a missing --data path, inspect's --ids / missing dirs
(tests/cli/test_inspect_cli.py), study's --variants/--lrs/--device/--steps (tests/test_study.py), convert's
unsupported model_type / busy --out (tests/interop/test_convert_cli.py). Argparse rejects bad flag values
itself: exit 2 with one "error:" line naming the flag (cli/_common.OneLineParser drops the usage block).
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qknorm
from qknorm.cli import main
from qknorm.data.tokens import load_tokens
from qknorm.train import TrainConfig
from qknorm.train.loop import train

from helpers.load import scaled

torch.set_num_threads(1)

TINY = ["--batch-size", "4", "--seq-len", "16", "--no-progress", "--set", "stats_every=0"]
RESUME = ["train", "--preset", "qwen3", "--steps", "4", "--resume", "--out", "{run}", "--device", "cpu", *TINY]
FRESH = ["train", "--preset", "qwen3", "--steps", "2", "--out", "{tmp}/new", "--device", "cpu", *TINY]
CKPT = "checkpoints/step_0000002"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-step qwen3 run with one checkpoint (step 2) and the exported model."""
    out = tmp_path_factory.mktemp("bad_input") / "run"
    train(qknorm.get_config("qwen3", "debug"), TrainConfig(steps=2, batch_size=4, seq_len=16, ckpt_every=2,
                                                           stats_every=0, eval_batches=1, progress=False),
          load_tokens(max_bytes=50_000), out_dir=out)
    return out


def _snapshot(root: Path) -> dict:
    """{relative path: sha256 (files) or 'dir'} of everything under root."""
    snap = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        snap[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return snap


# ------------------------------------------------------------------------------------------- damage helpers


def _truncate(rel):
    def damage(run):
        f = run / rel
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return damage


def _flip(rel, at=-1):
    def damage(run):
        f = run / rel
        b = bytearray(f.read_bytes())
        b[at] ^= 0xFF
        f.write_bytes(bytes(b))
    return damage


def _remove(rel):
    def damage(run):
        p = run / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return damage


def _edit_json(rel, fn):
    def damage(run):
        f = run / rel
        f.write_text(json.dumps(fn(json.loads(f.read_text()))))
    return damage


def _write(rel, data: bytes):
    def damage(run):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(data)
    return damage


def _empty_checkpoints(run):
    shutil.rmtree(run / CKPT)


# case id -> (argv, what the error line must name, damage to the copied run dir or None)
CASES = {
    # malformed --set values / unknown keys, on a resume: the run they would have continued is untouched
    "set-malformed-value": ([*RESUME, "--set", "n_heads=four"], "--set n_heads='four'", None),
    "set-invalid-combination": ([*RESUME, "--set", "layer_types=sliding"], "layer_types", None),
    "set-unknown-key": ([*RESUME, "--set", "q_norm=head"], "--set q_norm: unknown key", None),
    # missing checkpoints
    "train-resume-no-checkpoint": (RESUME, "checkpoints: no checkpoint to resume from", _empty_checkpoints),
    "inspect-missing-weights": (["inspect", "{run}"], "model.safetensors: file not found",
                                _remove("model.safetensors")),
    "convert-missing-weights": (["convert", "--to-hf", "{run}", "--out", "{tmp}/hf"],
                                "model.safetensors: file not found", _remove("model.safetensors")),
    # corrupt checkpoints (same size, wrong bytes; or a meta.json that parses but is not ours)
    "train-resume-corrupt": (RESUME, f"{CKPT}/trainer.pt: checksum mismatch", _flip(f"{CKPT}/trainer.pt")),
    "train-resume-meta-without-step": (RESUME, f"{CKPT}/meta.json: not a qknorm training checkpoint",
                                       _edit_json(f"{CKPT}/meta.json", lambda m: {**m, "step": "two"})),
    "inspect-corrupt-header": (["inspect", "{run}"], "model.safetensors: corrupt or truncated",
                               _flip("model.safetensors", at=3)),
    "convert-corrupt-config": (["convert", "--to-hf", "{run}", "--out", "{tmp}/hf"], "config.json",
                               _write("config.json", b"{\"qknorm_config\": ")),
    # truncated checkpoints
    "train-resume-truncated": (RESUME, f"{CKPT}/model.safetensors: truncated",
                               _truncate(f"{CKPT}/model.safetensors")),
    "inspect-truncated": (["inspect", "{run}"], "model.safetensors: corrupt or truncated",
                          _truncate("model.safetensors")),
    "convert-truncated": (["convert", "--to-hf", "{run}", "--out", "{tmp}/hf"],
                          "model.safetensors: corrupt or truncated", _truncate("model.safetensors")),
    # a checkpoint of a different model config
    "resume-other-shape": ([*RESUME, "--set", "n_layers=3"], "saved with n_layers=2, this run has n_layers=3", None),
    "resume-other-preset": ([*RESUME[:2], "gemma3", *RESUME[3:]], "this run has", None),
    # unreadable / unusable data
    "train-data-unreadable": ([*FRESH, "--data", "/proc/self/mem"], "cannot read /proc/self/mem", None),
    "train-data-only-binary": ([*FRESH, "--data", "{run}/blobs"], "holds no non-empty text files",
                               _write("blobs/a.dat", bytes(range(256)))),
    "train-data-too-short": ([*FRESH, "--data", "{run}/short.txt"], "shorter than one training sequence",
                             _write("short.txt", b"hi\n")),
    "train-tokenizer-not-json": ([*FRESH, "--tokenizer", "{run}/config.json"], "tokenizer", None),
    "resume-data-unreadable": ([*RESUME, "--data", "/proc/self/mem"], "cannot read /proc/self/mem", None),
    "inspect-text-file-is-dir": (["inspect", "{run}", "--text-file", "{run}/checkpoints"], "--text-file", None),
    "study-data-empty": (["study", "--quick", "--out", "{tmp}/s", "--data", "{run}/empty.txt"], "empty.txt is empty",
                         _write("empty.txt", b"")),
    # bad flag values (our checks, then argparse's)
    "train-device": ([*FRESH[:-len(TINY) - 2], "--device", "tpu", *TINY], "device='tpu' is not allowed", None),
    "train-out-unwritable": ([*FRESH[:5], "--out", "/dev/null/run", *FRESH[7:]], "/dev/null/run", None),
    "train-out-is-a-file": ([*FRESH[:5], "--out", "{run}/config.json", *FRESH[7:]], "config.json exists", None),
    "study-seeds": (["study", "--quick", "--out", "{tmp}/s", "--seeds", "0"], "--seeds=0", None),
    "study-workers": (["study", "--quick", "--out", "{tmp}/s", "--workers", "0"], "--workers=0", None),
    "argparse-train-lr": ([*RESUME, "--lr", "fast"], "argument --lr", None),
    "argparse-train-dtype": ([*RESUME, "--dtype", "fp16"], "argument --dtype", None),
    "argparse-convert-tol": (["convert", "--to-hf", "{run}", "--out", "{tmp}/hf", "--tol", "-1"],
                             "argument --tol", None),
    "argparse-inspect-seq-len": (["inspect", "{run}", "--seq-len", "0"], "argument --seq-len", None),
    "argparse-study-seed": (["study", "--quick", "--out", "{tmp}/s", "--seed", "x"], "argument --seed", None),
    "argparse-bench-what": (["bench"], "WHAT", None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_exit_2_nothing_touched(case, finished_run, tmp_path, capsys):
    argv, names, damage = CASES[case]
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    if damage is not None:
        damage(run)
    before = _snapshot(tmp_path)
    argv = [a.replace("{run}", str(run)).replace("{tmp}", str(tmp_path)) for a in argv]
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
        assert case.startswith("argparse-"), f"argparse rejected {argv}"
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert "Traceback" not in err and "Traceback" not in out
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and names in errors[0], lines
    assert errors[0].startswith(f"qknorm {argv[0]}: error: "), errors[0]
    assert lines == errors, f"more than the error line on stderr: {lines}"
    assert _snapshot(tmp_path) == before, "bad input changed files on disk"


def test_a_damaged_newest_checkpoint_does_not_stop_a_resume_but_all_damaged_stops_cleanly(finished_run, tmp_path,
                                                                                         capsys):
    """The one case where damage is not fatal: an older good checkpoint exists (one warning line, exit 0)."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    shutil.copytree(run / CKPT, run / "checkpoints" / "step_0000003")  # a newer copy, then damaged
    _flip("checkpoints/step_0000003/trainer.pt")(run)
    argv = [a.replace("{run}", str(run)) for a in RESUME]
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "warning" in line] == [
        f"qknorm train: warning: skipping damaged checkpoint step_0000003: {run}/checkpoints/step_0000003/trainer.pt: "
        "checksum mismatch (corrupt file); moved to step_0000003.corrupt"]


def test_process_level_no_traceback_for_a_truncated_checkpoint(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    _truncate(f"{CKPT}/model.safetensors")(run)
    before = _snapshot(tmp_path)
    argv = [a.replace("{run}", str(run)) for a in RESUME]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    p = subprocess.run([sys.executable, "-m", "qknorm", *argv[0:]], capture_output=True, text=True, timeout=scaled(120),
                       env={**env, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith(f"qknorm train: error: {run}/checkpoints: no usable "
                                                             f"checkpoint (1 damaged; newest: {run}/{CKPT}/"
                                                             "model.safetensors: truncated or altered")
    assert _snapshot(tmp_path) == before
