"""The study's own speed: the FLOPs formula against torch's FLOP counter, and a real tiny study that probes the
machine, prints and records an estimate made before its first run, and records cpu_s, flops_per_s and mfu per
run (the formula applied to the run's measured step time, against the probed peak) and shows them in the report."""
import json
import math

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import qknorm
from qknorm.cli import main
from qknorm.nn import attention as attention_mod
from qknorm.study.speed import step_flops
from qknorm.study.variants import model_config
from qknorm.train import TrainConfig

torch.set_num_threads(1)  # 2-core CI runs two test workers


def _explicit_sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """SDPA as explicit matmuls (which the FLOP counter sees on every backend), causal."""
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, T, T)
    t = q.shape[-2]
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(-1) @ v  # (B, H, T, D)


def test_step_flops_is_what_a_flop_counter_counts_in_a_training_step(monkeypatch):
    """6 N + 12 L H T per token: the counter sees every matmul of forward and backward (attention made explicit,
    since CPU flash attention is not counted)."""
    monkeypatch.setattr(attention_mod.F, "scaled_dot_product_attention", _explicit_sdpa)
    for variant in ("baseline", "qknorm", "gemma3"):
        cfg = model_config(variant, dict(d_model=96, n_layers=2, n_heads=3, n_kv_heads=3, head_dim=32, d_ff=160), 128)
        train = TrainConfig(batch_size=3, seq_len=40)
        model = qknorm.TransformerLM(cfg)
        ids = torch.randint(0, 128, (3, 40))
        with FlopCounterMode(display=False) as counter:
            logits = model(ids)  # (B, T, V)
            F.cross_entropy(logits.reshape(-1, 128), ids.reshape(-1)).backward()
        counted, formula = counter.get_total_flops(), step_flops(cfg, train)
        assert abs(formula / counted - 1) < 1e-9, (variant, counted, formula)


def test_a_real_study_measures_the_machine_and_records_its_speed(tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["study", "--profile", "smoke", "--variants", "baseline", "--optimizers", "adamw,muon", "--lrs", "1e-2",
            "--steps", "14", "--workers", "1", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "GFLOP/s peak" in err and "estimate: ~" in err and "(estimated" in err
    assert err.index("estimate: ~") < err.index("  baseline: ") < err.index("[  1/2]")  # before the first run
    s = json.loads((out / "summary.json").read_text())
    machine, est = s["config"]["machine"], s["config"]["estimate"]
    assert machine["peak_flops"] > 1e9 and "matmul" in machine["peak_probe"]
    assert set(est["step_s"]) == {"adamw", "muon"} and est["runs"] == 2 and est["wall_s"] > 0
    model = qknorm.ModelConfig.from_dict(s["config"]["models"]["baseline"])
    train = TrainConfig(batch_size=s["config"]["train"]["batch_size"], seq_len=s["config"]["train"]["seq_len"])
    for r in s["runs"]:
        assert r["cpu_s"] > 0 and r["step_cpu_ms"] > 0
        assert math.isclose(r["flops_per_s"], step_flops(model, train) / (r["step_cpu_ms"] / 1e3), rel_tol=1e-3)
        assert math.isclose(r["mfu"], r["flops_per_s"] / machine["peak_flops"], abs_tol=1e-3)
        assert 0 < r["mfu"] < 1.5  # the probed peak bounds what a training step reaches (tolerance: timing noise)
    # the estimate extrapolates 11 calibration steps to 14: a run's CPU cost within 3x (a loaded, shared machine)
    cost = {a["optimizer"]: a["fixed_s"] + 14 * a["step_s"] for a in est["arms"]}
    assert all(a["probed"] for a in est["arms"]) and est["compiles"] == []  # one variant: each arm measured
    for r in s["runs"]:
        assert cost[r["optimizer"]] / 3 < r["cpu_s"] < 3 * cost[r["optimizer"]], (r["optimizer"], r["cpu_s"], cost)
    page = (out / "report.html").read_text()
    assert "<th>MFU</th>" in page and "probed peak" in page and "Estimated before training" in page
