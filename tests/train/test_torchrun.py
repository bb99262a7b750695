"""`torchrun --nproc_per_node=2 -m qknorm train --parallel ddp|fsdp` end to end, then a one-process resume.

The two torchrun jobs (the expensive part: fresh interpreters) run concurrently. Each must exit 0, write
metrics.jsonl once (rank 0: one line a step, not two), sharded checkpoints, and a consolidated
model.safetensors + config.json that `qknorm.load_model` reads and whose weights hash to what every rank held
(QKNORM_DEBUG_DIGEST_DIR). Its loss curve must equal a one-process run of the same settings (computed here,
in-process) to rtol 1e-5, and `qknorm train --resume` in one process must continue the sharded run to more
steps on that same curve. The learning rate is constant (warmup 0, final_lr = lr) so a run extended from 4 to
6 steps follows the same schedule as one planned for 6.
"""
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import qknorm
from qknorm.cli import main
from qknorm.data.tokens import load_tokens
from qknorm.train import TrainConfig
from qknorm.train.loop import train

from helpers.ranks import python_env, torchrun
from helpers.tolerances import assert_trained_weights_close

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

torch.set_num_threads(1)

ARGS = ["--preset", "qwen3", "--batch-size", "4", "--seq-len", "16", "--seed", "1", "--lr", "3e-3", "--warmup", "0",
        "--set", "final_lr=3e-3", "--set", "stats_every=0", "--set", "eval_batches=1", "--device", "cpu",
        "--no-progress", "--ckpt-every", "2"]
FIRST, MORE = 4, 6


def _launch(tmp_path, parallel):
    out, dig = tmp_path / parallel, tmp_path / f"{parallel}-digests"
    proc = torchrun(["train", *ARGS, "--steps", str(FIRST), "--parallel", parallel, "--out", str(out)],
                    env=python_env(QKNORM_DEBUG_DIGEST_DIR=str(dig)))
    return out, dig, proc


def _losses(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines], [json.loads(line)["loss"] for line in lines]


def _sha(t):
    return hashlib.sha256(t.detach().to(torch.float32).contiguous().numpy().tobytes()).hexdigest()


def test_torchrun_ddp_and_fsdp_then_resume_in_one_process(tmp_path, capsys):
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(_launch, tmp_path, p) for p in ("ddp", "fsdp")]
        # meanwhile, the reference: one process, same settings, the whole 6 steps
        ref = train(qknorm.get_config("qwen3", "debug"),
                    TrainConfig(steps=MORE, batch_size=4, seq_len=16, seed=1, lr=3e-3, warmup_steps=0, final_lr=3e-3,
                                stats_every=0, eval_batches=1, progress=False), load_tokens())
        runs = [j.result() for j in jobs]
    ref_loss = [h.loss for h in ref.history]

    for (out, dig, proc), parallel in zip(runs, ("ddp", "fsdp")):
        assert "Traceback" not in proc.stderr
        summary = [line for line in proc.stdout.splitlines() if line.startswith("qknorm train: ")]
        assert len(summary) == 1 and summary[0].startswith(f"qknorm train: {FIRST} steps"), proc.stdout
        steps, loss = _losses(out)
        assert steps == list(range(FIRST)), f"{parallel}: metrics.jsonl not written once per step: {steps}"
        np.testing.assert_allclose(loss, ref_loss[:FIRST], rtol=1e-5, err_msg=parallel)

        metas = [json.loads((out / "checkpoints" / f"step_{s:07d}" / "meta.json").read_text()) for s in (2, 4)]
        assert [(m["format"], m["world_size"], m["parallel"]) for m in metas] == [("dcp", 2, parallel)] * 2

        # the consolidated export loads, and holds exactly the weights every rank held
        model = qknorm.load_model(out)
        assert model.config == qknorm.get_config("qwen3", "debug")
        ranks = [json.loads((dig / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0]["digests"] == ranks[1]["digests"] and ranks[0]["parallel"] == parallel
        exported = {n: _sha(p) for n, p in model.named_parameters()}
        assert exported == ranks[0]["digests"]
        assert any(n.endswith("attn.q_norm.weight") for n in exported)

        # continue the 2-process (sharded) run in ONE process, to more steps
        capsys.readouterr()
        assert main(["train", *ARGS, "--steps", str(MORE), "--resume", "--out", str(out)]) == 0
        assert capsys.readouterr().out.startswith(f"qknorm train: {MORE} steps")
        steps, loss = _losses(out)
        assert steps == list(range(MORE))
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=f"{parallel} resumed in one process")
        last = json.loads((out / "checkpoints" / f"step_{MORE:07d}" / "meta.json").read_text())
        assert "format" not in last and last["step"] == MORE  # one process writes the full format
        resumed = qknorm.load_model(out)  # float32 AdamW after another summation order: helpers/tolerances.py
        assert_trained_weights_close(resumed.state_dict(), ref.model.state_dict(), 3e-3, f"{parallel} resumed")
