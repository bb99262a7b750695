"""Muon's Newton-Schulz dtype: bf16 is torch.optim.Muon's iteration, fp32 is closer to a float64 reference, one
fp32 Muon step equals the update written out in float64, the probe picks the dtype an independent matmul timing
says is fast (native and with oneDNN held to AVX2, where bf16 is emulated), and run.json records the choice."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz as torch_newton_schulz

import qknorm
from qknorm.train import TrainConfig
from qknorm.train import newton_schulz as ns
from qknorm.train.loop import train
from qknorm.train.optim import build_optimizer, set_lr
from qknorm.data.tokens import load_tokens

from helpers.load import scaled

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

torch.set_num_threads(1)  # 2-core CI runs two test workers
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _rel(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("shape", [(48, 48), (96, 40), (40, 96)])
def test_bf16_is_torchs_iteration_and_fp32_is_closer_to_float64(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))
    keep = g.clone()
    ref = ns.newton_schulz(g.double(), torch.float64)
    bf16, fp32 = ns.newton_schulz(g, torch.bfloat16), ns.newton_schulz(g, torch.float32)
    assert torch.equal(g, keep)  # the input (Muon's momentum buffer) is not touched
    theirs = torch_newton_schulz(g, ns.NS_COEFFICIENTS, ns.NS_STEPS, ns.NS_EPS)
    assert bf16.dtype == theirs.dtype == torch.bfloat16 and fp32.dtype == torch.float32
    torch.testing.assert_close(bf16, theirs, rtol=2 ** -8, atol=1e-6)  # one bf16 ulp: the same operations
    # fp32 rounding (eps 1.2e-7) grows over 15 matmuls to ~1e-6; bf16's (eps 7.8e-3) to ~1e-2
    assert _rel(fp32, ref) < 1e-5 < 1e-3 < _rel(bf16, ref) < 5e-2, (_rel(fp32, ref), _rel(bf16, ref))
    # the float64 reference orthogonalizes: singular values pulled from G's spread into ~[0.3, 1.25]
    sv = torch.linalg.svdvals(ref)
    assert sv.max() < 1.25 and sv.min() > 0.25


def test_an_fp32_muon_step_is_the_update_written_out_in_float64():
    """Independent: momentum, Nesterov, float64 Newton-Schulz, decoupled decay and torch's match_rms_adamw scale."""
    model = qknorm.TransformerLM(qknorm.get_config("llama", "debug"))
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-2, weight_decay=0.1, muon_ns_dtype="fp32"))
    assert opt.precision.dtype == "fp32" and opt.precision.how == "set"
    w = model.layers[0].mlp.up_proj.weight  # (d_ff, d_model): a tall matrix, transposed inside
    g = torch.Generator().manual_seed(3)
    grads = [torch.randn(w.shape, generator=g) for _ in range(2)]
    w64, buf, lr = w.detach().double().clone(), torch.zeros(w.shape, dtype=torch.float64), 5e-3
    for grad in grads:
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        w.grad = grad.clone()
        set_lr(opt, lr)
        opt.step()
        buf = 0.95 * buf + 0.05 * grad.double()  # lerp(buf, grad, 1 - mu)
        nesterov = 0.05 * grad.double() + 0.95 * buf  # lerp(grad, buf, mu)
        w64 = w64 * (1 - lr * 0.1) - lr * 0.2 * max(w.shape) ** 0.5 * ns.newton_schulz(nesterov, torch.float64)
    torch.testing.assert_close(w.detach().double(), w64, rtol=0, atol=1e-6)


def test_the_rule_keeps_bf16_unless_it_is_clearly_slower(monkeypatch):
    times = {}
    monkeypatch.setattr(ns, "probe_ns_seconds", lambda dtype, shape, device: times[dtype])
    monkeypatch.setattr(ns, "_CACHE", {})
    times.update({torch.bfloat16: 2.0, torch.float32: 1.0})
    slow = ns.choose_ns_dtype("auto", torch.device("cpu"), (512, 128))
    assert (slow.dtype, slow.how, slow.shape, slow.bf16_ms, slow.fp32_ms) == ("fp32", "probed", (128, 512),
                                                                            2000.0, 1000.0)
    assert ns.choose_ns_dtype("auto", torch.device("cpu"), (128, 512)) is slow  # cached per process and shape
    times.update({torch.bfloat16: 1.1, torch.float32: 1.0})
    assert ns.choose_ns_dtype("auto", torch.device("cpu"), (64, 64)).dtype == "bf16"
    assert ns.choose_ns_dtype("auto", torch.device("cpu"), (4096, 4096)).shape == (256, 1024)  # a capped probe
    assert ns.choose_ns_dtype("bf16", torch.device("cpu"), (64, 64)).how == "set"


_PROBE = """
import time, torch
from qknorm.train.newton_schulz import choose_ns_dtype
torch.set_num_threads(1)
def gflops(dtype):  # an independent measure: one plain matmul of the Gram's shape, process CPU time
    x = torch.randn(128, 512).to(dtype)
    x @ x.T
    t, n = time.process_time(), 0
    while time.process_time() - t < 0.05:
        x @ x.T
        n += 1
    return 2 * 128 * 512 * 128 * n / (time.process_time() - t) / 1e9
ratio = gflops(torch.float32) / gflops(torch.bfloat16)
print(ratio, choose_ns_dtype("auto", torch.device("cpu"), (512, 128)).dtype)
"""


@pytest.mark.parametrize("isa", [None, "AVX2"])
def test_the_probe_picks_what_an_independent_timing_says_is_fast(isa):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN emulate bf16 as on an AVX2-only CPU (measured ~30x slower than fp32
    on an AVX512-BF16 machine); natively the answer depends on the CPU, and only a clear ratio is checked."""
    env = {**os.environ, "PYTHONPATH": SRC}
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=scaled(120))
    assert out.returncode == 0, out.stderr
    ratio, choice = out.stdout.split()
    ratio = float(ratio)  # fp32 GFLOP/s over bf16 GFLOP/s: large where bf16 is slow
    if 1 / 1.1 < ratio < 2.0:
        pytest.skip(f"bf16 and fp32 matmuls are too close on this CPU (fp32/bf16 GFLOP/s {ratio:.2f}) to check")
    assert choice == ("fp32" if ratio >= 2.0 else "bf16"), (ratio, choice)


def test_run_json_and_the_result_record_the_choice(tmp_path):
    data = load_tokens(max_bytes=50_000)
    cfg = TrainConfig(optimizer="muon", steps=2, warmup_steps=0, batch_size=2, seq_len=16, stats_every=0,
                      eval_batches=1, progress=False)
    r = train(qknorm.get_config("llama", "debug"), cfg, data, out_dir=tmp_path / "a")
    rec = json.loads((tmp_path / "a" / "run.json").read_text())["execution"]["muon_newton_schulz"]
    assert rec["how"] == "probed" and rec["dtype"] == r.muon_ns.dtype in ("bf16", "fp32")
    assert rec["bf16_ms"] > 0 and rec["fp32_ms"] > 0
    r = train(qknorm.get_config("llama", "debug"), cfg.replace(muon_ns_dtype="fp32"), data, out_dir=tmp_path / "b")
    assert json.loads((tmp_path / "b" / "run.json").read_text())["execution"]["muon_newton_schulz"]["dtype"] == "fp32"
    adamw = train(qknorm.get_config("llama", "debug"), cfg.replace(optimizer="adamw"), data, out_dir=tmp_path / "c")
    assert adamw.muon_ns is None and json.loads((tmp_path / "c" / "run.json").read_text())["execution"] == {}
