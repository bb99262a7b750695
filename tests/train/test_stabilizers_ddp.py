"""Muon, QK-clip and sigmaReparam under DDP (2 forked gloo ranks) against one process with the same global batch.

QK-clip must clip every replica by the same factors: the per-head maxima are maxed over the ranks before the
clip (each rank sees other rows, so its own maxima differ). sigmaReparam's u/v buffers and Muon's momentum must
stay in step. Checked: every parameter bit-identical across the ranks (without the max over the ranks the
qk_clip case fails here: its replicas drift apart), and the loss curve equal to a single-process `train()` on
the same global batch to rtol 1e-4. Muon is not float-exact across summation orders: its Newton-Schulz runs in
bfloat16, so a last-bit difference in a gradient can round differently; measured (torch 2.13 CPU, 5 steps) max
relative loss difference 1.5e-5 and final weights up to 2.3e-3 apart (the embedding: AdamW's normalized step
amplifies the difference in small gradients), so the weights are compared across ranks, not to the one process.
"""
import numpy as np
import pytest
import torch

import qknorm
from qknorm.train import TrainConfig
from qknorm.train.distributed import DistributedRuntime, parameter_digests
from qknorm.train.loop import train
from qknorm.train.tokens import load_tokens

from helpers.ranks import run_ranks

torch.set_num_threads(1)

CFG = dict(steps=5, warmup_steps=1, lr=2e-2, batch_size=8, seq_len=32, seed=2, stats_every=0, eval_batches=1,
           progress=False, optimizer="muon")
CASES = {"muon": (qknorm.get_config("llama", "debug"), {}),
         "qk_clip": (qknorm.get_config("llama", "debug"), dict(qk_clip=0.05)),  # below the init logits: every step
         "sigma_reparam": (qknorm.get_config("llama", "debug", sigma_reparam=True), {})}


@pytest.fixture(scope="module")
def data():
    return load_tokens(max_bytes=150_000)


def _run(rt, data, case):
    model_cfg, extra = CASES[case]
    r = train(model_cfg, TrainConfig(**CFG, **extra), data, runtime=rt)
    return {"loss": [h["loss"] for h in r.history], "clipped": [h.get("qk_clip_heads") for h in r.history],
            "state": {k: v.clone() for k, v in r.model.state_dict().items()},
            "digests": parameter_digests(r.model)}


def _rank(rank, data, case):
    return _run(DistributedRuntime("cpu", "ddp"), data, case)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ddp_matches_one_process(data, case):
    from qknorm.train.runtime import Runtime

    single = _run(Runtime("cpu"), data, case)
    ranks = run_ranks(_rank, data, case)
    assert ranks[0]["digests"] == ranks[1]["digests"]  # the replicas agree bit for bit
    np.testing.assert_allclose(ranks[0]["loss"], single["loss"], rtol=1e-4, atol=0)

    if case == "qk_clip":
        assert ranks[0]["clipped"] == single["clipped"] and min(single["clipped"]) > 0
