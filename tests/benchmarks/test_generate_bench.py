"""`qknorm bench generate`: a tiny run prints the table and, with --out, writes it and the JSON record (device,
date, versions, command line, parameters, setup) as generate_cpu_<date>.{md,json}; both contenders produce the
same tokens; results already in --out are not replaced without --force; bad --lengths is one line."""
import json

import torch

import qknorm
from qknorm.benchmarks.generate import full_recompute
from qknorm.cli import main

TINY = ["--lengths", "3,6", "--prompt-len", "4", "--d-model", "32", "--n-layers", "1", "--n-heads", "2",
        "--n-kv-heads", "1", "--d-ff", "32", "--repeats", "1", "--threads", "1"]


def test_tiny_run_writes_table_and_record(tmp_path, capsys):
    assert main(["bench", "generate", *TINY, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    [md] = tmp_path.glob("generate_cpu_*.md")
    rec = json.loads(md.with_suffix(".json").read_text())
    table = md.read_text()
    assert table.strip() in out and f"torch {torch.__version__}" in table and rec["date"] in md.name
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "new tokens" not in line]
    assert [int(r[0]) for r in rows] == [3, 6] and all(r[-1].strip() == "yes" for r in rows)
    cfg = qknorm.ModelConfig.from_dict(rec["config"])
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (32, 1, 2, 1, 16)
    assert rec["params"] == cfg.num_params() and rec["versions"]["torch"] == torch.__version__
    assert rec["torch_threads"] == 1 and rec["device"].startswith("cpu: ") and rec["argv"]
    assert [r["new_tokens"] for r in rec["rows"]] == [3, 6] and all(
        min(r["cached_tok_s_wall_best_median_cpu"] + r["full_tok_s_wall_best_median_cpu"]) > 0 for r in rec["rows"])
    # a second run does not replace those results without --force
    before = md.read_text()
    assert main(["bench", "generate", *TINY, "--out", str(tmp_path)]) == 2
    assert "already there" in capsys.readouterr().err and md.read_text() == before


def test_full_recompute_is_greedy_decoding():
    torch.manual_seed(0)
    model = qknorm.TransformerLM(qknorm.get_config("gemma3", "debug")).eval()
    ids = torch.randint(0, 256, (2, 5))
    out = full_recompute(model, ids, 3)
    with torch.no_grad():
        assert torch.equal(out[:, 5], model(ids)[:, -1].argmax(-1)) and out.shape == (2, 8)


def test_bad_lengths_is_one_line(capsys):
    assert main(["bench", "generate", "--lengths", "0,x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "qknorm bench: error: --lengths '0,x': expected comma-separated positive integers, e.g. 64,128"
