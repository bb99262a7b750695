"""`qknorm inspect PATH`: does this checkpoint show attention-logit growth?

    qknorm inspect runs/llama-debug                        # our model dir (config.json with qknorm_config)
    qknorm inspect runs/llama-debug/checkpoints/step_0000100   # any training checkpoint: follow logit growth
    qknorm inspect path/to/Qwen3-0.6B --text "def f(x):"   # an HF directory (tokenizer.json used if present)
    qknorm inspect runs/x --ids 1,2,3 --json
    qknorm inspect runs/olmo2/step10000 --ids 1,2,3         # an OLMo-core trainer checkpoint (interop/olmo_core.py)

Runs one eager pass over some text and prints per layer the exact max attention logit, the Cauchy-Schwarz
bound scale*max|q|*max|k|, and the RMS of q and k after QK-norm and RoPE, then a verdict line
(diagnostics.logit_verdict). Text: --text, --text-file, or --ids; default the start of the Python standard
library's os.py. Tokens are bytes when the model's vocabulary is 256, else a tokenizer.json is needed
(--tokenizer, or PATH/tokenizer.json); without one, and with no --text/--ids, 256 seeded random ids.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from ..io.names import TOKENIZER_NAME
from ..data.tokenizer import load_tokenizer
from ..progress import for_model
from ._common import one_line_warnings, positive_int


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "inspect", help="per-layer max attention logits and q/k norms of a checkpoint",
        description="Per-layer max attention logit, logit bound and q/k RMS of a checkpoint (ours or a Hugging "
                    "Face directory) on some text, and a verdict on attention-logit growth.")
    p.add_argument("path", metavar="PATH", help="model directory (qknorm train output, an HF checkpoint dir or an "
                   "OLMo-core checkpoint step dir)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", help="text to run (default: the start of the stdlib's os.py)")
    src.add_argument("--text-file", metavar="F", help="read the text from this file")
    src.add_argument("--ids", metavar="I,J,...", help="comma-separated token ids instead of text")
    p.add_argument("--tokenizer", metavar="FILE", help="tokenizer.json (default: PATH/tokenizer.json; bytes for "
                   "vocab 256)")
    p.add_argument("--seq-len", type=positive_int, default=256, metavar="T", help="tokens used (default 256)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress on stderr (shown for large models: a line per stage with elapsed time)")
    return p


def token_ids(args, model, path: Path) -> tuple:
    """(ids list, description) for the chosen text source, cut to --seq-len."""
    vocab = model.config.vocab_size
    T = min(args.seq_len, model.config.max_seq_len)
    if args.ids is not None:
        try:
            ids = [int(s) for s in args.ids.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--ids {args.ids!r}: expected comma-separated integers") from None
        if not ids:
            raise ConfigError("--ids: no token ids given")
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ConfigError(f"--ids: token id {bad[0]} is outside the model's vocabulary [0, {vocab})")
        return ids[:T], f"{min(len(ids), T)} ids from --ids"
    has_tokenizer = bool(args.tokenizer) or (path / TOKENIZER_NAME).is_file()
    if args.text is None and args.text_file is None and vocab != 256 and not has_tokenizer:
        # no text was asked for and none can be encoded: the weights' logit scale on random tokens still shows
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (T,), generator=g).tolist()
        return ids, (f"{T} random token ids (seed 0): no tokenizer.json with the model; give --tokenizer or --ids "
                     "for real text")
    if args.text is not None:
        text, where = args.text, "--text"
    elif args.text_file is not None:
        try:
            text, where = Path(args.text_file).read_text(errors="replace"), args.text_file
        except OSError as e:
            raise DataError(f"cannot read --text-file {args.text_file}: {e.strerror or e}") from None
    else:
        text, where = Path(os.__file__).read_text(errors="replace")[: 8 * T], "the start of os.py"
    tok_path = Path(args.tokenizer) if args.tokenizer else (path / TOKENIZER_NAME)
    if args.tokenizer or (vocab != 256 and tok_path.is_file()):
        tok, tok_path = load_tokenizer(tok_path)
        ids, how = tok.encode(text, add_special_tokens=False).ids, f"tokenizer {tok_path.name}"
        if any(i >= vocab for i in ids):
            raise ConfigError(f"tokenizer {tok_path} produces ids >= the model's vocab_size {vocab}")
    elif vocab == 256:
        ids, how = list(text.encode("utf-8")), "bytes"
    else:
        raise ConfigError(f"the model's vocabulary has {vocab} tokens: give --tokenizer tokenizer.json or --ids "
                          "(bytes are used only for vocab 256)")
    if not ids:
        raise ConfigError(f"{where}: no tokens")
    return ids[:T], f"{min(len(ids), T)} tokens ({how}) from {where}"


def run(args) -> int:
    import torch

    from ..diagnostics import layer_rows, logit_verdict, nonfinite_to_none, stats_pass

    path = Path(args.path)
    prog = for_model("qknorm inspect", path, enabled=not args.no_progress)
    with one_line_warnings("qknorm inspect"), prog.stage("reading the model"):
        from ..pretrained import open_model

        opened = open_model(path)
    model, source = opened.model.float().eval(), opened.path
    ids, described = token_ids(args, model, source)
    with prog.stage(f"forward pass ({len(ids)} tokens)"):
        stats = stats_pass(model, torch.tensor([ids], dtype=torch.long))  # (1, T)
    rows = layer_rows(model, stats)
    c = model.config
    has_qk = c.qk_norm.value != "none"
    verdict = logit_verdict(stats.max_attn_logit, qk_norm=has_qk)
    if args.json:
        out = {"path": str(path), "text": described, "qk_norm": c.qk_norm.value, "placement": c.placement.value,
               "layers": rows, "max_attn_logit": stats.max_attn_logit, "output_logit_max": stats.logit_max,
               "output_logit_std": stats.logit_std, "verdict": verdict}
        print(json.dumps(nonfinite_to_none(out)))  # strict JSON: non-finite numbers as null
        return 0
    print(f"model: {path} ({c.n_layers} layers, {c.n_heads} heads x {c.head_dim}, qk_norm={c.qk_norm.value}, "
          f"placement={c.placement.value})")
    print(f"text: {described}")
    print(f"{'layer':>5}  {'type':<7}  {'max logit':>10}  {'bound':>10}  {'q RMS':>8}  {'k RMS':>8}")
    for r in rows:
        print(f"{r['layer']:>5}  {r['type']:<7}  {r['max_attn_logit']:>10.4g}  {r['logit_bound']:>10.4g}  "
              f"{r['q_rms']:>8.4g}  {r['k_rms']:>8.4g}")
    print(f"output logits: max {stats.logit_max:.4g}, std {stats.logit_std:.4g}")
    print(f"verdict: {verdict}")
    sys.stdout.flush()
    return 0
