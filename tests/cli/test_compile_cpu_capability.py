"""`--compile` where ATEN_CPU_CAPABILITY overrides the CPU's kernels (emulating another CPU): torch 2.13's inductor
then trained to a NaN loss (avx2 on an AVX-512 host) or generated C++ that does not compile (default), minutes into
a cold compile. `qknorm train --compile` and `qknorm study --compile` refuse at once instead: one line naming
ATEN_CPU_CAPABILITY and --no-compile, exit 2, no traceback, nothing written. (Before: train ran the compile.)"""
import os
import subprocess
import sys

import pytest

from tests.helpers.load import scaled

ENV = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", OMP_NUM_THREADS="1")


@pytest.mark.parametrize("argv", [
    ["train", "--preset", "llama", "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--device", "cpu",
     "--no-progress", "--compile"],
    ["study", "--quick", "--lrs", "1e-3", "--steps", "2", "--workers", "1", "--device", "cpu", "--compile"],
], ids=["train", "study"])
def test_compile_with_an_emulated_cpu_capability_is_refused_in_one_line(tmp_path, argv):
    out = tmp_path / "r"
    p = subprocess.run([sys.executable, "-m", "qknorm", *argv, "--out", str(out)], capture_output=True, text=True,
                       env=ENV, timeout=scaled(180))
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert f"qknorm {argv[0]}: error: " in p.stderr and "ATEN_CPU_CAPABILITY=avx2" in p.stderr, p.stderr
    assert "--no-compile" in p.stderr and not out.exists()
