"""compile=True: the same training as eager to 1e-5 (AdamW and Muon, losses, gradient norms and final weights),
one graph and no graph break or recompile reported for a run, none at all for the next run of the same shape in
the process (the compiled graph is reused), and the stats pass and validation left eager."""
import os

import pytest
import torch

import qknorm
from qknorm.train import TrainConfig
from qknorm.train.loop import train
from qknorm.data.tokens import load_tokens

torch.set_num_threads(1)  # 2-core CI runs two test workers

# With ATEN_CPU_CAPABILITY set (ATen's kernels emulating another CPU) torch 2.13's inductor, which follows the
# variable (torch/_inductor/cpu_vec_isa.py: pick_vec_isa), trained to a NaN loss (avx2 on an AVX-512 host) or wrote
# C++ that does not compile (default: no vector ISA, `at::vec` undeclared); so training refuses compile there
# (train/compiled.py, tests/cli/test_compile_cpu_capability.py) and this test runs on the host's own kernels only.
pytestmark = pytest.mark.skipif(bool(os.environ.get("ATEN_CPU_CAPABILITY")),
                                reason="ATEN_CPU_CAPABILITY emulates another CPU: compile is refused there (torch 2.13's "
                                       "inductor gave a NaN loss / a C++ compile error)")


@pytest.mark.slow  # a cold torch.compile of the debug model: ~10 s of CPU, longer on a loaded machine
def test_compiled_training_matches_eager_and_reports_one_graph():
    data = load_tokens(max_bytes=50_000)
    model = qknorm.get_config("llama", "debug")
    for optimizer in ("adamw", "muon"):
        cfg = TrainConfig(optimizer=optimizer, steps=4, warmup_steps=1, lr=1e-2, batch_size=2, seq_len=16,
                          stats_every=2, eval_batches=1, progress=False, muon_ns_dtype="fp32")
        eager = train(model, cfg, data)
        compiled = train(model, cfg.replace(compile=True), data)
        assert eager.compile_report is None
        for a, b in zip(eager.history, compiled.history):
            for key in ("loss", "grad_norm", "max_attn_logit", "val_loss"):
                va, vb = getattr(a, key), getattr(b, key)
                if va is not None:
                    assert abs(va - vb) <= 1e-5 * max(1.0, abs(va)), (optimizer, a.step, key)
        for (name, p), q in zip(eager.model.named_parameters(), compiled.model.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-5, msg=name)
        rep = compiled.compile_report
        assert (rep.graph_breaks, rep.recompiles) == (0, 0), rep
        # the first run in this process compiles the forward (one graph); the second reuses it
        assert rep.graphs == (1 if optimizer == "adamw" else 0), rep
