"""Every preset builds, runs forward and backward in fp32 and bf16, and every parameter is live."""
import math

import pytest
import torch

import qknorm
from qknorm import PRESETS, SIZES, get_config, TransformerLM


def _live_grads(model, ids):
    logits = model(ids)
    assert logits.shape == (*ids.shape, model.config.vocab_size)
    assert torch.isfinite(logits.float()).all()
    # a loss that depends on every position and every logit
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids.roll(-1, 1).flatten())
    loss.backward()
    dead = []
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient (created but never applied?)"
        g = p.grad.float()
        assert torch.isfinite(g).all(), f"{name} has a non-finite gradient"
        if g.abs().max() == 0:
            dead.append(name)
    assert not dead, f"parameters with an all-zero gradient: {dead}"


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_preset_forward_backward_all_params_live(preset, dtype):
    torch.manual_seed(0)
    cfg = get_config(preset, "debug")
    model = TransformerLM(cfg).to(dtype)
    with torch.no_grad():  # move norms away from identity so their gradients are generic
        for n, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    ids = torch.randint(0, cfg.vocab_size, (2, 40))  # longer than the gemma3 debug window (16)
    _live_grads(model, ids)


@pytest.mark.parametrize("placement", ["pre", "reordered", "sandwich", "post"])
@pytest.mark.parametrize("scope", ["none", "head", "full"])
def test_every_placement_scope_combination_is_live(placement, scope):
    torch.manual_seed(1)
    cfg = get_config("llama", "debug", placement=placement, qk_norm=scope, n_kv_heads=1)
    _live_grads(TransformerLM(cfg), torch.randint(0, 256, (2, 9)))


def test_sizes_table_matches_preset_functions():
    for name, fn in PRESETS.items():
        for size in SIZES[name]:
            assert fn(size).n_layers >= 1
        with pytest.raises(qknorm.ConfigError, match="choose one of: " + ", ".join(SIZES[name])):
            fn("no-such-size")


# published parameter counts (model cards / config.json of the real checkpoints), 2% tolerance
PUBLISHED = [
    ("llama", "1b", 1.236e9),  # Llama 3.2 1B: 1.24B (tied)
    ("qwen3", "0.6b", 0.596e9),  # Qwen3-0.6B: 0.6B, 0.44B non-embedding
    ("qwen3", "1.7b", 1.72e9),  # Qwen3-1.7B: 1.7B
    ("olmo2", "1b", 1.485e9),  # OLMo-2-0425-1B: 1.48B
    ("olmo2", "7b", 7.30e9),  # OLMo-2-1124-7B: 7.3B
    ("gemma3", "1b", 1.0e9),  # gemma-3-1b-pt: 1B
    ("olmo2", "372m", 372e6),  # the 372M OLMo 2 shape of the training-step benchmark (~370M)
    ("postln", "124m", 124e6),  # GPT-2 small class
    ("llama", "8b", 8.03e9),  # Llama 3.1 8B: 8.03B
    ("mistral", "7b", 7.24e9),  # Mistral 7B v0.1: 7.24B
    ("qwen2", "0.5b", 0.494e9),  # Qwen2.5-0.5B: 0.49B (0.36B non-embedding)
    # the families read from the bundled published configs (presets_families.py)
    ("qwen3_moe", "30b-a3b", 30.5e9),  # Qwen3-30B-A3B model card: 30.5B total
    ("olmoe", "1b-7b", 6.9e9),  # OLMoE-1B-7B: 6.9B total, 1.3B active (Muennighoff et al. 2024)
    ("cohere", "104b", 104e9),  # Command R+: 104B
    ("stablelm", "12b", 12.1e9),  # StableLM 2 12B: 12.1B
]


@pytest.mark.parametrize("preset,size,published", PUBLISHED)
def test_realistic_sizes_match_published_parameter_counts(preset, size, published):
    cfg = get_config(preset, size)
    model = TransformerLM(cfg, device="meta")
    n = model.num_params()
    assert n == cfg.num_params()
    assert abs(n - published) / published < 0.03, f"{preset}/{size}: {n/1e6:.1f}M vs published {published/1e6:.0f}M"


def test_qwen3_non_embedding_count():
    cfg = get_config("qwen3", "0.6b")
    assert abs(cfg.num_params(exclude_embeddings=True) - 0.44e9) / 0.44e9 < 0.03


def test_overrides_change_scope_on_any_placement():
    cfg = get_config("gemma3", "debug", qk_norm="full")
    attn = TransformerLM(cfg).layers[0].attn
    assert attn.q_norm.weight.shape == (cfg.n_heads * cfg.head_dim,)
    assert attn.k_norm.weight.shape == (cfg.n_kv_heads * cfg.head_dim,)
    assert isinstance(TransformerLM(get_config("olmo2", "debug", qk_norm="none")).layers[0].attn.q_norm, type(None))


def test_golden_loss_at_init_is_uniform():
    # with std-0.02 init the logits are near zero: the loss at init is ~ln(vocab) (a measured property)
    torch.manual_seed(0)
    for preset in PRESETS:
        model = TransformerLM(get_config(preset, "debug"))
        ids = torch.randint(0, 256, (4, 32))
        # targets independent of the inputs: a tied head favours the input token itself at init (by |e|^2 / rms:
        # ~1 nat in Cohere's LayerNorm block with logit_scale 0.83)
        targets = torch.randint(0, 256, (4, 32))
        loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1).float(), targets.flatten())
        assert abs(loss.item() - math.log(256)) < 0.1, preset


def test_family_presets_are_what_from_hf_builds_of_the_published_configs():
    """Each family preset's published size is the catalogue's reading of that model's config.json, and its debug
    size keeps the design (QK-norm, placement, RoPE layout, experts' routing) at a CPU size."""
    from qknorm import catalog
    from qknorm.presets_families import FAMILY_PRESETS

    by_source = {e.name: e.config for e in catalog.entries()}
    for name, p in FAMILY_PRESETS.items():
        published, debug = get_config(name, p.size), get_config(name, "debug")
        assert published == by_source[p.entry], name
        for field in ("qk_norm", "qk_norm_type", "qk_norm_gain", "qk_norm_after_rope", "placement", "norm_type",
                      "rope_interleaved", "clip_qkv", "moe_router", "moe_shared_expert", "layernorm_weight"):
            assert getattr(debug, field) == getattr(published, field), (name, field)
        assert debug.n_layers == 4 and debug.vocab_size == 256 and (debug.n_experts > 0) == (published.n_experts > 0)
    assert get_config("olmo", "7b").clip_qkv == 8.0 and get_config("olmoe", "debug", n_layers=2).n_layers == 2
    with pytest.raises(qknorm.ConfigError, match="unknown size 'x' for preset 'olmoe'; choose one of: debug, 1b-7b"):
        get_config("olmoe", "x")
