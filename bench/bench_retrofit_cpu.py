"""Measure the QK-norm retrofit on a trained llama: naive (gains 1), calibrated and healed next-token KL to the
original and the held-out losses, per scope and healing objective; write bench/results/retrofit_cpu_<date>.md/json.

    # the source (the command recorded in the result): a byte-level llama trained on the embedded corpus
    qknorm train --preset llama --set d_model=128 --set n_layers=3 --set n_heads=4 --set n_kv_heads=2 \
        --set d_ff=320 --set stats_every=100 --steps 800 --lr 3e-3 --batch-size 8 --seq-len 128 \
        --eval-every 200 --ckpt-every 200 --device cpu --no-progress --out SRC
    python bench/bench_retrofit_cpu.py --source SRC --work /tmp/retrofit_bench --heal-steps 100
    python bench/bench_retrofit_cpu.py --tiny-seeds 4 --work /tmp/retrofit_tiny   # the test setting, per seed

Every variant runs `qknorm.retrofit.pipeline.retrofit` with the same calibration and held-out windows (same seed),
one torch thread, and is timed in CPU seconds (process time) and wall seconds; the machine is shared, so wall
time is the less meaningful of the two. The head-scope result is also loaded with transformers
(AutoModelForCausalLM) and its logits compared with ours.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch

import qknorm
from qknorm.retrofit.config import RetrofitConfig
from qknorm.retrofit.pipeline import retrofit

VARIANTS = (("head", "distill", 30), ("head", "distill", None), ("head", "lm", None), ("full", "distill", None))


def _hf_check(out: Path) -> float:
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ours = qknorm.from_hf(out).eval()
    ids = torch.randint(0, ours.config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = hf(ids).logits, ours(ids)
    return float((a - b).abs().max() / b.abs().max())


def tiny_seeds(n: int, work: Path) -> dict:
    """The tests' setting over `n` seeds: a d_model-32 llama trained 120 steps, retrofitted with 30 healing
    steps by each objective, both scopes; does healing lower the KL below the calibrated model's?"""
    from qknorm.train import TrainConfig
    from qknorm.train.loop import train
    from qknorm.data.tokens import load_tokens

    data, rows = load_tokens(max_bytes=200_000), []
    for seed in range(n):
        src = work / f"src{seed}"
        train(qknorm.get_config("llama", "debug", d_model=32, d_ff=64),
              TrainConfig(steps=120, lr=1e-2, batch_size=8, seq_len=32, stats_every=0, eval_batches=2, progress=False,
                          seed=seed), data, out_dir=src)
        for scope in ("head", "full"):
            for objective in ("distill", "lm"):
                cfg = RetrofitConfig(scope=scope, objective=objective, calib_tokens=2048, calib_steps=20,
                                     heal_steps=30, batch_size=8, seq_len=32, eval_tokens=2048, seed=seed)
                r = retrofit(src, work / f"out{seed}_{scope}_{objective}", cfg)
                rows.append({"seed": seed, "scope": scope, "objective": objective, "kl_naive": r.kl_naive,
                             "kl_calibrated": r.kl_calibrated, "kl_healed": r.kl_healed,
                             "healed_below_calibrated": r.kl_healed < r.kl_calibrated})
                print(json.dumps(rows[-1]), flush=True)
    return {"setting": "llama debug d_model=32 d_ff=64, 120 steps lr 1e-2 batch 8x32 on 200 kB of the embedded "
                       "corpus; retrofit calib 2048 tokens x 20 steps, 30 healing steps at lr 1e-3, seq 32",
            "runs": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", help="the trained model to retrofit")
    p.add_argument("--tiny-seeds", type=int, default=0, help="instead: the tests' tiny setting over N seeds")
    p.add_argument("--work", required=True, help="scratch directory for the retrofitted models (replaced)")
    p.add_argument("--heal-steps", type=int, default=100)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.tiny_seeds:
        record = tiny_seeds(args.tiny_seeds, work)
        path = out_dir / f"retrofit_tiny_seeds_cpu_{time.strftime('%Y-%m-%d')}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {path}")
        return
    if not args.source:
        p.error("--source is required (or --tiny-seeds N)")
    rows = []
    for scope, objective, steps in VARIANTS:
        steps = steps or args.heal_steps
        cfg = RetrofitConfig(scope=scope, objective=objective, heal_steps=steps, eval_every=10)
        out = work / f"{scope}_{objective}_{steps}"
        c0, w0 = time.process_time(), time.perf_counter()
        r = retrofit(args.source, out, cfg, log=lambda m: print(f"  [{scope}/{objective}/{steps}] {m}", flush=True))
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        row = {"scope": scope, "objective": objective, "heal_steps": steps, "export": r.export, "cpu_s": cpu, "wall_s": wall,
               **{k: getattr(r, k) for k in ("kl_naive", "kl_calibrated", "kl_healed", "val_loss_original",
                                             "val_loss_naive", "val_loss_retrofitted", "val_loss_healed")},
               "calibration_s": r.seconds["calibrate"], "heal_s": r.seconds["heal"],
               "layers": [{"layer": f.layer, "attn_kl_naive": f.kl_naive, "attn_kl_rms_matched": f.kl_rms_matched,
                           "attn_kl_fitted": f.kl_fitted} for f in r.layers],
               "curve": [{"step": e.step, "kl": e.kl, "val_loss": e.val_loss} for e in r.heal.evals],
               "hf_rel_err": _hf_check(out) if r.export.startswith("hf/") else None}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k not in ("layers", "curve")}), flush=True)
    src = qknorm.load_model(args.source)
    record = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} torch "
              "thread, shared 2-core CPU", "torch": torch.__version__, "qknorm": qknorm.__version__,
              "source": str(Path(args.source).resolve()), "source_params": src.num_params(),
              "source_config": src.config.to_dict(), "settings": RetrofitConfig(eval_every=10).to_dict(),
              "variants": rows}
    stem = out_dir / f"retrofit_cpu_{record['date']}"
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {stem}.json")


if __name__ == "__main__":
    main()
