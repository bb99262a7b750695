"""Retrofit writes the better of the models it measured: the calibrated model when healing made the held-out
KL to the original worse (a random model whose attention calibration already matches, healed at a large LR moves
away from it), the healed one when asked to (`keep_healed`). The written model's KL is measured here from its
files with torch's own log-softmax, against the original's logits, on the retrofit's held-out windows."""
import json

import pytest
import torch
import torch.nn.functional as F

import qknorm
from qknorm.retrofit import RetrofitConfig
from qknorm.retrofit.pipeline import prepare, retrofit

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("keep")
    model = qknorm.TransformerLM(qknorm.get_config("llama", "debug").replace(d_model=32, n_layers=2, n_heads=2,
                                                                              n_kv_heads=1, d_ff=64))
    qknorm.save_model(model, root / "src")
    return root


def _cfg(**kw):
    return RetrofitConfig(scope="head", seq_len=32, batch_size=4, calib_tokens=512, calib_steps=5, eval_tokens=1024,
                          heal_steps=3, lr=0.05, device="cpu", **kw)


def _kl_of_written(src, out, cfg) -> float:
    """Mean next-token KL(original || written model) on the retrofit's held-out windows (float64)."""
    original, written = qknorm.load_model(src).eval(), qknorm.load_model(out).eval()
    batches = prepare(src, out.parent / "unused", cfg).eval_batches
    total, n = 0.0, 0
    with torch.no_grad():
        for x, _ in batches:
            p = F.log_softmax(original(x).double(), -1)
            q = F.log_softmax(written(x).double(), -1)
            total += float((p.exp() * (p - q)).sum())
            n += x.numel()
    return total / n


def test_a_healing_that_made_the_kl_worse_is_not_what_gets_written(source):
    cfg = _cfg()
    out = source / "best"
    lines = []
    r = retrofit(source / "src", out, cfg, log=lines.append)
    assert r.kl_healed > 10 * r.kl_calibrated, (r.kl_calibrated, r.kl_healed)  # healing did make it worse
    assert r.kept == "calibrated" and r.calibration_kept in ("fitted", "naive")  # two choices, two fields
    written = _kl_of_written(source / "src", out, cfg)
    assert written == pytest.approx(r.kl_calibrated, rel=1e-3, abs=1e-7) and written < r.kl_healed / 10
    saved = json.loads((out / "retrofit_report.json").read_text())
    assert saved["kept"] == "calibrated" and saved["kl_healed"] == pytest.approx(r.kl_healed)
    assert sum("kept the calibrated model" in line for line in lines) == 1, lines


def test_keep_healed_writes_the_healed_model_even_when_it_measured_worse(source):
    cfg = _cfg(keep_healed=True)
    out = source / "forced"
    r = retrofit(source / "src", out, cfg)
    assert r.kept == "healed" and r.kl_healed > 10 * r.kl_calibrated
    assert _kl_of_written(source / "src", out, cfg) == pytest.approx(r.kl_healed, rel=1e-3)
