"""`qknorm catalog`: every bundled config reads, its row says what the model qknorm builds does, the docs hold
the current table, and a small model of each design loads in `qknorm inspect`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import qknorm
from qknorm import catalog
from qknorm.interop.hf_config import SUPPORTED_MODEL_TYPES

from helpers.cli import run_cli

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_bundled_config_reads_and_every_family_has_one():
    entries = catalog.entries()
    assert len(entries) == len(list(catalog.CONFIG_DIR.glob("*.json"))) == 15
    families = {e.model_type for e in entries}
    assert families == set(SUPPORTED_MODEL_TYPES) - {"gemma3"}  # gemma3 is the multimodal wrapper of gemma3_text
    for e in entries:
        raw = json.loads((catalog.CONFIG_DIR / f"{e.name}.json").read_text())
        assert e.source == raw["_source"] and e.config.n_layers == raw["num_hidden_layers"], e.name


def test_every_bundled_config_says_what_was_verified():
    """Each file replaces the offline transcription's `_note` with a `_verified` note that names its source (a
    repository, pull request, issue or page) or says that none was found."""
    for path in sorted(catalog.CONFIG_DIR.glob("*.json")):
        raw = json.loads(path.read_text())
        assert "_note" not in raw, path.name
        note = raw.get("_verified", "")
        assert note.startswith(("verified 20", "partly verified 20", "not verified 20")), path.name
        assert "github " in note or "https://" in note or note.startswith("not verified"), path.name


def test_rows_describe_the_designs():
    rows = {r.family: r for r in (e.row() for e in catalog.entries())}
    assert (rows["olmo2"].scope, rows["olmo2"].weight, rows["olmo2"].block) == ("full width", "w (fp32)", "reordered")
    assert (rows["gemma3_text"].weight, rows["gemma3_text"].block) == ("1 + w (fp32)", "sandwich")
    assert (rows["qwen3"].qk_norm, rows["qwen3"].weight) == ("RMSNorm", "w (input)")
    assert (rows["cohere"].qk_norm, rows["cohere"].gain, rows["cohere"].block) == \
        ("LayerNorm (no bias)", "per head", "parallel, LayerNorm (no bias)")
    assert "interleaved" in rows["cohere"].rope and "logits x0.833333" == rows["cohere"].softcaps
    assert rows["stablelm"].rope.endswith("0.25 of each head") and rows["stablelm"].gain == "per head"
    assert "NoPE on 16/64" in rows["exaone4"].attention and "sliding 4096 on 48/64" in rows["exaone4"].attention
    assert rows["hunyuan_v1_dense"].vs_rope == "after"
    l4 = rows["llama4_text"]
    assert (l4.qk_norm, l4.gain, l4.vs_rope, l4.layers) == ("weightless RMSNorm", "none", "after",
                                                            "RoPE layers (36/48)")
    assert "chunked 8192 on 36/48" in l4.attention and "temperature 0.1" in l4.attention
    assert l4.block == "pre, MoE top-1 of 16, sigmoid on inputs + shared expert" and not l4.note
    assert rows["llama"].qk_norm == "none" and rows["mistral"].attention == "sliding 4096 on 32/32"


def test_docs_hold_the_current_table():
    rows = [e.row() for e in catalog.entries()]
    assert catalog.render(rows, "markdown") in (DOCS / "catalog.md").read_text()
    assert (DOCS / "catalog.html").read_text() == catalog.render(rows, "html")


@pytest.mark.parametrize("fmt", ["markdown", "html", "json"])
def test_cli_prints_the_table(capsys, fmt):
    code, out, err = run_cli("catalog", ["--format", fmt], capsys)
    assert code == 0 and not err
    assert out == catalog.render([e.row() for e in catalog.entries()], fmt)


@pytest.mark.parametrize("name", sorted(p.stem for p in catalog.CONFIG_DIR.glob("*.json")))
def test_small_model_of_each_design_builds_and_inspects(tmp_path, capsys, name):
    out = tmp_path / name
    code, text, err = run_cli("catalog", ["--build", name, "--out", str(out)], capsys)
    assert code == 0 and not err and text.startswith(f"wrote {out}")
    entry = catalog.read_entry(catalog.CONFIG_DIR / f"{name}.json")
    small = qknorm.from_hf(out).config
    for field in ("qk_norm", "qk_norm_type", "qk_norm_gain", "qk_norm_after_rope", "qk_norm_layers", "placement",
                  "norm_type", "norm_offset", "norm_cast", "rope_interleaved", "rope_fraction", "logit_scale"):
        assert getattr(small, field) == getattr(entry.config, field), (name, field)
    assert small.n_layers == min(8, entry.config.n_layers)
    code, text, err = run_cli("inspect", [str(out), "--ids", ",".join(map(str, range(40))), "--json"], capsys)
    assert code == 0, err
    report = json.loads(text)
    assert len(report["layers"]) == small.n_layers


def test_bad_build_requests_are_one_line(tmp_path, capsys):
    code, _, err = run_cli("catalog", ["--build", "nope", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and len(err) == 1 and "not a bundled config; choose one of:" in err[0]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("x")
    code, _, err = run_cli("catalog", ["--build", "qwen3-0.6b", "--out", str(tmp_path / "full")], capsys)
    assert code == 2 and len(err) == 1 and "not an empty directory" in err[0]
    assert (tmp_path / "full" / "keep").read_text() == "x"
