"""`qknorm bench WHAT`: both benchmarks run end to end on CPU (--cpu-smoke; Triton under TRITON_INTERPRET=1 from
tests/conftest.py), print their tables and write results with device, date, versions and command line only
with --out; every bad input (unknown WHAT or variant, no CUDA, an --out that holds results) is one line,
exit 2, nothing written."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import triton

import qknorm
from qknorm.cli import main

from helpers.load import scaled

ROOT = Path(__file__).resolve().parents[2]
# get_config copied the 372m size's derived head_dim (64) into any width (issue 9 section 1; fixed where the
# configs live). Until that fix is merged here, `bench train --cpu-smoke` must refuse: the smoke shape exists
# to catch exactly that.
DERIVATION_BUG = qknorm.get_config("olmo2", "372m", d_model=96, n_heads=3, n_kv_heads=3).head_dim != 32


def _table(text, header_start):
    """The markdown table whose header line starts with header_start: (header cells, rows of cells)."""
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]  # noqa: E731
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append(cells(line))
    return cells(lines[i]), rows


def _assert_environment(res, md):
    assert res["versions"]["torch"] == torch.__version__ and res["versions"]["triton"] == triton.__version__
    assert res["versions"]["transformers"] == transformers.__version__ and "liger_kernel" in res["versions"]
    assert res["device"].startswith("cpu: ") and res["date"] in res["time_utc"] and res["time_utc"] in md
    assert res["argv"] and res["options"]["cpu_smoke"] is True and res["complete"] is True
    assert f"torch {torch.__version__}" in md and f"transformers {transformers.__version__}" in md


def test_bench_kernel_cpu_smoke(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path / "env_out"))  # --out decides, never $OUT
    out = tmp_path / "res"
    assert main(["bench", "kernel", "--cpu-smoke", "--nshapes", "1", "--no-sweep", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    header, rows = _table(printed, "| shape (B,T,H,Hkv,D) |")
    assert header[:9] == ["shape (B,T,H,Hkv,D)", "scope", "floor", "eager", "compile", "liger", "ours",
                          "ours_compile", "ours_kernels"]
    assert [r[:2] for r in rows] == [["(1, 8, 4, 2, 64)", "head"]]
    row = dict(zip(header, rows[0]))
    assert float(row["floor"]) > 0 and float(row["ours"]) > 0 and float(row["ours x floor"]) > 0
    assert row["compile"] == row["liger"] == "-"  # no torch.compile, no Liger in the smoke
    assert float(row["ours rel. err"]) < 1e-2  # bf16 vs the fp32 eager reference
    _, layer_rows = _table(printed, "| B,T,d,H,Hkv,D |")
    assert len(layer_rows) == 1 and "-" not in layer_rows[0][1:6] and layer_rows[0][-1].endswith("%")
    md = (out / "qk_norm_rope.md").read_text()
    assert md.startswith("# QK-RMSNorm + RoPE: cpu") and md in printed
    res = json.loads((out / "qk_norm_rope.json").read_text())
    _assert_environment(res, md)
    (r,) = res["qkrope"]
    for key in ("ours_fwd_ms", "floor_fwd_ms", "ours_fwdbwd_ms", "floor_fwdbwd_ms", "eager_fwd_ms",
                "ours_kernels_fwdbwd_ms"):
        assert r[key] > 0, key
    assert r["q_shape"] == [1, 8, 4, 64] and r["k_shape"] == [1, 8, 2, 64] and r["dtype"] == "bfloat16"
    assert not any(k.endswith("_error") for k in r) and not (tmp_path / "env_out").exists()


@pytest.mark.xfail(DERIVATION_BUG, strict=True, reason="get_config keeps the 372m size's head_dim 64 at d_model 96: "
                   "the smoke refuses until the config derivation fix is merged")
def test_bench_train_cpu_smoke_compares_equal_models(tmp_path, capsys):
    assert main(["bench", "train", "--cpu-smoke", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    header, rows = _table(printed, "| variant |")
    assert header == ["variant", "params", "ms/step", "tokens/s", "peak GB", "speed vs HF"]
    assert [r[0] for r in rows] == ["hf", "ours"] and rows[0][-1] == "1.00x" and rows[0][1] == rows[1][1]
    md = (tmp_path / "train_step.md").read_text()
    res = json.loads((tmp_path / "train_step.json").read_text())
    _assert_environment(res, md)
    compared = res["variants"]
    assert set(compared) == {"hf", "ours"} and all("ms" in v for v in compared.values())
    assert len({v["params_M"] for v in compared.values()}) == 1  # the acceptance check's question
    assert {v["head_dim"] for v in compared.values()} == {32} and {v["n_kv_heads"] for v in compared.values()} == {3}
    assert set(res["variants_without_qk_norm"]) == {"hf_noqk", "ours_noqk"}
    assert len({v["params_M"] for v in res["variants_without_qk_norm"].values()}) == 1
    assert res["shape"]["d_model"] == 96 and res["shape"]["n_heads"] == 3  # not the debug preset's shape
    assert "QK-norm cost" in md


def test_bench_train_without_out_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OUT", str(tmp_path / "env_out"))
    assert main(["bench", "train", "--cpu-smoke", "--variants", "ours,ours_noqk"]) == 0
    printed = capsys.readouterr().out
    assert "| ours |" in printed and "| ours_noqk |" in printed and "QK-norm cost" in printed
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, words", [
    (["bench", "nope"], ["invalid choice: 'nope'", "kernel", "train"]),
    (["bench", "train", "--cpu-smoke", "--variants", "hf,nope"], ["--variants nope", "ours_compile", "hf_liger"]),
    (["bench", "kernel", "--cpu-smoke", "--iters", "0"], ["--iters", "positive integer"]),
])
def test_bad_input_is_one_line(argv, words, capsys):
    assert _status(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and captured.err.startswith("qknorm bench")
    assert all(w in captured.err for w in words), captured.err


def _status(argv):
    """main's exit status, whether it returns it (library errors) or argparse exits (usage errors)."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("what", ["kernel", "train"])
def test_no_cuda_is_one_line_and_writes_nothing(what, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", what, "--out", str(tmp_path / "results")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "no CUDA device" in captured.err and "--cpu-smoke" in captured.err
    assert not (tmp_path / "results").exists()


def test_no_cuda_subprocess_train(tmp_path):
    """The acceptance command as a user types it, on a machine where CUDA is not visible."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT / "src"))
    p = subprocess.run([sys.executable, "-m", "qknorm", "bench", "train", "--out", str(tmp_path / "results")],
                       capture_output=True, text=True, env=env, timeout=scaled(120))
    assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1, p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "results").exists()


def test_out_holding_results_is_refused_unless_force(tmp_path, capsys):
    (tmp_path / "train_step.json").write_text("{}")
    assert main(["bench", "train", "--cpu-smoke", "--variants", "ours", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train_step.json already there" in err and "--force" in err
    assert (tmp_path / "train_step.json").read_text() == "{}"
    (tmp_path / "file").write_text("")
    assert main(["bench", "kernel", "--cpu-smoke", "--out", str(tmp_path / "file")]) == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize("what", ["kernel", "train"])
def test_help_names_the_out_rule(what, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", what, "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and "--cpu-smoke" in text and "write nothing" in text.replace("\n", " ")


@pytest.mark.parametrize("script, what", [("bench_qk_norm_rope.py", "kernel"), ("bench_train_gpu.py", "train")])
def test_bench_scripts_are_the_cli(script, what, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(os.fspath(ROOT / "bench" / script), run_name="__main__")
    assert e.value.code == 0 and f"usage: qknorm bench {what}" in capsys.readouterr().out
