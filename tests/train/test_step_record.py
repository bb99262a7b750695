"""StepRecord, one training step's record: checked against what a real run writes to metrics.jsonl (every key the
loop writes is a field, every field is written by some step, each line reads back and writes out unchanged), and
against metrics.jsonl lines it must refuse."""

import dataclasses
import json
import math
import pickle

import pytest
import torch

import qknorm
from qknorm.data.tokens import load_tokens
from qknorm.diagnostics import AttentionStats
from qknorm.errors import CheckpointError
from qknorm.train import TrainConfig
from qknorm.train import step as L
from qknorm.train.loop import train
from qknorm.train.metrics_log import MetricsLog
from qknorm.train.qk_clip import ClipStep
from qknorm.train.step_record import STATS_FIELDS, StepRecord

torch.set_num_threads(1)

NAN_STEP = 2


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 5-step run whose steps write every kind of key: a stats pass (stats_every=2), QK-clip, validation at the
    end, a step whose loss is NaN (on_nan=skip), and mixture-of-experts MLPs (the balancing loss): (result, its
    metrics.jsonl lines)."""
    real, calls = L.forward_loss, {"n": 0}

    def nan_at_step_2(model, x, y, z_loss):  # eval_every=0: the only calls before the last step are the steps'
        ce, z = real(model, x, y, z_loss)
        calls["n"] += 1
        return (ce * math.nan, z) if calls["n"] == NAN_STEP + 1 else (ce, z)

    out = tmp_path_factory.mktemp("step_record") / "run"
    cfg = TrainConfig(steps=5, warmup_steps=1, batch_size=4, seq_len=16, stats_every=2, eval_batches=1,
                      qk_clip=50.0, on_nan="skip", progress=False)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(L, "forward_loss", nan_at_step_2)
        res = train(qknorm.get_config("qwen3", "debug", n_experts=4, experts_per_token=2), cfg, load_tokens(max_bytes=50_000), out_dir=out)
    return res, (out / "metrics.jsonl").read_text().splitlines()


def test_every_line_of_a_real_run_reads_back_and_writes_out_byte_for_byte(run):
    res, lines = run
    assert len(lines) == len(res.history) == 5
    for line, rec in zip(lines, res.history):
        back = StepRecord.from_json(json.loads(line))
        assert json.dumps(back.to_json()) == line
        assert json.dumps(rec.to_json()) == line  # what the loop held is what it wrote
    assert res.history[NAN_STEP].skipped and math.isnan(res.history[NAN_STEP].loss)
    assert isinstance(res.history[0].q_rms, tuple)  # frozen all the way down
    assert json.loads(lines[NAN_STEP])["loss"] is None  # strict JSON
    assert math.isnan(StepRecord.from_json(json.loads(lines[NAN_STEP])).loss)


def test_the_fields_are_the_keys_a_real_run_writes(run):
    """A key the loop writes that StepRecord lacks, or a field no step of this run writes, fails here (the run's
    steps cover every optional group: stats, QK-clip, a skipped step, validation)."""
    _, lines = run
    written = {k for line in lines for k in json.loads(line)}
    fields = [f for f in StepRecord.__dataclass_fields__]
    assert written == set(fields)
    for line in lines:  # and each line lists its keys in field order
        keys = list(json.loads(line))
        assert keys == sorted(keys, key=fields.index)
    stats_line = json.loads(lines[0])
    assert {k for k in stats_line if k in STATS_FIELDS} == set(STATS_FIELDS)
    assert STATS_FIELDS == tuple(f.name for f in dataclasses.fields(AttentionStats))  # what stats_pass returns
    clip_fields = tuple(f.name for f in dataclasses.fields(ClipStep))  # what QK-clip returns
    assert all(f in fields for f in clip_fields) and clip_fields == tuple(k for k in fields if k.startswith("qk_clip"))
    assert "max_attn_logit" not in json.loads(lines[1]) and not StepRecord.from_json(json.loads(lines[1])).has_stats


def test_a_resumed_history_equals_the_records_the_loop_held(run, tmp_path):
    res, lines = run
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    log = MetricsLog(path, resume_step=4)
    log.close()
    assert len(log.history) == 4
    for a, b in zip(log.history, res.history):  # equal but for NaN (NaN != NaN): compare the JSON forms
        assert a.to_json() == b.to_json()


def test_from_json_refuses_an_unknown_or_missing_key():
    base = {"step": 0, "loss": 5.5, "lr": 1e-3, "grad_norm": 1.0, "tokens": 64}
    assert StepRecord.from_json(base) == StepRecord(step=0, loss=5.5, lr=1e-3, grad_norm=1.0, tokens=64)
    with pytest.raises(ValueError, match="unknown metrics key.*aux_loss"):
        StepRecord.from_json({**base, "aux_loss": 0.1})
    with pytest.raises(ValueError, match="without grad_norm"):
        StepRecord.from_json({k: v for k, v in base.items() if k != "grad_norm"})


def test_metrics_log_names_the_line_it_cannot_read_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    good = json.dumps(StepRecord(step=0, loss=5.5, lr=1e-3, grad_norm=1.0, tokens=64).to_json())
    path.write_text(good + '\n{"step": 1, "loss": 5.0, "mystery": 1}\n')
    with pytest.raises(CheckpointError, match=r"metrics.jsonl line 2: not a training step's record.*mystery"):
        MetricsLog(path, resume_step=2)


def test_non_finite_values_round_trip_and_the_record_pickles():
    rec = StepRecord(step=3, q_rms=(1.0, math.inf), max_attn_logit=math.inf, loss=math.nan, lr=1e-3,
                     grad_norm=math.inf, tokens=256, skipped=True)
    j = rec.to_json()
    assert j["q_rms"] == [1.0, None] and j["loss"] is None and j["skipped"] is True and "val_loss" not in j
    back = StepRecord.from_json(json.loads(json.dumps(j)))
    assert math.isnan(back.loss) and math.isnan(back.q_rms[1]) and back.q_rms[0] == 1.0 and back.skipped
    again = pickle.loads(pickle.dumps(rec))
    assert again.to_json() == j and again.step == 3


def test_a_callback_written_for_the_dict_records_reads_the_same_values(run):
    """Before StepRecord the loop's records were dicts: `record["loss"]`, `"val_loss" in record` and
    `record.get("skipped")` in a user's callback keep working, and read what metrics.jsonl holds (the line's keys,
    NaN in memory where the file has null)."""
    res, lines = run
    for line, rec in zip(lines, res.history):
        d = json.loads(line)
        assert [k for k in d] == [k for k in rec.present()]
        for k, v in d.items():
            assert k in rec
            got = rec[k]
            if v is None:
                assert math.isnan(got)
            elif isinstance(v, list):
                assert got == pytest.approx([math.nan if x is None else x for x in v], nan_ok=True)
            else:
                assert got == v and rec.get(k) == v
        absent = [f.name for f in dataclasses.fields(StepRecord) if f.name not in d]
        for k in absent:
            assert k not in rec and rec.get(k, "none") == "none"
            with pytest.raises(KeyError):
                rec[k]
    assert "val_loss" not in res.history[0] and "val_loss" in res.history[-1]
    assert res.history[NAN_STEP].get("skipped") is True and not res.history[0].get("skipped")
