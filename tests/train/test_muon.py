"""optimizer="muon": which parameters Muon and AdamW own, the steps equal torch's two optimizers run side by side
(through a state_dict round trip), a short run learns, and a crashed run resumes bit-identically (Muon's momentum
and sigmaReparam's u/v restored)."""
import copy
import json
from pathlib import Path

import pytest
import torch

import qknorm
from qknorm.errors import CheckpointError, ConfigError
from qknorm.train import TrainConfig
from qknorm.train import muon as muon_mod
from qknorm.io.checkpoints.full import load_checkpoint
from qknorm.train.loop import train
from qknorm.train.muon import MuonWithAdamW
from qknorm.train.optim import build_optimizer, set_lr
from qknorm.data.tokens import load_tokens

pytestmark = pytest.mark.numerics  # .ci/run runs these again under other CPU kernels

torch.set_num_threads(1)  # 2-core CI runs two test workers

HIDDEN = {f"layers.{i}.{m}" for i in range(2) for m in ("attn.q_proj.weight", "attn.k_proj.weight",
                                                        "attn.v_proj.weight", "attn.o_proj.weight",
                                                        "mlp.gate_proj.weight", "mlp.up_proj.weight",
                                                        "mlp.down_proj.weight")}


@pytest.fixture(scope="module")
def data():
    return load_tokens(max_bytes=200_000)


def _groups(model, opt):
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: (g["algorithm"], {names[id(p)] for p in g["params"]}, g) for g in opt.param_groups}


def test_muon_owns_the_hidden_matrices_and_adamw_the_rest():
    cfg = qknorm.get_config("qwen3", "debug", attention_bias=True, o_proj_bias=True, sigma_reparam=True)
    model = qknorm.TransformerLM(cfg)
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=2e-3, weight_decay=0.1))
    g = _groups(model, opt)
    assert g["muon"][0] == "muon" and g["muon"][1] == HIDDEN
    assert g["muon"][2]["adjust_lr_fn"] == "match_rms_adamw" and g["muon"][2]["momentum"] == 0.95
    assert g["decay"][0] == g["no_decay"][0] == "adamw"
    assert g["decay"][1] == {"lm_head.weight"}
    rest = g["no_decay"][1]
    assert {"embed.weight", "norm.weight", "layers.0.attn.q_norm.weight", "layers.1.attn.q_proj.bias",
            "layers.1.attn.o_proj.bias", "layers.0.mlp.down_proj.gamma", "layers.1.attn.k_proj.gamma"} <= rest
    assert all(p.ndim < 2 or n == "embed.weight" for n, p in model.named_parameters() if n in rest)
    every = {n for n, _ in model.named_parameters()}
    assert g["muon"][1] | g["decay"][1] | g["no_decay"][1] == every and sum(len(v[1]) for v in g.values()) == len(every)
    # one lr for all (set per step), decay as configured
    assert {x[2]["lr"] for x in g.values()} == {opt.param_groups[0]["lr"]}
    assert (g["muon"][2]["weight_decay"], g["decay"][2]["weight_decay"], g["no_decay"][2]["weight_decay"]) == \
        (0.1, 0.1, 0.0)
    assert isinstance(build_optimizer(model, TrainConfig()), torch.optim.AdamW)  # the default is unchanged


def _loss(model, ids):
    logits = model(ids[:, :-1]).float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def test_steps_equal_torch_muon_and_adamw_side_by_side_across_a_state_dict_round_trip():
    """Independent: torch.optim.Muon on the hidden matrices and torch.optim.AdamW on the rest, as two optimizers."""
    cfg = qknorm.get_config("llama", "debug")
    torch.manual_seed(0)
    ours_model = qknorm.TransformerLM(cfg)
    ref_model = copy.deepcopy(ours_model)
    q0 = ours_model.layers[0].attn.q_proj.weight.detach().clone()
    # bf16 Newton-Schulz, as torch's (auto picks fp32 where bf16 is slow: tests/train/test_newton_schulz.py)
    tcfg = TrainConfig(optimizer="muon", lr=1e-2, weight_decay=0.05, beta1=0.8, beta2=0.9, muon_ns_dtype="bf16")
    ours = build_optimizer(ours_model, tcfg)
    named = dict(ref_model.named_parameters())
    hidden = [named[n] for n in sorted(HIDDEN, key=list(named).index)]
    others = [p for n, p in named.items() if n not in HIDDEN and n != "lm_head.weight"]
    ref_muon = torch.optim.Muon(hidden, lr=1e-2, weight_decay=0.05, adjust_lr_fn="match_rms_adamw")
    ref_adamw = torch.optim.AdamW([{"params": [named["lm_head.weight"]], "weight_decay": 0.05},  # decayed: the head
                                   {"params": others, "weight_decay": 0.0}], lr=1e-2, betas=(0.8, 0.9))
    g = torch.Generator().manual_seed(1)
    for step in range(4):
        if step == 2:  # continue from a state_dict, as a resumed run does
            fresh = build_optimizer(ours_model, tcfg)
            fresh.load_state_dict(ours.state_dict())
            ours = fresh
        ids = torch.randint(0, 256, (4, 17), generator=g)
        lr = 1e-2 * (step + 1) / 4
        for opt in (ours, ref_muon, ref_adamw):
            set_lr(opt, lr)
        _loss(ours_model, ids).backward()
        _loss(ref_model, ids).backward()
        ours.step()
        ref_muon.step()
        ref_adamw.step()
        for opt in (ours, ref_muon, ref_adamw):
            opt.zero_grad()
    for (n, a), b in zip(ours_model.named_parameters(), ref_model.parameters()):
        assert torch.equal(a, b), n
    assert not torch.equal(ours_model.layers[0].attn.q_proj.weight, q0)  # it did update


def test_a_short_muon_run_lowers_the_loss(data):
    r = train(qknorm.get_config("llama", "debug"), TrainConfig(optimizer="muon", steps=25, warmup_steps=3, lr=2e-2,
                                                                batch_size=8, seq_len=64, stats_every=0,
                                                                eval_batches=1, progress=False), data)
    assert not r.diverged and r.final_loss < r.init_loss - 1.5, (r.init_loss, r.final_loss)


def _lines(path: Path):
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in path.read_text().splitlines()]


def test_resume_is_bit_identical_with_muon_and_sigma_reparam(tmp_path, data):
    model_cfg = qknorm.get_config("qwen3", "debug", sigma_reparam=True)
    cfg = TrainConfig(optimizer="muon", steps=8, warmup_steps=2, lr=1e-2, batch_size=4, seq_len=32, ckpt_every=3,
                      stats_every=4, eval_batches=1, progress=False)
    full = train(model_cfg, cfg, data, out_dir=tmp_path / "full")

    def crash(record):
        if record["step"] == 4:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(model_cfg, cfg, data, out_dir=tmp_path / "cut", callback=crash)
    resumed = train(model_cfg, cfg, data, out_dir=tmp_path / "cut", resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert any(k.endswith(".u") for k in a) and any(k.endswith(".gamma") for k in a)
    # bit for bit: one process, same layout, same kernels in the same order (and the Newton-Schulz dtype the
    # probe chose is cached for the process, so both runs use the same one)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert _lines(tmp_path / "full" / "metrics.jsonl") == _lines(tmp_path / "cut" / "metrics.jsonl")
    opt_a = load_checkpoint(tmp_path / "full" / "checkpoints" / "step_0000008").optimizer_state
    opt_b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "step_0000008").optimizer_state
    assert [g["algorithm"] for g in opt_a["param_groups"]] == ["muon", "adamw", "adamw"]
    assert sum("momentum_buffer" in s for s in opt_a["state"].values()) == len(HIDDEN)
    for k, st in opt_a["state"].items():
        for key, value in st.items():
            assert torch.equal(value, opt_b["state"][k][key]), (k, key)


def test_muon_refuses_sharded_parameters(monkeypatch):
    monkeypatch.setattr(muon_mod, "DTensor", torch.nn.Parameter)  # stand-in: every parameter looks sharded
    model = qknorm.TransformerLM(qknorm.get_config("llama", "debug"))
    with pytest.raises(ConfigError, match="optimizer='muon' needs whole matrices"):
        build_optimizer(model, TrainConfig(optimizer="muon"))
    assert MuonWithAdamW.__mro__[1] is torch.optim.Optimizer


def test_optimizer_setting_is_validated():
    with pytest.raises(ConfigError, match="optimizer='sgd' is not allowed; choose one of: adamw, muon"):
        TrainConfig(optimizer="sgd")


def test_resuming_with_the_other_optimizer_is_refused_in_one_line(tmp_path, data):
    model_cfg = qknorm.get_config("llama", "debug")
    cfg = TrainConfig(steps=2, warmup_steps=0, batch_size=2, seq_len=16, ckpt_every=2, stats_every=0,
                      eval_batches=1, progress=False)
    train(model_cfg, cfg, data, out_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"optimizer='muon' cannot resume .*: its checkpoints hold 'adamw' "
                                          r"optimizer state \(run.json\); resume with optimizer='adamw'"):
        train(model_cfg, cfg.replace(steps=3, optimizer="muon"), data, out_dir=tmp_path, resume=True,
              allow_changes=True)
    adamw_state = build_optimizer(qknorm.TransformerLM(model_cfg), cfg).state_dict()  # a run without run.json
    with pytest.raises(CheckpointError, match="saved by another optimizer"):
        build_optimizer(qknorm.TransformerLM(model_cfg), cfg.replace(optimizer="muon")).load_state_dict(adamw_state)


def test_a_resumed_run_keeps_the_newton_schulz_dtype_its_run_recorded(tmp_path, data, monkeypatch):
    """A new process may time bf16 and fp32 differently (a CPU where they are close, a loaded machine): the probe's
    answer changing between the crash and the resume must not change the arithmetic of the resumed steps."""
    from qknorm.train import newton_schulz as ns

    def probe_says(dtype):
        monkeypatch.setattr(ns, "_CACHE", {})
        fast, slow = 1e-3, 1e-3 * 10 * ns.SLOW_FACTOR
        monkeypatch.setattr(ns, "probe_ns_seconds",
                            lambda dt, shape, dev: (fast if (dt == torch.float32) == (dtype == "fp32") else slow))

    model_cfg = qknorm.get_config("qwen3", "debug")
    cfg = TrainConfig(optimizer="muon", steps=6, warmup_steps=1, lr=1e-2, batch_size=4, seq_len=32, ckpt_every=3,
                      stats_every=0, eval_batches=1, progress=False)
    probe_says("fp32")
    full = train(model_cfg, cfg, data, out_dir=tmp_path / "full")

    def crash(record):
        if record["step"] == 4:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(model_cfg, cfg, data, out_dir=tmp_path / "cut", callback=crash)
    probe_says("bf16")  # the resuming process's probe would pick the other dtype
    resumed = train(model_cfg, cfg, data, out_dir=tmp_path / "cut", resume=True)
    assert full.muon_ns.dtype == "fp32" and full.muon_ns.how == "probed"
    assert resumed.muon_ns.dtype == "fp32" and resumed.muon_ns.how == "recorded"
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for name in a:  # one process, same kernels in the same order: bit for bit
        assert torch.equal(a[name], b[name]), name


def test_every_rank_uses_rank_0s_newton_schulz_dtype():
    """Replicas whose Muon updates ran in different dtypes would drift apart: a rank whose probe disagrees with
    rank 0's takes rank 0's answer (broadcast_flag); an explicit setting is never overridden."""
    from qknorm.train.loop import _agreed_ns_precision
    from qknorm.train.newton_schulz import NSPrecision
    from qknorm.train.runtime import Runtime

    class Rank1(Runtime):  # rank 0 probed fp32
        def broadcast_flag(self, flag):
            return True

    mine = NSPrecision(dtype="bf16", how="probed", shape=(64, 64), bf16_ms=1.0, fp32_ms=0.9)
    agreed = _agreed_ns_precision(mine, Rank1(), None)
    assert (agreed.dtype, agreed.how) == ("fp32", "rank 0's probe") and "rank 0" in agreed.describe()
    same = NSPrecision(dtype="fp32", how="probed", shape=(64, 64), bf16_ms=2.0, fp32_ms=0.9)
    assert _agreed_ns_precision(same, Rank1(), None) is same
    explicit = NSPrecision(dtype="bf16", how="set")
    assert _agreed_ns_precision(explicit, Rank1(), None) is explicit
