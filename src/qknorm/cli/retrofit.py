"""`qknorm retrofit`: add QK-norm to a trained model that has none, keeping what it knows.

    qknorm retrofit --from runs/llama --scope head --out runs/llama-qk --heal-steps 200
    qknorm retrofit --from path/to/Llama-dir --scope head --out qwen3-like/ --data my_texts/ --heal-steps 500

Inserts QK-norm before RoPE, fits the gains so every layer's attention stays as close as possible to the
original's on calibration tokens, optionally heals with a short continued training (by default distillation:
the KL to the original's next-token distributions, --distill; or --lm-loss: the next-token loss on the data,
which moves a model that was not trained to convergence onward, away from the original), and measures each
stage on held-out tokens. The model written is the better of the calibrated and the healed one (by the held-out
KL; by the loss for --lm-loss; --keep-healed: the healed one regardless), said on stdout and as `kept` in the
report. Writes OUT/retrofit_report.json (kl_naive, kl_calibrated, kl_healed, the validation losses; nats per token),
OUT/retrofit_report.html with the healing curve (OUT/healing_curve.png), and the model with its tokenizer:
a transformers directory when a family has the new numerics (llama + --scope head = Qwen3:
AutoModelForCausalLM.from_pretrained(OUT) or qknorm.from_hf(OUT) load it), else qknorm's format
(qknorm.load_model(OUT); --scope full has no transformers family). Progress on stderr: each stage (reading,
the held-out reference, each KL, calibration layer by layer, healing step by step) with elapsed time and ETA on
a terminal, one line per stage otherwise; --no-progress for none. retrofit_report.json records every stage's
wall and CPU seconds and the peak memory. Exit status: 0 done; 1 healing diverged or a stage failed (out of
memory: one line naming the stage, nothing written); 2 bad input (one line, nothing written); 128 + the signal
when SIGTERM/SIGINT stopped healing (after the step in flight; nothing written).
"""
from __future__ import annotations

import argparse
import sys

from ..progress import Progress
from ..retrofit.config import RetrofitConfig
from ..retrofit.heal import HealDiverged, HealStopped
from ..retrofit.insert import SCOPES
from ..retrofit.pipeline import retrofit
from ._common import non_negative_int, one_line_warnings, positive_float, positive_int, print_line

# the frozen public flags (tests/cli/test_retrofit_cli.py checks the parser against this list)
FLAGS = ("--from", "--scope", "--out", "--data", "--calib-tokens", "--calib-steps", "--heal-steps", "--distill",
         "--lm-loss", "--lr", "--batch-size", "--seq-len", "--eval-tokens", "--seed", "--device", "--no-progress",
         "--keep-healed")

# RetrofitConfig field -> flag (library errors name fields; the user typed flags)
FIELD_FLAGS = {"scope": "--scope", "calib_tokens": "--calib-tokens", "calib_steps": "--calib-steps",
               "heal_steps": "--heal-steps", "lr": "--lr", "batch_size": "--batch-size", "seq_len": "--seq-len",
               "eval_tokens": "--eval-tokens", "seed": "--seed", "device": "--device", "out_dir": "--out",
               "keep_healed": "--keep-healed",
               "from_dir": "--from"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    d = RetrofitConfig()
    p = subparsers.add_parser(
        "retrofit", help="add QK-norm to a trained model without it, keeping what it knows",
        description="Insert QK-norm (before RoPE) into a model without it (llama family, or any qknorm model with "
                    "qk_norm=none), fit its gains to the original attention on calibration tokens, optionally heal "
                    "it with a short continued training, and report the next-token KL to the original at each stage.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", required=True, metavar="DIR",
                   help="the model: a qknorm model, run or checkpoint directory, or an HF directory (llama family)")
    p.add_argument("--scope", required=True, choices=SCOPES,
                   help="head: per head over head_dim (llama -> Qwen3 in transformers); full: over the projection "
                        "width (OLMo 2 style; written in qknorm's format)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (new or empty)")
    p.add_argument("--data", metavar="PATH", help="text file, directory, glob or token file for calibration, healing "
                   "and the held-out measurements (default: the embedded corpus); text is encoded with the model's "
                   "tokenizer.json (bytes without one)")
    p.add_argument("--calib-tokens", type=positive_int, metavar="N",
                   help=f"training tokens the gains are fitted on (default {d.calib_tokens})")
    p.add_argument("--calib-steps", type=non_negative_int, metavar="N",
                   help=f"Adam steps of the per-layer gain fit (default {d.calib_steps}; 0 = rms-matched gains)")
    p.add_argument("--heal-steps", type=non_negative_int, metavar="N",
                   help="continued-training steps after calibration (default 0: no healing)")
    obj = p.add_mutually_exclusive_group()
    obj.add_argument("--distill", dest="objective", action="store_const", const="distill",
                     help="heal by the KL to the original's next-token distributions (the default)")
    obj.add_argument("--lm-loss", dest="objective", action="store_const", const="lm",
                     help="heal by the next-token loss on the data instead")
    p.add_argument("--lr", type=positive_float, metavar="X", help=f"peak healing learning rate (default {d.lr:g})")
    p.add_argument("--keep-healed", action="store_true",
                   help="write the healed model even where it measured worse than the calibrated one (by default "
                        "the better of the two by the healing objective's held-out measure is written)")
    p.add_argument("--batch-size", type=positive_int, metavar="B",
                   help=f"healing and evaluation batch (default {d.batch_size})")
    p.add_argument("--seq-len", type=positive_int, metavar="T", help=f"window length (default {d.seq_len})")
    p.add_argument("--eval-tokens", type=positive_int, metavar="N",
                   help=f"held-out tokens every KL and loss is measured on (default {d.eval_tokens})")
    p.add_argument("--seed", type=non_negative_int, metavar="S", help="calibration and healing batches (default 0)")
    p.add_argument("--device", default="auto", metavar="D", help="cpu, cuda, cuda:N, mps, or auto (default)")
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr (by default: a live line per "
                   "stage with elapsed time and ETA on a terminal, else one line per stage with its time)")
    return p


def _config(args) -> RetrofitConfig:
    given = {"scope": args.scope, "calib_tokens": args.calib_tokens, "calib_steps": args.calib_steps,
             "heal_steps": args.heal_steps, "lr": args.lr, "batch_size": args.batch_size, "seq_len": args.seq_len,
             "eval_tokens": args.eval_tokens, "seed": args.seed}
    fields = {k: v for k, v in given.items() if v is not None}
    if args.objective is not None:
        fields["objective"] = args.objective
    if args.keep_healed:
        fields["keep_healed"] = True
    if args.device != "auto":
        fields["device"] = args.device
    else:
        import torch

        fields["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    return RetrofitConfig(**fields)


def run(args) -> int:
    prog = Progress("qknorm retrofit", enabled=not args.no_progress)
    with one_line_warnings("qknorm retrofit"):
        cfg = _config(args)
        try:
            r = retrofit(args.source, args.out, cfg, data=args.data, log=prog.note, progress=prog)
        except HealDiverged as e:
            prog.note(f"error: {e}; nothing written")
            return 1
        except HealStopped as e:  # SIGTERM/SIGINT: the step in flight finished, then stopped
            prog.note(f"{e}; nothing written")
            return e.reason.exit_code
        except (RuntimeError, MemoryError) as e:  # out of memory, a backend failure: one line, never a traceback
            stage = prog.failed or "retrofit"
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            prog.note(f"error: {stage} failed: {first}; nothing written")
            return 1
    where = ("transformers " + r.export[3:] + ": AutoModelForCausalLM.from_pretrained or qknorm.from_hf"
             if r.export.startswith("hf/") else "qknorm format: qknorm.load_model")
    healed = "" if r.kl_healed is None else f", healed {r.kl_healed:.4f} (val loss {r.val_loss_healed:.4f})"
    print_line(f"qknorm retrofit: scope {r.scope}: next-token KL to the original (nats/token) naive "
               f"{r.kl_naive:.4f}, calibrated {r.kl_calibrated:.4f}{healed}; val loss original "
               f"{r.val_loss_original:.4f}, retrofitted {r.val_loss_retrofitted:.4f}; wrote the {r.kept} model -> "
               f"{args.out} ({where}); report: retrofit_report.json, retrofit_report.html")
    return 0
