"""OLMo-core models built with its own builders, every norm gain randomized, and saved the two ways OLMo-core
saves them: its Hugging Face export and its native trainer checkpoint (a step directory with a
`model_and_optim/` DCP folder and the run's `config.json`).

Variants (fp32, tiny so the suite stays fast):
  olmo2_mha   TransformerConfig.olmo2_14M, 2 layers             reordered norm, full-width QK-norm, MHA
  olmo2_gqa   TransformerConfig.olmo2_14M(n_kv_heads=2)         the acceptance check's model (4 layers)
  qwen3_like  TransformerConfig.llama_like with qwen3_0_6B's options: qwen_rms norms, head-wise QK-norm, explicit
              head_dim != d_model / n_heads, GQA, tied head, RoPE theta 1e6 (rope_full_precision=False)
  llama_like  TransformerConfig.llama_like: pre-norm, no QK-norm, GQA (not in VARIANTS: for commands that need a
              model without QK-norm, e.g. retrofit)
  gemma3_like TransformerConfig.gemma3_like: peri-norm blocks, head-wise QK-norm, sqrt(d) embedding scale, GeGLU,
              local (sliding window 8 < T) / global layers with their own RoPE thetas, tied head

`save_hf_model` exports reordered-norm (OLMo 2/3) models only, so for the other two the HF directory is written
with OLMo-core's own weight conversion (`convert_state_to_hf`, which also shifts Gemma gains by -1) and a
transformers config describing the same model.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Dict

import pytest
import torch

olmo_core = pytest.importorskip(
    "olmo_core", reason="OLMo-core is not installed (pip install -e '.[peers]'; `bash run.sh test` installs it)")

from olmo_core.distributed.checkpoint import save_model_and_optim_state  # noqa: E402
from olmo_core.nn.layer_norm import LayerNormType  # noqa: E402
from olmo_core.nn.transformer import TransformerConfig  # noqa: E402

VOCAB, T = 512, 32
VARIANTS = ("olmo2_mha", "olmo2_gqa", "qwen3_like", "gemma3_like")


def olmo_config(name: str) -> TransformerConfig:
    if name == "olmo2_mha":
        return TransformerConfig.olmo2_14M(vocab_size=VOCAB, n_layers=2)
    if name == "olmo2_gqa":
        return TransformerConfig.olmo2_14M(vocab_size=VOCAB, n_kv_heads=2)
    if name == "qwen3_like":
        return TransformerConfig.llama_like(
            d_model=128, vocab_size=VOCAB, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=48, rope_theta=1_000_000,
            rope_full_precision=False, layer_norm_eps=1e-6, layer_norm_name=LayerNormType.qwen_rms, qk_norm=True,
            use_head_qk_norm=True, tie_word_embeddings=True)
    if name == "llama_like":  # no QK-norm: what `qknorm retrofit` takes
        return TransformerConfig.llama_like(d_model=128, vocab_size=VOCAB, n_layers=2, n_heads=4, n_kv_heads=2,
                                            layer_norm_eps=1e-6)
    if name == "gemma3_like":
        return TransformerConfig.gemma3_like(
            d_model=128, vocab_size=VOCAB, n_layers=4, n_heads=4, n_kv_heads=2, hidden_size=256, head_dim=32,
            local_window_size=8, global_layer_interval=2, tie_word_embeddings=True)
    raise KeyError(name)


@torch.no_grad()
def build(name: str, seed: int = 0) -> torch.nn.Module:
    """OLMo-core's model, initialized by OLMo-core, with every norm gain drawn from exp(0.5 N(0, 1)): positive,
    about 0.2 to 5, with arbitrary low bits (so gains below 0.5, where the Gemma offset w - 1 rounds, occur)."""
    model = olmo_config(name).build(init_device="cpu")
    model.init_weights(device=torch.device("cpu"))
    g = torch.Generator().manual_seed(seed)
    for key, p in model.named_parameters():
        if "norm" in key:
            p.copy_(torch.exp(0.5 * torch.randn(p.shape, generator=g)))
    return model.eval()


def save_native(model: torch.nn.Module, name: str, step_dir: Path, *, with_optim: bool = True) -> Path:
    """A trainer-style step directory: model_and_optim/ (DCP, written by OLMo-core) + config.json."""
    optim = None
    if with_optim:  # real trainer checkpoints carry optimizer state, which the reader must skip
        optim = torch.optim.AdamW(model.parameters(), lr=0.0)
        model(input_ids(1)).sum().backward()
        optim.step()
        model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # "torch.distributed is disabled ... save in a single process": intended
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled")
        save_model_and_optim_state(str(step_dir / "model_and_optim"), model, optim)
    (step_dir / "config.json").write_text(json.dumps({"run_name": name, "model": olmo_config(name).as_config_dict()}))
    return step_dir


def save_hf(model: torch.nn.Module, name: str, out: Path) -> Path:
    """OLMo-core's HF export (save_hf_model), or its convert_state_to_hf where save_hf_model has no config."""
    if name.startswith("olmo2"):
        from olmo_core.nn.hf.checkpoint import save_hf_model

        save_hf_model(str(out), model.state_dict(), model)
        return out
    import transformers
    from olmo_core.nn.hf.convert import convert_state_to_hf
    from safetensors.torch import save_file

    hf_config = _hf_config(name, transformers)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hf_state = convert_state_to_hf(hf_config, state)
    out.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in hf_state.items()}, str(out / "model.safetensors"))
    hf_config.to_json_file(str(out / "config.json"))
    return out


def _hf_config(name: str, transformers):
    common = dict(vocab_size=VOCAB, hidden_size=128, rms_norm_eps=1e-6, max_position_embeddings=-1,
                  tie_word_embeddings=True, attention_bias=False)
    if name == "qwen3_like":
        return transformers.Qwen3Config(**common, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, head_dim=48, rope_theta=1_000_000)
    types = ["sliding_attention", "full_attention"] * 2
    return transformers.Gemma3TextConfig(
        **common, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, layer_types=types, sliding_window=8, query_pre_attn_scalar=32, rope_theta=1_000_000,
        rope_local_base_freq=10_000, hidden_activation="gelu_pytorch_tanh", final_logit_softcapping=None)


def input_ids(batch: int = 2, length: int = T, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


_BLOCK_KEYS = {"attention.w_q.weight": "attn.q_proj.weight", "attention.w_k.weight": "attn.k_proj.weight",
               "attention.w_v.weight": "attn.v_proj.weight", "attention.w_out.weight": "attn.o_proj.weight",
               "attention.q_norm.weight": "attn.q_norm.weight", "attention.k_norm.weight": "attn.k_norm.weight",
               "feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w2.weight": "mlp.down_proj.weight",
               "feed_forward.w3.weight": "mlp.up_proj.weight"}
_NORM_KEYS = {  # by placement
    "pre": {"attention_norm.weight": "attn_norm_in.weight", "feed_forward_norm.weight": "mlp_norm_in.weight"},
    "reordered": {"attention_norm.weight": "attn_norm_out.weight", "feed_forward_norm.weight": "mlp_norm_out.weight"},
    "sandwich": {"attention_norm.weight": "attn_norm_in.weight", "post_attention_norm.weight": "attn_norm_out.weight",
                 "feed_forward_norm.weight": "mlp_norm_in.weight",
                 "post_feed_forward_norm.weight": "mlp_norm_out.weight"},
}
_TOP_KEYS = {"embeddings.weight": "embed.weight", "lm_head.norm.weight": "norm.weight",
             "lm_head.w_out.weight": "lm_head.weight"}


def olmo_core_to_ours_key(key: str, placement: str) -> str:
    """The qknorm parameter that OLMo-core's parameter `key` becomes (written out here, independently of the
    converter, to compare gradients)."""
    if key in _TOP_KEYS:
        return _TOP_KEYS[key]
    _, i, rest = key.split(".", 2)  # blocks.{i}.{rest}
    return f"layers.{i}." + {**_BLOCK_KEYS, **_NORM_KEYS[placement]}[rest]


def loss_and_grads(model: torch.nn.Module, ids: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Next-token cross-entropy of `model(ids)` and the gradient of every parameter, by name."""
    model.zero_grad(set_to_none=True)
    logits = model(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return {"loss": loss.detach(), **grads}


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(math.ulp(1.0)))
