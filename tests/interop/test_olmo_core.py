"""OLMo-core itself as the reference: its models, built with its own builders and every norm gain randomized,
come into qknorm through both of its save formats and compute the same fp32 logits and gradients.

  HF path       OLMo-core's HF export as written (max_position_embeddings: -1) -> qknorm.from_hf
  native path   its trainer checkpoint (model_and_optim/ DCP + config.json) -> qknorm convert --from-olmo-core
                -> qknorm.load_model; and `qknorm inspect` on the converted model and on the step dir

Logits are bit-identical to OLMo-core's (the same fp32 operations in the same order: RMSNorm in fp32, the weight
multiply, RoPE in rotate-half form, SDPA). One exception, by design: for the Gemma 3-like model qknorm stores
the gains as Gemma 3 offsets w - 1 and computes 1 + (w - 1), which is w exactly for w >= 0.5 but can round
below that (gains here are drawn from exp(0.5 N(0, 1)), about 10% below 0.5). So the reference is OLMo-core's
model carrying the gains qknorm stores (1 + (w - 1), identical to w for the other three): against it the
logits are bit-identical for all four; against the original gains the Gemma 3-like logits differ by ~1e-6
(asserted <= 1e-5). Gradients come from different backward graphs (GQA through SDPA's enable_gqa vs
OLMo-core's repeated k/v; our fused QK-norm+RoPE reference vs its separate ops): max |diff| / max |grad| per
tensor <= 1e-5 (measured <= 1e-6).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from pathlib import Path
from typing import Dict

import pytest
import torch

import qknorm
from qknorm.cli import main

from helpers.olmo_core_models import (VARIANTS, build, input_ids, loss_and_grads, max_rel, olmo_core_to_ours_key,
                                      save_hf, save_native)

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

GRAD_TOL = 1e-5


@dataclasses.dataclass
class Saved:
    name: str
    placement: str
    ids: torch.Tensor
    logits: torch.Tensor  # of OLMo-core's model with the gains qknorm stores
    grads: Dict[str, torch.Tensor]
    logits_original: torch.Tensor  # of OLMo-core's model as built
    hf_dir: Path
    step_dir: Path


@pytest.fixture(scope="module", params=VARIANTS)
def saved(request, tmp_path_factory) -> Saved:
    name = request.param
    model = build(name)
    placement = {"ReorderedNormTransformerBlock": "reordered", "TransformerBlock": "pre",
                 "PeriNormTransformerBlock": "sandwich"}[type(model.blocks["0"]).__name__]
    ids = input_ids()
    reference = stored_gains(model) if placement == "sandwich" else model
    with torch.no_grad():
        logits, logits_original = reference(ids), model(ids)
    grads = loss_and_grads(reference, ids)
    root = tmp_path_factory.mktemp(name)
    hf_dir = save_hf(model, name, root / "hf")
    step_dir = save_native(model, name, root / "step10")
    return Saved(name, placement, ids, logits, grads, logits_original, hf_dir, step_dir)


@torch.no_grad()
def stored_gains(model: torch.nn.Module) -> torch.nn.Module:
    """A copy whose norm gains are what Gemma's offset storage gives back: 1 + (w - 1), in fp32."""
    out = copy.deepcopy(model)
    for key, p in out.named_parameters():
        if "norm" in key:
            p.copy_(1.0 + (p - 1.0))
    return out


def _check(ours: qknorm.TransformerLM, s: Saved) -> None:
    with torch.no_grad():
        logits = ours(s.ids)
    assert torch.equal(logits, s.logits), f"max |diff| {(logits - s.logits).abs().max():.3g}"
    assert (logits - s.logits_original).abs().max() <= 1e-5
    if s.placement != "sandwich":
        assert torch.equal(s.logits, s.logits_original)  # no offset storage: nothing rounded
    grads = loss_and_grads(ours, s.ids)
    assert torch.equal(grads["loss"], s.grads["loss"])
    ours_names = {olmo_core_to_ours_key(k, s.placement): k for k in s.grads if k != "loss"}
    assert set(ours_names) == set(grads) - {"loss"}, "every parameter has exactly one counterpart"
    for ours_key, theirs in ours_names.items():
        assert max_rel(grads[ours_key], s.grads[theirs]) <= GRAD_TOL, (ours_key, theirs)


def test_hf_export_as_written_loads_and_matches(saved):
    """Fails on the old code: OLMo-core writes max_position_embeddings -1, which became max_seq_len=-1."""
    cfg = json.loads((saved.hf_dir / "config.json").read_text())
    assert cfg["max_position_embeddings"] == -1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = qknorm.from_hf(saved.hf_dir)
    assert any("max_position_embeddings=-1" in str(w.message) for w in caught)
    assert ours.config.max_seq_len == {"olmo2": 2048, "qwen3": 32768, "gemma3": 131072}[
        {"olmo2_mha": "olmo2", "olmo2_gqa": "olmo2", "qwen3_like": "qwen3", "gemma3_like": "gemma3"}[saved.name]]
    _check(ours, saved)


def test_native_checkpoint_converts_and_matches(saved, tmp_path, capsys):
    out = tmp_path / "ours"
    assert main(["convert", "--from-olmo-core", str(saved.step_dir), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    ours = qknorm.load_model(out)
    _check(ours, saved)
    ids = ",".join(map(str, saved.ids[0, :16].tolist()))
    for target in (out, saved.step_dir):  # the converted model, and the OLMo-core step directory directly
        assert main(["inspect", str(target), "--ids", ids, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert len(report["layers"]) == ours.config.n_layers


def test_native_and_hf_paths_give_the_same_model(saved):
    """Both routes describe one model: the same config (up to max_seq_len) and the same tensors."""
    native = qknorm.from_olmo_core(saved.step_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = qknorm.from_hf(saved.hf_dir)
    def same(c):  # explicit all-full layer_types (HF Qwen3) and query_pre_attn_scalar = head_dim are defaults
        return c.replace(max_seq_len=1, layer_types=c.resolved_layer_types(),
                         query_pre_attn_scalar=float(c.query_pre_attn_scalar or c.head_dim))

    assert same(native.config) == same(hf.config)
    a, b = native.state_dict(), hf.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
