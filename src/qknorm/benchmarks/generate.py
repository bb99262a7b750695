"""Generation benchmark: tokens/s with the KV cache vs recomputing the whole prefix for every new token.

    qknorm bench generate --out bench/results/              # ~2 min on one CPU core (defaults below)
    qknorm bench generate --lengths 8,16 --d-model 64       # a quick look

Both contenders decode greedily from the same model and prompt, batch 1, in the model's dtype (fp32 default):
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
SwiGLU 384, byte vocab 256, prompt 16 tokens. With --out DIR, writes DIR/generate_<device>_<date>.md + .json.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from ..errors import ConfigError
from ..model import TransformerLM
from ..presets import get_config


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


def run(s: Setup) -> Tuple[TransformerLM, List[Row]]:
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


def environment(s: Setup, model: TransformerLM) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(date=datetime.date.today().isoformat(), device=s.device, cpu=cpu, cpu_count=os.cpu_count(),
                torch_threads=torch.get_num_threads(), python=platform.python_version(), torch=torch.__version__,
                params=model.num_params(), dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
                config=model.config.to_dict(), setup={**dataclasses.asdict(s), "lengths": list(s.lengths)})


def render(env: dict, rows: List[Row]) -> str:
    s, c = env["setup"], env["config"]
    lines = [
        f"# Generation tokens/s, KV cache vs full recompute: {env['device']} ({env['cpu']}), {env['date']}", "",
        f"torch {env['torch']}, Python {env['python']}, {env['torch_threads']} torch thread(s) of "
        f"{env['cpu_count']} CPUs. Model: llama preset, d_model {c['d_model']}, {c['n_layers']} layers, "
        f"{c['n_heads']} query / {c['n_kv_heads']} kv heads of {c['head_dim']}, d_ff {c['d_ff']}, vocab "
        f"{c['vocab_size']}, {env['params']:,} parameters, {env['dtype']}. Batch 1, greedy, prompt "
        f"{s['prompt_len']} tokens.", "",
        "Each number is new tokens / time of one whole call (prompt prefill included), from "
        f"{s['repeats']} timed runs of each contender, alternated, after a warm-up: wall-clock tokens/s of the "
        "best and the median run, and tokens per CPU-second of this process (best run; with one torch thread "
        "this is the cost itself, much less sensitive to other processes than wall time). 'no cache' runs the "
        f"full forward over the whole prefix for every new token. Load average (1 min): {env['load_before']} "
        f"before, {env['load_after']} after, on {env['cpu_count']} CPUs.", "",
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


def main(argv=None) -> int:
    from ..cli._common import OneLineParser, positive_int

    ap = OneLineParser(prog="qknorm bench generate", description=__doc__.split("\n")[0])
    d = Setup()
    ap.add_argument("--lengths", default=",".join(map(str, d.lengths)), help="new-token counts (64,...,1024)")
    ap.add_argument("--prompt-len", type=positive_int, default=d.prompt_len)
    for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "repeats"):
        ap.add_argument("--" + name.replace("_", "-"), type=positive_int, default=getattr(d, name))
    ap.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--out", default=os.environ.get("OUT") or None, help="folder for the .md/.json (default $OUT)")
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device here; use --device cpu")
    setup = Setup(d_model=a.d_model, n_layers=a.n_layers, n_heads=a.n_heads, n_kv_heads=a.n_kv_heads, d_ff=a.d_ff,
                  prompt_len=a.prompt_len, lengths=_lengths(a.lengths), repeats=a.repeats, threads=a.threads,
                  device=a.device)
    load_before = load_average()
    model, rows = run(setup)
    env = {**environment(setup, model), "load_before": load_before, "load_after": load_average()}
    table = render(env, rows)
    print(table)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"generate_{env['device']}_{env['date']}"
        record = {**env, "rows": [{**dataclasses.asdict(r), "cached_tok_s_wall_best_median_cpu": r.tok_s(r.cached),
                                   "full_tok_s_wall_best_median_cpu": r.tok_s(r.full)} for r in rows]}
        stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
        stem.with_suffix(".md").write_text(table + "\n")
        print(f"wrote {stem}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
