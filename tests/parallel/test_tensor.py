"""Tensor parallelism of a TransformerLM against one process (forked gloo ranks on CPU).

* TP=2 training (helpers.tp_training.train_steps: AdamW, clipped gradient norm, 5 steps, same global batch on both
  ranks, same initial weights as the one-process run) for olmo2 (full-width QK-norm), qwen3 (per head,
  explicit head_dim), gemma3 (sandwich 1+w norms, sliding-window layers, local/global RoPE, tied embedding,
  GQA) and llama: loss and global gradient norm at every step rtol 1e-5, every weight afterwards atol 1e-5,
  on every rank. These run in float64: in float32 the weights of *any* two correct implementations that sum in
  a different order drift apart after a few AdamW steps (Adam divides by sqrt(v) and amplifies the noise of
  near-zero gradients). Measured on this setup (olmo2/qwen3/gemma3/llama, 5 steps, lr 1e-2): one process
  plain vs the same process with the batch split in two micro-batches differs by 4e-6..1.6e-3 in the weights,
  and float32 vs float64 by 5e-5..4e-3, while the losses agree to 1e-6. float64 leaves only the algorithm:
  measured TP=2 vs one process, loss rel <= 3e-16, weights <= 1e-13.
  One float32 run (olmo2) checks what float32 can: losses rtol 1e-5, gradient norms 1e-4, weights atol 1e-3.
* FSDP2 x TP on a 2 x 2 mesh (4 processes) for olmo2 and gemma3, the same way; the full state dict from
  torch.distributed.checkpoint's API holds the whole gains ((H*D,) for olmo2). Measured (olmo2, float64):
  loss rel 3e-10, weights 3.3e-7, exactly what one process gets by summing the batch as two halves (the
  data-parallel split, not TP: Adam amplifies even float64 rounding of near-zero gradients).
* NEGATIVE CONTROL: with the full-width statistic computed per shard (what GPT-NeoX's `across_heads` does
  under TP) the olmo2 comparison fails at the first step (measured: loss rel 2.5e-4 at step 0, weights 0.09
  apart after 5 steps). The same comparison code passes above.
* Every preset's forward logits and gradients in float32 (full logits, loss_parallel=False), postln, biases,
  softcaps, eager attention and the Triton QK-norm kernels (interpreted) included; the gradient norm of
  clip_grad_norm_ matches, while a naive per-rank sum of squares (counting the replicated gradients on every
  rank) would not.
* Bad degrees and indivisible head counts: one ConfigError line naming the field and tp.
"""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh

import qknorm
from qknorm import ConfigError
from qknorm.parallel import check_tp_degree, parallelize_tp
from qknorm.parallel import qk_norm_tp as qk_norm_tp_module
from qknorm.ops import qk_norm_rope

from helpers.ranks import run_ranks
from helpers.tp_training import CLIP, B, batches, build, mismatches, single, train_steps

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

torch.set_num_threads(1)
TRAINED = ("olmo2", "qwen3", "gemma3", "llama")


def _rank_local_full_norm(q, k, q_weight, k_weight, cos, sin, *, all_reduce, group_size, **kw):
    """The bug the negative control plants: the full-width RMS over this rank's heads only."""
    return qk_norm_rope(q, k, q_weight, k_weight, cos, sin, scope="full", **kw)


def _tp_rank(rank, preset, init, data, rank_local):
    dist.init_process_group("gloo")
    if rank_local:  # forked child: the patch dies with it
        qk_norm_tp_module.qk_norm_rope_tp = _rank_local_full_norm
    dtype = next(iter(init.values())).dtype
    model = qknorm.TransformerLM(qknorm.get_config(preset, "debug"), dtype=dtype)
    model.load_state_dict(init)
    parallelize_tp(model, init_device_mesh("cpu", (2,)), loss_parallel=True)
    return train_steps(model, data, loss_parallel=True)


@pytest.mark.parametrize("preset", TRAINED)
def test_tp2_training_matches_one_process(preset):
    init, ref = single(preset)
    assert min(ref["grad_norm"]) > CLIP  # clipping is active at every step
    assert max(abs(a - b) for a, b in zip(ref["loss"], ref["loss"][1:])) > 0.02  # a curve that moves
    ranks = run_ranks(_tp_rank, preset, init, batches(qknorm.get_config(preset, "debug").vocab_size), False)
    for rank, got in enumerate(ranks):
        assert mismatches(ref, got) == [], f"rank {rank}"


def test_tp2_training_float32_olmo2():
    init, ref = single("olmo2", torch.float32)
    got = run_ranks(_tp_rank, "olmo2", init, batches(256), False)[0]
    assert mismatches(ref, got, weight_atol=1e-3, norm_rtol=1e-4) == []


def test_negative_control_rank_local_full_width_norm_is_caught():
    init, ref = single("olmo2")
    ranks = run_ranks(_tp_rank, "olmo2", init, batches(256), True)
    bad = mismatches(ref, ranks[0])
    assert any(b.startswith("loss step 0") for b in bad), bad  # wrong from the first forward
    assert any("q_norm.weight" in b for b in bad), bad


def _fsdp_tp_rank(rank, preset, init, data):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    model = qknorm.TransformerLM(qknorm.get_config(preset, "debug"), dtype=torch.float64)
    model.load_state_dict(init)
    parallelize_tp(model, mesh["tp"], loss_parallel=True)
    for block in model.layers:
        fully_shard(block, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    half = B // 2
    dp = mesh["dp"].get_local_rank()
    out = train_steps(model, data, rows=slice(dp * half, (dp + 1) * half), loss_parallel=True,
                      dp_group=mesh["dp"].get_group())
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    out["state"] = {k: v.clone() for k, v in state.items()} if rank == 0 else {}
    return out


@pytest.mark.parametrize("preset", ["olmo2", "gemma3"])  # full-width gains; per-head gains + tied embedding
def test_fsdp2_x_tp_2x2_matches_one_process(preset):
    init, ref = single(preset)
    ranks = run_ranks(_fsdp_tp_rank, preset, init, batches(256), world_size=4, timeout=240)
    for rank, got in enumerate(ranks):
        assert mismatches(ref, got) == [], f"rank {rank}"
    state = ranks[0]["state"]  # what a checkpoint saves: whole tensors, the gains included
    assert state.keys() == ref["weights"].keys()
    cfg = qknorm.get_config(preset, "debug")
    width = cfg.head_dim * (cfg.n_heads if preset == "olmo2" else 1)
    assert state["layers.0.attn.q_norm.weight"].shape == (width,)
    for name, want in ref["weights"].items():
        torch.testing.assert_close(state[name], want, rtol=0, atol=1e-5, msg=name)


# ---------------------------------------------------------------------------------------------- every preset
FORWARD_CASES = [("olmo2", {}), ("qwen3", {}), ("gemma3", {}), ("llama", {}), ("postln", {}),
                 ("qwen3", {"attention_bias": True, "o_proj_bias": True, "qk_norm": "full"}),
                 ("olmo2", {"attn_impl": "eager", "attn_softcap": 30.0, "final_softcap": 20.0})]
if not torch.cuda.is_available():  # the Triton kernels through the interpreter (CPU ranks cannot run compiled ones)
    FORWARD_CASES += [("olmo2", {"qk_backend": "triton"}), ("gemma3", {"qk_backend": "triton"})]


def _grads_of(model, ids):
    loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss


def _forward_rank(rank, cases, ids):
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (2,))
    out = []
    for preset, overrides, init in cases:
        model = qknorm.TransformerLM(qknorm.get_config(preset, "debug", **overrides))
        model.load_state_dict(init)
        parallelize_tp(model, mesh)
        logits = model(ids[:, :-1])
        _grads_of(model, ids)
        grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).full_tensor()
        local_sq = torch.stack([p.grad.to_local().pow(2).sum() for p in model.parameters()]).sum()
        dist.all_reduce(local_sq)  # the naive global norm: replicated gradients counted twice
        out.append(dict(logits=logits.detach(), grads=grads, norm=norm.item(), naive=local_sq.sqrt().item(),
                        n_params=model.num_params(), no_decay=model.no_decay_param_names()))
    try:  # MQA with one kv head cannot be split over 2 ranks
        parallelize_tp(qknorm.TransformerLM(qknorm.get_config("gemma3", "debug", n_kv_heads=1)), mesh)
        out.append("no error")
    except ConfigError as e:
        out.append(str(e))
    return out


def test_every_preset_forward_and_gradients_match_one_process():
    ids = torch.randint(0, 256, (2, 25), generator=torch.Generator().manual_seed(3))
    cases, refs = [], []
    for preset, overrides in FORWARD_CASES:
        # the one-process reference always runs the torch QK-norm (the TP ranks run the case's backend)
        model = build(preset, **{k: v for k, v in overrides.items() if k != "qk_backend"})
        cases.append((preset, overrides, {k: v.clone() for k, v in model.state_dict().items()}))
        logits = model(ids[:, :-1])
        _grads_of(model, ids)
        refs.append(dict(logits=logits.detach(), grads={n: p.grad for n, p in model.named_parameters()},
                         norm=torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")).item(),
                         n_params=model.num_params(), no_decay=model.no_decay_param_names()))
    ranks = run_ranks(_forward_rank, cases, ids)
    for got in ranks:
        for (preset, overrides, _), ref, res in zip(cases, refs, got):
            what = f"{preset} {overrides}"
            torch.testing.assert_close(res["logits"], ref["logits"], rtol=1e-5, atol=1e-6, msg=what)
            for name, g in ref["grads"].items():
                atol = 1e-5 * g.abs().max().item()  # fp32 sums in another order: measured <= 1e-6 of the max
                torch.testing.assert_close(res["grads"][name], g, rtol=1e-5, atol=atol, msg=f"{what} {name}")
            assert res["norm"] == pytest.approx(ref["norm"], rel=1e-5), what
            # counting replicated gradients on every rank lands outside the tolerance the right norm is held to
            assert abs(res["naive"] - ref["norm"]) > 2e-5 * ref["norm"], what
            assert (res["n_params"], res["no_decay"]) == (ref["n_params"], ref["no_decay"]), what
        msg = got[-1]
        assert msg.startswith("n_kv_heads=1 is not divisible by tp=2") and "\n" not in msg, msg


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("preset, tp, field", [("olmo2", 3, "n_heads=4"), ("gemma3", 4, "n_kv_heads=2"),
                                               ("llama", 8, "n_heads=4"),
                                               ("olmo2", 2, None)])
def test_check_tp_degree_names_the_field(preset, tp, field):
    cfg = qknorm.get_config(preset, "debug")
    if field is None:
        check_tp_degree(cfg, tp, world_size=4)  # 2 data-parallel groups of 2
        return
    with pytest.raises(ConfigError) as e:
        check_tp_degree(cfg, tp)
    msg = str(e.value)
    assert msg.startswith(f"{field} is not divisible by tp={tp}") and "\n" not in msg, msg


@pytest.mark.parametrize("tp", [0, -2, "2", 2.0, True, None])
def test_bad_tp_values_are_one_line(tp):
    with pytest.raises(ConfigError, match=r"^tp=.* must be an integer >= 1 \(the tensor-parallel degree\)$"):
        check_tp_degree(qknorm.get_config("olmo2", "debug"), tp)


def test_tp_must_divide_the_world_and_a_mesh_is_required():
    with pytest.raises(ConfigError, match=r"^tp=2 does not divide the number of processes \(3\)"):
        check_tp_degree(qknorm.get_config("olmo2", "debug"), 2, world_size=3)
    with pytest.raises(ConfigError, match="tp_mesh must be a 1-D DeviceMesh"):
        parallelize_tp(build("olmo2"), "cpu")
    with pytest.raises(ConfigError, match="expects a TransformerLM"):
        parallelize_tp(torch.nn.Linear(2, 2), None)
