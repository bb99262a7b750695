"""The load-balancing loss in training (TrainConfig.router_aux_loss_coef): the training loss of a mixture-of-
experts micro-batch is transformers' `loss` with output_router_logits=True (CE + router_aux_loss_coef * aux_loss),
its gradients are transformers' gradients, the loop logs the balancing loss as `router_aux_loss` and the
coefficient changes the update; `--init-from` an HF MoE checkpoint takes its published coefficient."""
from __future__ import annotations

import json

import pytest
import torch

import qknorm
from qknorm.data.tokens import load_tokens
from qknorm.train import TrainConfig
from qknorm.train.loop import train
from qknorm.train.step import training_loss

from helpers.hf_models import input_ids, make_hf

torch.set_num_threads(1)
MOE = qknorm.get_config("qwen3", "debug", n_experts=4, experts_per_token=2, moe_d_ff=64)


@pytest.mark.parametrize("name", ["olmoe", "qwen3_moe"])
def test_training_loss_and_gradients_are_transformers_with_output_router_logits(name):
    hf = make_hf(name, attn="sdpa")
    coef = hf.config.router_aux_loss_coef  # the class defaults: OLMoE 0.01, Qwen3-MoE 0.001
    ours = qknorm.from_hf(hf)
    ids = input_ids(length=48)
    out = hf(input_ids=ids, labels=ids, output_router_logits=True)
    out.loss.backward()
    y = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -100)], dim=1)  # transformers' shift, as labels
    total, ce, aux = training_loss(ours, ids, y, TrainConfig(router_aux_loss_coef=coef))
    total.backward()
    torch.testing.assert_close(aux, out.aux_loss.float(), rtol=1e-6, atol=0)
    torch.testing.assert_close(total, out.loss, rtol=1e-6, atol=0)
    # the balancing term reaches the routers: their gradients are transformers' (each router's included)
    for i, layer in enumerate(ours.layers):
        if hasattr(layer.mlp, "router"):
            theirs = hf.model.layers[i].mlp.gate.weight.grad
            torch.testing.assert_close(layer.mlp.router.weight.grad, theirs, rtol=1e-4, atol=1e-7)
    total, ce, aux = training_loss(ours, ids, y, TrainConfig(router_aux_loss_coef=0.0))
    assert total is ce and aux is not None  # coefficient 0: CE alone, the balancing loss still measured


def test_the_loop_logs_the_balancing_loss_and_the_coefficient_acts():
    data = load_tokens(max_bytes=50_000)
    kw = dict(steps=2, warmup_steps=0, batch_size=4, seq_len=32, lr=1e-2, stats_every=0, eval_batches=1,
              progress=False)
    runs = {c: train(MOE, TrainConfig(**kw, router_aux_loss_coef=c), data) for c in (0.0, 0.01, 1.0)}
    for r in runs.values():
        assert all(h.router_aux_loss >= 1.0 - 1e-6 for h in r.history)  # E * sum f P >= 1 (Cauchy-Schwarz)
    # the same first step (same init and batch): the same CE and balancing loss whatever the coefficient
    assert runs[0.0].history[0].loss == runs[1.0].history[0].loss
    assert runs[0.0].history[0].router_aux_loss == runs[1.0].history[0].router_aux_loss
    router = "layers.0.mlp.router.weight"
    w = {c: r.model.state_dict()[router] for c, r in runs.items()}
    assert not torch.equal(w[0.0], w[1.0]) and not torch.equal(w[0.0], w[0.01])
    dense = train(qknorm.get_config("qwen3", "debug"), TrainConfig(**kw), data)
    assert dense.history[0].router_aux_loss is None and "router_aux_loss" not in dense.history[0].to_json()


def test_init_from_an_hf_moe_checkpoint_takes_its_published_coefficient(tmp_path, capsys):
    from helpers.cli import run_cli

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Qwen3MoeConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                                      num_experts_per_tok=2, moe_intermediate_size=32, router_aux_loss_coef=0.002)
    transformers.Qwen3MoeForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    data = tmp_path / "data.txt"
    data.write_text("".join(f"row {j}: " + "qknorm"[j % 6] * (j % 11) + "\n" for j in range(400)))
    base = ["--init-from", str(tmp_path / "hf"), "--data", str(data), "--steps", "1", "--batch-size", "2",
            "--seq-len", "16", "--device", "cpu", "--no-progress", "--set", "stats_every=0",
            "--set", "eval_batches=1"]
    for out, extra, want in (("a", [], 0.002), ("b", ["--set", "router_aux_loss_coef=0.05"], 0.05)):
        code, _, err = run_cli("train", [*base, "--out", str(tmp_path / out), *extra], capsys)
        assert code == 0, err
        record = json.loads((tmp_path / out / "run.json").read_text())
        assert record["train_config"]["router_aux_loss_coef"] == want
        line = json.loads((tmp_path / out / "metrics.jsonl").read_text().splitlines()[0])
        assert line["router_aux_loss"] >= 1.0 - 1e-6
