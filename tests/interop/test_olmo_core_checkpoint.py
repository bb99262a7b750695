"""OLMo-core checkpoints beyond the four reference models: where the config may live, options that map
(sliding windows, position-interpolation RoPE scaling, attention bias), options that must be refused in one
line with nothing written, damaged or malicious files, and a checkpoint sharded by two FSDP ranks."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import qknorm
from qknorm.cli import main
from qknorm.interop.olmo_core import find_olmo_core_checkpoint, read_dcp_metadata

from helpers.olmo_core_models import VOCAB, build, input_ids, olmo_config, save_native
from helpers.ranks import run_ranks

from olmo_core.nn.attention import GateConfig, SlidingWindowAttentionConfig  # noqa: E402
from olmo_core.nn.layer_norm import LayerNormType  # noqa: E402
from olmo_core.nn.rope import PIRoPEScalingConfig, YaRNRoPEScalingConfig  # noqa: E402
from olmo_core.nn.transformer import TransformerConfig  # noqa: E402

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels


@pytest.fixture(scope="module")
def step(tmp_path_factory) -> Path:
    """OLMo-core's olmo2_mha saved as a trainer step directory."""
    return save_native(build("olmo2_mha"), "olmo2_mha", tmp_path_factory.mktemp("o") / "step3")


def _logits(model, ids=None):
    with torch.no_grad():
        return model(input_ids() if ids is None else ids)


# ---------------------------------------------------------------------------------------------- layout
def test_config_beside_or_above_the_dcp_folder_bare_or_under_model(step, tmp_path):
    ref = _logits(qknorm.from_olmo_core(step))
    model_cfg = json.loads((step / "config.json").read_text())["model"]
    # the DCP folder itself, a bare TransformerConfig one level up, with a recorded training sequence length
    run = tmp_path / "run"
    shutil.copytree(step / "model_and_optim", run / "ckpt")
    (run / "config.json").write_text(json.dumps({**model_cfg, "_note": "bare"}))
    bare = qknorm.from_olmo_core(run / "ckpt")
    assert torch.equal(_logits(bare), ref) and bare.config.max_seq_len == 2048  # the olmo2 default
    (run / "config.json").write_text(json.dumps({"model": model_cfg, "train_module": {"max_sequence_length": 4096}}))
    assert qknorm.from_olmo_core(run / "ckpt").config.max_seq_len == 4096
    assert qknorm.from_olmo_core(run / "ckpt", max_seq_len=8192).config.max_seq_len == 8192
    assert find_olmo_core_checkpoint(run / "ckpt").config_path == run / "config.json"
    # as_dict() instead of as_config_dict(): every option written, None as null, no class names
    (run / "config.json").write_text(json.dumps({"model": olmo_config("olmo2_mha").as_dict()}))
    assert qknorm.from_olmo_core(run / "ckpt").config == bare.config
    half = qknorm.from_olmo_core(step, dtype="bf16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    with pytest.raises(qknorm.ConfigError, match="max_seq_len=0 must be an integer >= 1"):
        qknorm.from_olmo_core(step, max_seq_len=0)


def test_missing_config_is_one_line_and_nothing_is_written(step, tmp_path, capsys):
    shutil.copytree(step / "model_and_optim", tmp_path / "s" / "model_and_optim")
    assert main(["convert", "--from-olmo-core", str(tmp_path / "s"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no config.json in" in err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("full_only", [True, False], ids=["scaled_full_layers", "scaled_all_layers"])
def test_sliding_windows_linear_rope_scaling_and_bias_map_exactly(tmp_path, full_only):
    """OLMo 3-style reordered blocks with a window shorter than the sequence, PI scaling on the full layers
    only (OLMo-core's with_rope_scaling default) or on every layer, and biased attention projections."""
    cfg = TransformerConfig.olmo2_14M(vocab_size=VOCAB, n_layers=4, sliding_window=SlidingWindowAttentionConfig(
        pattern=[8, 8, -1], force_full_attention_on_first_layer=False, force_full_attention_on_last_layer=True))
    cfg.block.sequence_mixer.bias = True
    cfg = cfg.with_rope_scaling(PIRoPEScalingConfig(factor=4.0), full_attn_layers_only=full_only)
    model = cfg.build(init_device="cpu")
    model.init_weights(device=torch.device("cpu"))
    with torch.no_grad():
        for key, p in model.named_parameters():
            if "norm" in key or key.endswith("bias"):
                p.add_(0.3 * torch.randn(p.shape))
    (tmp_path / "s").mkdir()
    from olmo_core.distributed.checkpoint import save_model_and_optim_state

    with warnings.catch_warnings():  # single-process save: intended
        warnings.simplefilter("ignore")
        save_model_and_optim_state(str(tmp_path / "s" / "model_and_optim"), model)
    (tmp_path / "s" / "config.json").write_text(json.dumps({"model": cfg.as_config_dict()}))
    ours = qknorm.from_olmo_core(tmp_path / "s")
    c = ours.config
    assert c.resolved_layer_types() == ("sliding_attention", "sliding_attention", "full_attention", "full_attention")
    assert (c.sliding_window, c.attention_bias, c.o_proj_bias) == (8, True, True)
    assert (c.rope_scaling.rope_type.value, c.rope_scaling.factor) == ("linear", 4.0)
    assert c.local_rope == (c.rope_theta, None if full_only else c.rope_scaling)
    assert torch.equal(_logits(ours), _logits(model.eval()))


def _variant(base: TransformerConfig, edit) -> dict:
    d = base.as_config_dict()
    edit(d)
    return d


def _refusals():
    olmo2 = TransformerConfig.olmo2_14M(vocab_size=VOCAB)
    yield "moe", TransformerConfig.smallmoe(vocab_size=VOCAB).as_config_dict(), "name='moe' is not supported"
    yield "layernorm", TransformerConfig.llama_like(d_model=64, vocab_size=VOCAB, n_layers=2, n_heads=4,
                                                    layer_norm_name=LayerNormType.default).as_config_dict(), \
        "block.layer_norm.name='default' is not supported (supported: rms, qwen_rms)"
    yield "fused", TransformerConfig.llama_like(d_model=64, vocab_size=VOCAB, n_layers=2, n_heads=4,
                                                fused_ops=True).as_config_dict(), "block.layer_norm.name='fused_rms'"
    yield "gate", TransformerConfig.llama_like(d_model=64, vocab_size=VOCAB, n_layers=2, n_heads=4,
                                               gate=GateConfig()).as_config_dict(), "block.sequence_mixer.gate="
    yield "yarn", olmo2.with_rope_scaling(YaRNRoPEScalingConfig()).as_config_dict(), \
        "block_overrides.0.sequence_mixer.rope.scaling._CLASS_='olmo_core.nn.rope.YaRNRoPEScalingConfig'"
    yield "per_head_gains", _variant(olmo2, lambda d: d["block"]["sequence_mixer"].update(
        use_head_qk_norm=True, qk_norm_per_head_gains=True)), "qk_norm_per_head_gains=True"
    yield "mlp_bias", _variant(olmo2, lambda d: d["block"]["feed_forward"].pop("bias")), \
        "block.feed_forward.bias=True is not supported (the gated MLP has no biases)"
    yield "scaled_block", _variant(olmo2, lambda d: d["block"].update(name="default_scaled")), \
        "block.name='default_scaled' is not supported (supported: reordered_norm, default, peri_norm)"
    yield "mixed_blocks", _variant(olmo2, lambda d: d.update(block_overrides={"1": {
        **d["block"], "feed_forward": {**d["block"]["feed_forward"], "hidden_size": 256}}})), \
        "block 1 differs from block 0 in d_ff (256 vs 512)"
    yield "nope", _variant(olmo2, lambda d: d["block"]["sequence_mixer"].pop("rope")), \
        "block.sequence_mixer.rope=None is not supported (attention without RoPE"


@pytest.mark.parametrize("case,config,message", list(_refusals()), ids=[c[0] for c in _refusals()])
def test_unsupported_options_are_refused_in_one_line(step, tmp_path, capsys, case, config, message):
    d = tmp_path / "s"
    d.mkdir()
    os.symlink(step / "model_and_optim", d / "model_and_optim")
    (d / "config.json").write_text(json.dumps({"model": config}))
    assert main(["convert", "--from-olmo-core", str(d), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qknorm convert: error: ") and message in err, err
    assert not (tmp_path / "o").exists()
    assert main(["inspect", str(d), "--ids", "1,2"]) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- damaged files
class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_metadata_pickle_cannot_run_code(step, tmp_path, capsys, monkeypatch):
    d = tmp_path / "s"
    shutil.copytree(step, d)
    (d / "model_and_optim" / ".metadata").write_bytes(pickle.dumps(_Evil()))
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "--from-olmo-core", str(d), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "refusing to load" in err and "system" in err and err.count("\n") == 1
    assert not (tmp_path / "pwned").exists()


def test_truncated_shard_is_one_line(step, tmp_path, capsys):
    d = tmp_path / "s"
    shutil.copytree(step, d)
    shard = max((d / "model_and_optim").glob("*.distcp"), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert main(["convert", "--from-olmo-core", str(d), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{shard}: cut short" in err  # named before anything is allocated
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- sharded
def _save_sharded(rank: int, name: str, out: str) -> None:
    """One FSDP2 rank (helpers.ranks sets the torchrun environment): build OLMo-core's model, the same seed on
    every rank, shard it, save it with OLMo-core's save_model_and_optim_state."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from olmo_core.distributed.checkpoint import save_model_and_optim_state

    dist.init_process_group("gloo")
    model = build(name)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for block in model.blocks.values():
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    save_model_and_optim_state(out, model, torch.optim.AdamW(model.parameters()))


def test_checkpoint_sharded_by_two_fsdp_ranks_loads_the_same(tmp_path):
    name, out = "olmo2_gqa", tmp_path / "step" / "model_and_optim"
    run_ranks(_save_sharded, name, str(out), world_size=2)
    assert {f.name.split("_")[2] for f in out.glob("*.distcp")} == {"0", "1"}  # both ranks wrote shards
    chunks = read_dcp_metadata(out).state_dict_metadata["model.embeddings.weight"].chunks
    assert len(chunks) == 2  # the embedding really is split across the ranks
    (tmp_path / "step" / "config.json").write_text(json.dumps({"model": olmo_config(name).as_config_dict()}))
    ours = qknorm.from_olmo_core(tmp_path / "step")
    assert torch.equal(_logits(ours), _logits(build(name)))
