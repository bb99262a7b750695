"""StudyConfig, summary.json's "config" as a typed record: what a real study writes reads back and writes out key for
key (a key the driver writes that the record lacks fails here), and summaries of older versions still read and
render."""
import json

from qknorm import study
from qknorm.study.report import render_html
from qknorm.study.study_config import StudyConfig
from qknorm.train import TrainConfig

from helpers.study_runners import ok_record


def test_a_studys_config_reads_back_and_writes_out_byte_for_byte(tmp_path):
    plan = study.make_plan("quick", variants=("baseline", "qknorm"), lrs=(1e-3, 1e-2), workers=1)
    summary = study.run_study(plan, tmp_path / "s", runner=ok_record, report=False, log=lambda _: None)
    written = json.loads((tmp_path / "s" / "summary.json").read_text())["config"]
    cfg = StudyConfig.from_json(written)
    assert json.dumps(cfg.to_json()) == json.dumps(written)  # same keys, values and order
    assert cfg == summary.config and cfg.train == plan.train and cfg.schedule == plan.schedule
    assert cfg.vocab_size == 256 and cfg.data.fingerprint and cfg.environment.torch
    no_plots = json.loads(json.dumps(written))
    no_plots.update(plots=False, plots_note="matplotlib is not installed")  # as the driver adds it
    assert json.dumps(StudyConfig.from_json(no_plots).to_json()) == json.dumps(no_plots)


def test_a_constant_schedule_writes_final_lr_as_null_and_reads_it_back():
    cfg = StudyConfig(variants=("baseline",), lrs=(1e-2,), seeds=(0,), train=TrainConfig(lr=1e-2, final_lr=1e-2),
                      schedule="constant")
    train = cfg.to_json()["train"]
    assert train["final_lr"] is None and train["schedule"] == "constant" and list(train)[-1] == "schedule"
    assert StudyConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg


def test_a_summary_of_an_older_version_reads_and_renders():
    """The keys of bench/results/study_cpu_2026-11-26/summary.json's config (no label, optimizers, stats_seqs,
    machine, ...) and a key no longer written ("resummarized", as the GPU study of that day has)."""
    old = {"profile": "default", "variants": ["baseline", "qknorm"], "lrs": [1e-3, 1e-2], "seeds": [0],
           "variant_descriptions": {"baseline": "no QK-norm"}, "model_shape": {"d_model": 64, "vocab_size": 256},
           "models": {}, "train": {"steps": 20, "lr": 1e-2, "final_lr": None, "warmup_steps": 2, "batch_size": 8,
                                   "seq_len": 32, "dtype": "fp32", "schedule": "constant"},
           "spike_score": {"n_std": 7.0}, "lr_sensitivity_loss": "val", "data": {"source": "corpus", "path": None,
                                                                                 "tokenizer": None},
           "workers": 2, "fingerprint": "abc", "qknorm": "0.1", "environment": {"torch": "2.5", "device": "cpu"},
           "wall_time_s": 12.0, "date": "2026-11-26", "resummarized": True}
    cfg = StudyConfig.from_json(old)
    assert cfg.optimizers == ("adamw",) and cfg.label == "" and cfg.train.steps == 20 and cfg.schedule == "constant"
    runs = [ok_record(s) for s in study.run_specs(study.make_plan("quick", variants=("baseline", "qknorm"),
                                                                   lrs=(1e-3, 1e-2), workers=1), 256)]
    summary = study.StudySummary(runs=tuple(runs), analysis=study.analyze(runs, cfg.variants, cfg.lrs, cfg.seeds, 256),
                                 config=cfg)
    html = render_html(summary, {})
    assert "default profile: 2 variants x 2 peak LRs x 1 seed" in html and "20 steps each" in html
    assert "constant schedule after 2 warmup steps, batch 8 x" in html and "torch 2.5 on\ncpu" in html
