"""`qknorm.open_model`: one function for every model source (ours: model, run, checkpoint; Hugging Face;
OLMo-core), and the commands that read a model through it, OLMo-core trainer checkpoints included: `train
--init-from` starts at the OLMo-core model's own loss, `retrofit --from` retrofits it, `inspect` and `generate`
read it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import qknorm
from qknorm.data.batcher import Batcher
from qknorm.data.tokens import load_tokens
from qknorm.errors import CheckpointError, ConfigError
from qknorm.train import TrainConfig
from qknorm.train.loop import train
from helpers.cli import run_cli

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def olmo_step(tmp_path_factory):
    """An OLMo-core llama-like model without QK-norm (OLMo-core's own builder and init, gains randomized) and its
    trainer-style step directory (model_and_optim/ DCP + the run's config.json)."""
    helpers = pytest.importorskip("helpers.olmo_core_models")
    model = helpers.build("llama_like")
    step = helpers.save_native(model, "llama_like", tmp_path_factory.mktemp("olmo") / "step100")
    return model, step


@pytest.fixture(scope="module")
def our_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ours")
    cfg = TrainConfig(steps=4, batch_size=4, seq_len=16, ckpt_every=2, stats_every=0, eval_batches=1, progress=False)
    train(qknorm.get_config("llama", "debug", d_model=32, d_ff=64, n_layers=2), cfg, load_tokens(max_bytes=50_000),
          out_dir=root / "run")
    return root / "run"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_open_model_reads_our_run_its_checkpoints_and_a_config_path(our_run):
    final = qknorm.open_model(our_run)
    assert final.format == "qknorm" and final.path == our_run and final.is_ours
    assert final.weight_files == (("model.safetensors", _sha(our_run / "model.safetensors")),)
    ckpt = qknorm.open_model(our_run / "checkpoints" / "step_0000002")
    assert ckpt.path.name == "step_0000002" and ckpt.format == "qknorm"
    assert not torch.equal(ckpt.model.embed.weight, final.model.embed.weight)  # step 2, not the end
    by_file = qknorm.open_model(our_run / "config.json")
    assert torch.equal(by_file.model.embed.weight, final.model.embed.weight)
    assert torch.equal(qknorm.load_model(our_run).embed.weight, final.model.embed.weight)
    with pytest.raises(ConfigError, match="max_seq_len applies to HF and OLMo-core"):
        qknorm.open_model(our_run, max_seq_len=64)
    with pytest.raises(ConfigError, match="kind='gguf' is not allowed"):
        qknorm.open_model(our_run, kind="gguf")
    with pytest.raises(CheckpointError, match="not a model directory"):
        qknorm.open_model(our_run / "nothing")


def test_open_model_reads_an_olmo_core_step_directory_as_olmo_core_computes(olmo_step):
    helpers = pytest.importorskip("helpers.olmo_core_models")
    olmo, step = olmo_step
    src = qknorm.open_model(step)
    assert src.format == "olmo-core" and not src.is_ours and not src.is_hf and src.tokenizer is None
    files = dict(src.weight_files)
    assert ".metadata" in {Path(f).name for f in files} and all(f.startswith("model_and_optim/") for f in files)
    assert all(files[f] == _sha(step / f) for f in files)
    ids = helpers.input_ids()
    with torch.no_grad():
        assert helpers.max_rel(src.model.eval()(ids), olmo(ids)) < 1e-5
    # the DCP folder itself names the same model; an explicit kind reads it as that source
    assert torch.equal(qknorm.open_model(step / "model_and_optim").model.embed.weight, src.model.embed.weight)
    with pytest.raises(CheckpointError):
        qknorm.open_model(step, kind="qknorm")


def test_train_init_from_an_olmo_core_step_directory_starts_at_its_loss(olmo_step, tmp_path, capsys):
    olmo, step = olmo_step
    run = tmp_path / "run"
    code, _, err = run_cli("train", ["--init-from", str(step), "--steps", "2", "--lr", "1e-3", "--batch-size", "4",
                                     "--seq-len", "16", "--device", "cpu", "--no-progress", "--seed", "3", "--set",
                                     "stats_every=0", "--set", "eval_batches=1", "--out", str(run)], capsys)
    assert code == 0, err
    x, y = Batcher(load_tokens().train, batch_size=4, seq_len=16, seed=3).batch(0)  # bytes: the model has no tokenizer
    with torch.no_grad():
        expected = F.cross_entropy(olmo(x).flatten(0, 1), y.flatten()).item()
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert first == pytest.approx(expected, rel=1e-5)
    origin = json.loads((run / "run.json").read_text())["origin"]["init_from"]
    assert origin["format"] == "olmo-core" and origin["path"] == str(step.resolve())
    assert set(origin["weights_sha256"]) == {f.relative_to(step).as_posix()
                                            for f in (step / "model_and_optim").iterdir() if f.is_file()}


def test_retrofit_from_an_olmo_core_step_directory(olmo_step, tmp_path, capsys):
    _, step = olmo_step
    out = tmp_path / "qk"
    code, _, err = run_cli("retrofit", ["--from", str(step), "--scope", "head", "--out", str(out), "--seq-len", "32",
                                        "--batch-size", "4", "--calib-tokens", "1024", "--calib-steps", "5",
                                        "--eval-tokens", "1024", "--heal-steps", "0", "--device", "cpu"], capsys)
    assert code == 0, err
    report = json.loads((out / "retrofit_report.json").read_text())
    assert report["source"]["format"] == "olmo-core"
    assert qknorm.open_model(out).model.config.qk_norm.value == "head"


def test_inspect_reads_every_source_through_open_model(olmo_step, our_run, capsys):
    _, step = olmo_step
    for path in (step, our_run, our_run / "checkpoints" / "step_0000002"):
        code, out, err = run_cli("inspect", [str(path), "--json", "--seq-len", "16"], capsys)
        assert code == 0, err
        assert json.loads(out)["max_attn_logit"] > 0
