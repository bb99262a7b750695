"""Property test: random configs and random CLI argv for train / convert / inspect / study never give a traceback.

`main(argv)` must return 0 or 2 (train may also return 1: stopped on a non-finite loss, a documented outcome),
or argparse must exit with status 2; any other exception fails. With status 2, stderr must hold exactly one
"error:" line. Runs stay tiny: train always ends with `--steps 1 --batch-size 2 --seq-len 8` (flags override
--set), presets use the `debug` size (or an invalid size name: the real sizes are billions of parameters),
model fields get small values plus invalid ones; `study` is stopped where its validated plan would start
training (run_study is replaced by a sentinel), since a real study takes minutes.
"""
import contextlib
import io
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import qknorm
from qknorm import study as study_mod
from qknorm.cli import main
from qknorm.presets import PRESETS
from qknorm.data.tokens import load_tokens
from qknorm.train import TrainConfig
from qknorm.train.loop import train

torch.set_num_threads(1)

_BAD = ["", "x", "-1", "nan", "inf", "1e400", "none"]
MODEL_VALUES = {
    "vocab_size": ["1", "100", "256", "300"], "d_model": ["0", "8", "16", "24", "32", "63"],
    "n_layers": ["0", "1", "2"], "n_heads": ["0", "1", "2", "3", "4"], "n_kv_heads": ["none", "1", "2", "3"],
    "head_dim": ["none", "4", "7", "8", "16"], "d_ff": ["0", "8", "16"], "max_seq_len": ["1", "4", "8", "16"],
    "qk_norm": ["none", "head", "full", "both"], "placement": ["pre", "reordered", "sandwich", "post", "mid"],
    "norm_type": ["rmsnorm", "layernorm", "batchnorm"], "norm_eps": ["1e-6", "0", "1"],
    "norm_offset": ["0", "1", "-1"], "norm_cast": ["fp32", "input", "fp64"], "attention_bias": ["true", "no"],
    "o_proj_bias": ["1", "maybe"], "query_pre_attn_scalar": ["none", "0", "16"], "attn_softcap": ["none", "0", "5"],
    "sliding_window": ["none", "0", "2", "4"], "global_every": ["0", "1", "2"],
    "layer_types": ["sliding", "full", "sliding,full", "full,full", "global,full"],
    "attn_impl": ["sdpa", "eager", "flash"], "qk_backend": ["none", "torch", "cuda"],
    "rope_theta": ["1e4", "0", "1"], "rope_local_theta": ["none", "1e4", "0"], "rope_scaling": ["1", "8", "0"],
    "activation": ["silu", "gelu_tanh", "relu6"], "embed_scale": ["true", "false"], "tie_embeddings": ["yes", "off"],
    "final_softcap": ["none", "30", "0"], "init_std": ["0.02", "0", "10"],
    "qk_norm_type": ["rms", "layernorm", "l2", "cosine"], "sigma_reparam": ["true", "false"],
}
TRAIN_VALUES = {
    "lr": ["1e-3", "10", "0", "1e30"], "final_lr": ["0", "-1"], "warmup_steps": ["0", "5", "-2"],
    "grad_accum": ["1", "2", "3"], "weight_decay": ["0", "0.1"], "decay_norms": ["true", "false"],
    "beta1": ["0.9", "1"], "beta2": ["0.95", "2"], "adam_eps": ["1e-8", "0"], "clip": ["0", "1"],
    "z_loss": ["0", "1e-4"], "seed": ["0", "3", "-1"], "eval_every": ["0", "1"], "eval_batches": ["1", "0"],
    "stats_every": ["0", "1"], "ckpt_every": ["0", "1"], "keep_last": ["1", "0"], "dtype": ["fp32", "bf16"],
    "on_nan": ["skip", "stop", "ignore"], "parallel": ["ddp", "fsdp", "tp"], "progress": ["false"],
    "device": ["cpu", "gpu"], "optimizer": ["adamw", "muon", "sgd"], "qk_clip": ["none", "20", "0"],
}
SET_ITEM = st.one_of(
    st.sampled_from(sorted(MODEL_VALUES)).flatmap(lambda k: st.sampled_from(MODEL_VALUES[k] + _BAD[:3]).map(
        lambda v: f"{k}={v}")),
    st.sampled_from(sorted(TRAIN_VALUES)).flatmap(lambda k: st.sampled_from(TRAIN_VALUES[k]).map(lambda v: f"{k}={v}")),
    st.sampled_from(["nokey=1", "=3", "d_model", "D_MODEL=64", "n-heads=2", "qk_norm==head"]),
)
# flag fragments: (flag, value) pairs with values right, wrong, or missing
TRAIN_FLAGS = st.sampled_from([
    ["--lr", "1e-2"], ["--lr", "0"], ["--lr", "abc"], ["--warmup", "-1"], ["--warmup", "0"], ["--grad-accum", "2"],
    ["--weight-decay", "nan"], ["--z-loss", "1e-4"], ["--clip", "inf"], ["--seed", "7"], ["--on-nan", "skip"],
    ["--eval-every", "1"], ["--ckpt-every", "1"], ["--dtype", "bf16"], ["--dtype", "fp8"], ["--parallel", "fsdp"],
    ["--data", "{missing}"], ["--data", "{text}"], ["--tokenizer", "{missing}"], ["--resume"], ["--size", "huge"],
    ["--device", "meta"], ["--unknown-flag"], ["--steps"],
])


def _train_argv():
    return st.tuples(st.sampled_from([*PRESETS, "nope"]), st.lists(SET_ITEM, max_size=4),
                     st.lists(TRAIN_FLAGS, max_size=3), st.sampled_from(["fresh", "run", "file", "unwritable"])).map(
        lambda t: ["train", "--preset", t[0], *[a for s in t[1] for a in ("--set", s)], *[a for f in t[2] for a in f],
                   "--out", "{" + t[3] + "}", "--steps", "1", "--batch-size", "2", "--seq-len", "8",
                   "--device", "cpu", "--no-progress"])


def _convert_argv():
    return st.tuples(st.sampled_from(["--to-hf", "--from-hf"]), st.sampled_from(["{model}", "{missing}", "{run}",
                                                                                 "{text}", "{hf}"]),
                     st.sampled_from(["{fresh}", "{model}", "{file}"]),
                     st.lists(st.sampled_from([["--dtype", "bf16"], ["--dtype", "fp8"], ["--tol", "-1"],
                                               ["--seq-len", "0"], ["--overwrite"], ["--allow-folded"]]), max_size=2)
                     ).map(lambda t: ["convert", t[0], t[1], "--out", t[2], *[a for f in t[3] for a in f]])


def _inspect_argv():
    text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6)
    frag = st.one_of(st.tuples(st.just("--ids"), st.sampled_from(["1,2,3", "", "x", "300", "-1,2", "1,,2"])),
                     st.tuples(st.just("--text"), text), st.tuples(st.just("--text-file"), st.sampled_from(
                         ["{text}", "{missing}", "{model}"])),
                     st.tuples(st.just("--seq-len"), st.sampled_from(["0", "1", "3", "-2", "x"])),
                     st.tuples(st.just("--tokenizer"), st.sampled_from(["{text}", "{missing}"])),
                     st.just(("--json",)))
    return st.tuples(st.sampled_from(["{model}", "{run}", "{missing}", "{text}", "{hf}"]),
                     st.lists(frag, max_size=3)).map(lambda t: ["inspect", t[0], *[a for f in t[1] for a in f]])


def _study_argv():
    frag = st.sampled_from([
        ["--quick"], ["--profile", "quick"], ["--profile", "huge"], ["--variants", "baseline,qknorm"],
        ["--variants", "nope"], ["--variants", ""], ["--lrs", "1e-3"], ["--lrs", "0"], ["--lrs", "a,b"],
        ["--steps", "0"], ["--steps", "3"], ["--seeds", "2"], ["--seeds", "-1"], ["--workers", "0"],
        ["--max-minutes", "0"], ["--max-minutes", "nan"], ["--device", "tpu"], ["--device", "cpu"],
        ["--data", "{missing}"], ["--data", "{text}"], ["--tokenizer", "{missing}"], ["--force"], ["--seed", "x"]])
    return st.tuples(st.lists(frag, max_size=4), st.sampled_from(["{fresh}", "{file}", "{model}"])).map(
        lambda t: ["study", *[a for f in t[0] for a in f], "--out", t[1]])


class _Reached(Exception):
    """study's plan was valid and training would start here."""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    run = root / "run"
    train(qknorm.get_config("llama", "debug"), TrainConfig(steps=1, batch_size=2, seq_len=8, ckpt_every=1,
                                                           stats_every=0, eval_batches=1, progress=False),
          load_tokens(max_bytes=20_000), out_dir=run)
    model = root / "model"
    qknorm.save_model(qknorm.TransformerLM(qknorm.get_config("qwen3", "debug")), model)
    hf = root / "hf"
    qknorm.to_hf(qknorm.load_model(model), hf)
    (root / "text.txt").write_text("def f(x):\n    return x + 1\n" * 20)
    return root


def _argv_subst(argv, root: Path, scratch: Path):
    run = scratch / "run"
    if any(a == "{run}" for a in argv):
        shutil.copytree(root / "run", run)
    subst = {"{fresh}": str(scratch / "out"), "{run}": str(run), "{model}": str(root / "model"),
             "{hf}": str(root / "hf"), "{text}": str(root / "text.txt"), "{missing}": str(scratch / "missing"),
             "{file}": str(root / "text.txt"), "{unwritable}": "/dev/null/out"}
    return [subst.get(a, a) for a in argv]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(argv=st.one_of(_train_argv(), _train_argv(), _convert_argv(), _inspect_argv(), _study_argv()))
def test_random_argv_never_gives_a_traceback(files, argv, monkeypatch_module):
    scratch = Path(tempfile.mkdtemp(dir=files))
    try:
        argv = _argv_subst(argv, files, scratch)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as e:  # argparse: bad flag or value
                assert e.code == 2, argv
                event(f"{argv[0]}: argparse exit 2")
                return
            except _Reached:
                event("study: valid plan")
                return
        event(f"{argv[0]}: returned {code}")
        allowed = {0, 1, 2} if argv[0] == "train" else {0, 2}
        assert code in allowed, (argv, code, err.getvalue())
        if code == 2:
            errors = [line for line in err.getvalue().splitlines() if "error:" in line]
            assert len(errors) == 1 and errors[0].startswith(f"qknorm {argv[0]}: error: "), (argv, err.getvalue())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()

    def reached(*a, **k):
        raise _Reached

    mp.setattr(study_mod, "run_study", reached)
    yield mp
    mp.undo()
