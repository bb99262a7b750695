"""`qknorm bench generate`: tokens/s with the KV cache vs recomputing the whole prefix for every new token.

Both contenders decode greedily from the same model and prompt, batch 1, fp32:
  cached     `model.generate(ids, N)`: one prefill forward over the prompt, then one token a step against the
             KV cache (qknorm/generation.py);
  no cache   the full-recompute loop: every step runs `model(prefix)` over the whole prefix so far and takes
             the argmax of the last position (what decoding costs without a cache).
Rates are N new tokens / time of the whole call, the prompt's prefill included, from --repeats timed runs of
each contender (alternated, so both see the same load) after one warm-up call: wall-clock tokens/s of the best
and the median run, and tokens per CPU-second of this process (time.process_time, best run), which with one
torch thread measures the cost itself and is far less disturbed by other processes on a shared machine. The
load average before and after is recorded. The two must produce the same tokens (checked, reported).
The default model is a small llama (pre-norm, GQA): d_model 128, 4 layers, 4 query / 2 kv heads of 32,
SwiGLU 384, byte vocab 256, prompt 16 tokens. With --out DIR, writes DIR/generate_<device>_<date>.md + .json
(device "cpu" or "cuda"; the date in UTC); nothing is written without --out.

    qknorm bench generate --threads 1 --out bench/results/   # ~10 min on one busy CPU core (defaults)
    qknorm bench generate --lengths 8,16 --d-model 64        # a quick look
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import statistics
import time
from typing import List, Optional, Tuple

import torch

from ..cli._common import positive_int
from ..errors import ConfigError
from ..model import TransformerLM
from ..presets import get_config
from . import environment
from .output import check_out, write_json, write_text

HELP = "generation tokens/s with the KV cache vs recomputing the whole prefix (CPU by default)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setup:
    """What is measured: the model shape, the prompt and the lengths (new tokens) compared."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 384
    prompt_len: int = 16
    lengths: Tuple[int, ...] = (64, 128, 256, 512, 1024)
    repeats: int = 3
    threads: Optional[int] = None  # torch.set_num_threads; None = torch's default
    device: str = "cpu"
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds of one call over the timed runs: wall clock (best, median) and this process's CPU time (best)."""

    wall_best: float
    wall_median: float
    cpu_best: float


@dataclasses.dataclass(frozen=True)
class Row:
    new_tokens: int
    cached: Timing
    full: Timing
    identical: bool  # the two produced the same tokens

    def tok_s(self, t: Timing) -> Tuple[float, float, float]:
        """(best wall, median wall, per CPU-second) tokens/s."""
        n = self.new_tokens
        return n / t.wall_best, n / t.wall_median, n / t.cpu_best


def _time_interleaved(fns, repeats: int, device: str) -> List[Timing]:
    """Time each of `fns` `repeats` times, alternating between them so that they see the same load."""
    wall: List[List[float]] = [[] for _ in fns]
    cpu: List[List[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            w, c = time.perf_counter(), time.process_time()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            wall[i].append(time.perf_counter() - w)
            cpu[i].append(time.process_time() - c)
    return [Timing(min(w), statistics.median(w), min(c)) for w, c in zip(wall, cpu)]


@torch.no_grad()
def full_recompute(model: TransformerLM, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding without a cache: the whole prefix through the model for every new token."""
    for _ in range(n):
        nxt = model(ids)[:, -1].argmax(dim=-1)  # (B,)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return ids


def build_model(s: Setup) -> TransformerLM:
    if s.d_model % s.n_heads:
        raise ConfigError(f"d_model={s.d_model} must be divisible by n_heads={s.n_heads}")
    cfg = get_config("llama", "debug", d_model=s.d_model, n_layers=s.n_layers, n_heads=s.n_heads,
                     n_kv_heads=s.n_kv_heads, head_dim=s.d_model // s.n_heads, d_ff=s.d_ff,
                     max_seq_len=s.prompt_len + max(s.lengths))
    torch.manual_seed(s.seed)
    return TransformerLM(cfg, device=s.device).eval()


def measure(s: Setup) -> Tuple[TransformerLM, List[Row]]:
    """Time both contenders at every length; returns the model measured and one Row per length."""
    if s.threads:
        torch.set_num_threads(s.threads)
    model = build_model(s)
    ids = torch.randint(0, 256, (1, s.prompt_len), generator=torch.Generator().manual_seed(s.seed)).to(s.device)
    model.generate(ids, 4)  # warm-up of both paths
    full_recompute(model, ids, 4)
    rows = []
    for n in s.lengths:
        out_c = model.generate(ids, n)
        out_f = full_recompute(model, ids, n)
        cached, full = _time_interleaved([lambda: model.generate(ids, n), lambda: full_recompute(model, ids, n)],
                                         s.repeats, s.device)
        rows.append(Row(n, cached, full, bool(torch.equal(out_c, out_f))))
        print(f"{n:6d} new tokens: cached {n / cached.cpu_best:9.1f}, no cache {n / full.cpu_best:9.1f} tokens per "
              "CPU-second", flush=True)
    return model, rows


def load_average() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def render(record: dict, heading: str, rows: List[Row]) -> str:
    s, c = record["setup"], record["config"]
    lines = [
        "# Generation tokens/s, KV cache vs full recompute", "", heading, "",
        f"Command: `{' '.join(record['argv'])}`. {record['torch_threads']} torch thread(s). Model: llama preset, "
        f"d_model {c['d_model']}, {c['n_layers']} layers, {c['n_heads']} query / {c['n_kv_heads']} kv heads of "
        f"{c['head_dim']}, d_ff {c['d_ff']}, vocab {c['vocab_size']}, {record['params']:,} parameters, "
        f"{record['dtype']}. Batch 1, greedy, prompt {s['prompt_len']} tokens.", "",
        "Each number is new tokens / time of one whole call (prompt prefill included), from "
        f"{s['repeats']} timed runs of each contender, alternated, after a warm-up: wall-clock tokens/s of the "
        "best and the median run, and tokens per CPU-second of this process (best run; with one torch thread "
        "this is the cost itself, much less sensitive to other processes than wall time). 'no cache' runs the "
        f"full forward over the whole prefix for every new token. Load average (1 min): {record['load_before']} "
        f"before, {record['load_after']} after.", "",
        "| new tokens | cached tok/CPU-s | wall best | wall median | no-cache tok/CPU-s | wall best | wall median "
        "| speed-up (CPU time) | same tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        (cb, cm, cc), (fb, fm, fc) = r.tok_s(r.cached), r.tok_s(r.full)
        lines.append(f"| {r.new_tokens} | {cc:,.1f} | {cb:,.1f} | {cm:,.1f} | {fc:,.1f} | {fb:,.1f} | {fm:,.1f} | "
                     f"{cc / fc:.2f}x | {'yes' if r.identical else 'NO'} |")
    return "\n".join(lines)


def _lengths(text: str) -> Tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        vals = ()
    if not vals or min(vals) < 1:
        raise ConfigError(f"--lengths {text!r}: expected comma-separated positive integers, e.g. 64,128")
    return vals


def add_arguments(p) -> None:
    d = Setup()
    p.add_argument("--lengths", default=",".join(map(str, d.lengths)), metavar="N,N,...",
                   help=f"new-token counts compared (default {','.join(map(str, d.lengths))})")
    p.add_argument("--prompt-len", type=positive_int, default=d.prompt_len, metavar="T", help="prompt tokens (16)")
    for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff"):
        p.add_argument("--" + name.replace("_", "-"), type=positive_int, default=getattr(d, name),
                       help=f"model shape (default {getattr(d, name)})")
    p.add_argument("--repeats", type=positive_int, default=d.repeats, help="timed runs of each (default 3)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the model runs (cpu)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write generate_<device>_<date>.md and .json there (default: print only)")
    p.add_argument("--force", action="store_true", help="replace those files if they exist in --out")


def run(args) -> int:
    setup = Setup(d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads, n_kv_heads=args.n_kv_heads,
                  d_ff=args.d_ff, prompt_len=args.prompt_len, lengths=_lengths(args.lengths),
                  repeats=args.repeats, threads=args.threads, device=args.device)
    if setup.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device here; use --device cpu")
    stem = f"generate_{setup.device}_{datetime.datetime.now(datetime.timezone.utc).date().isoformat()}"
    out = check_out(args.out, (stem + ".md", stem + ".json"), force=args.force)
    build_model(setup)  # a shape error now, before anything is timed
    load_before = load_average()
    model, rows = measure(setup)
    env = environment.collect(setup.device, vars(args))
    c = model.config
    record = dict(benchmark="generate", **env.as_dict(), setup={**dataclasses.asdict(setup), "lengths":
                  list(setup.lengths)}, params=model.num_params(), dtype="float32", config=c.to_dict(),
                  torch_threads=torch.get_num_threads(), load_before=load_before, load_after=load_average(),
                  rows=[{**dataclasses.asdict(r), "cached_tok_s_wall_best_median_cpu": r.tok_s(r.cached),
                         "full_tok_s_wall_best_median_cpu": r.tok_s(r.full)} for r in rows])
    table = render(record, env.heading(), rows)
    print(table, flush=True)
    if out:
        write_json(out / (stem + ".json"), record)
        write_text(out / (stem + ".md"), table + "\n")
        print(f"wrote {out / stem}.md and .json")
    return 0
