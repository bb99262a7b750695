"""`qknorm bench`: both benchmarks run end to end on CPU (--cpu-smoke, Triton under TRITON_INTERPRET=1 from
tests/conftest.py), print their tables and write results with the versions; an unknown WHAT is a one-line error."""

import json
import os
import runpy
from pathlib import Path

import pytest
import torch
import triton
import transformers

from qknorm.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_out_env(monkeypatch):
    monkeypatch.delenv("OUT", raising=False)  # the device machine sets $OUT; --out must be what the test passes


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


def test_bench_kernel_cpu_smoke(tmp_path, capsys):
    # one shape (per-head) keeps it to seconds under the interpreter; the kernels' numerics are tests/ops' job
    assert main(["bench", "kernel", "--cpu-smoke", "--nshapes", "1", "--no-sweep", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header, rows = _table(out, "| shape (B,T,H,Hkv,D) |")
    assert header == ["shape (B,T,H,Hkv,D)", "scope", "floor", "eager", "compile", "liger", "ours", "ours_compile",
                      "ours_kernels", "ours x floor", "kernels x floor", "eager/ours", "compile/ours", "liger/ours",
                      "ours rel. err"]
    assert [r[:2] for r in rows] == [["(1, 8, 4, 2, 64)", "head"]]
    for r in rows:
        row = dict(zip(header, r))
        assert float(row["eager"]) > 0 and float(row["ours"]) > 0 and float(row["ours x floor"]) > 0
        assert float(row["ours_kernels"]) > 0 and float(row["kernels x floor"]) > 0
        float(row["eager/ours"])  # a number (0.00 here: the interpreter is ~1000x slower than eager)
        assert row["compile"] == row["liger"] == "-"  # no torch.compile, no Liger in the smoke
        assert float(row["ours rel. err"]) < 1e-2  # bf16 vs an fp32 reference
    header, rows = _table(out, "| B,T,d,H,Hkv,D |")
    assert len(rows) == 1 and "-" not in rows[0][1:5] and rows[0][-1].endswith("%")
    md = (tmp_path / "qk_norm_rope.md").read_text()
    assert md.startswith("# QK-RMSNorm + RoPE: cpu") and md in out
    assert f"torch {torch.__version__}" in md and f"triton {triton.__version__}" in md
    res = json.loads((tmp_path / "qk_norm_rope.json").read_text())
    assert res["versions"]["torch"] == torch.__version__ and res["date"] in md
    assert [r["scope"] for r in res["qkrope"]] == ["head"] and not any(
        k.endswith("_error") for r in res["qkrope"] for k in r)


def test_bench_kernel_without_out_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "kernel", "--cpu-smoke", "--nshapes", "1", "--no-sweep", "--no-layer"]) == 0
    out = capsys.readouterr().out
    assert "| (1, 8, 4, 2, 64) | head |" in out and "attention sub-layer" not in out
    assert list(tmp_path.iterdir()) == []


def test_bench_train_cpu_smoke(tmp_path, capsys):
    assert main(["bench", "train", "--cpu-smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header, rows = _table(out, "| variant |")
    assert header == ["variant", "ms/step", "tokens/s", "peak GB", "speed vs HF"]
    assert [r[0] for r in rows] == ["hf", "ours"] and rows[0][-1] == "1.00x"
    assert all(float(r[1]) > 0 and r[-1].endswith("x") for r in rows)
    md = (tmp_path / "train_step.md").read_text()
    assert f"torch {torch.__version__}" in md and f"transformers {transformers.__version__}" in md
    res = json.loads((tmp_path / "train_step.json").read_text())
    assert res["torch"] == torch.__version__ and res["transformers"] == transformers.__version__
    assert set(res["variants"]) == {"hf", "ours"} and all("ms" in v for v in res["variants"].values())


def test_bench_train_unknown_variant_is_one_line_error(capsys):
    assert main(["bench", "train", "--cpu-smoke", "--variants", "hf,nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err and "ours_compile" in err


def test_bench_unknown_what_is_one_line_error(capsys):
    assert main(["bench", "nope"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "qknorm bench: error: bench WHAT='nope' is not allowed; choose one of: kernel, train\n"


@pytest.mark.parametrize("module", ["kernel", "train_step"])
def test_both_benchmarks_have_cpu_smoke(module, capsys):
    import importlib

    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"qknorm.benchmarks.{module}").main(["--help"])
    assert e.value.code == 0 and "--cpu-smoke" in capsys.readouterr().out


@pytest.mark.parametrize("script, module", [("bench_qk_norm_rope.py", "kernel"),
                                            ("bench_train_gpu.py", "train_step")])
def test_bench_scripts_are_thin_wrappers(script, module):
    ns = runpy.run_path(os.fspath(ROOT / "bench" / script), run_name="not_main")
    assert ns["main"].__module__ == f"qknorm.benchmarks.{module}"
