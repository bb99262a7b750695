"""`qknorm study`: train the norm variants over a peak-LR grid and report what QK-norm buys (the study package).

    qknorm study --quick                     baseline vs qknorm (the quick profile)
    qknorm study                             all five variants (the default profile)
    qknorm study --device cuda               the GPU protocol: bigger model, bf16, Wortsman's 7-point grid
    qknorm study --data my_corpus/ --out my_study --variants baseline,qknorm --lrs 1e-3,1e-2,1e-1
    qknorm study --backend ray --ray-address HEAD:6379     the runs as Ray tasks on a cluster (the ray extra)
    qknorm study --profile stabilizers       every stabilizer x AdamW and Muon, 2 seeds, leaderboard with CIs
    qknorm study --profile scaling           baseline vs qknorm at 3 model sizes: LR sensitivity against size

Writes OUT/summary.json, OUT/report.html, OUT/*.png and OUT/runs/<variant>_lr<lr>_s<seed>.json (with
--tensorboard also OUT/tb/<run name>/, TensorBoard event files of each run), then prints
the summary table and the two checks last. Rerunning the same command reuses the finished runs in OUT. Output
to a closed pipe (`| head -1`) is dropped and the study carries on; Ctrl-C stops the workers, keeps the
finished runs and exits 130.
"""
from __future__ import annotations

import argparse
import time

from .. import study
from ..study.console import emit
from ..study.ray_backend import MAX_RETRIES, RAY_EXTRA
from ..errors import ConfigError
from ..train.compiled import require_compile_support
from ..train.config import check_device_available
from ..train.tensorboard_log import require_tensorboard
from ._common import add_tensorboard_and_compile

# library fields -> this command's flags (errors are reported with the flag the user typed)
FIELD_FLAGS = {"variants": "--variants", "optimizers": "--optimizers", "lrs": "--lrs", "seeds": "--seeds",
               "seed": "--seed", "steps": "--steps",
               "workers": "--workers", "profile": "--profile", "device": "--device", "out_dir": "--out",
               "force=True": "--force", "max_minutes": "--max-minutes", "backend": "--backend",
               "ray_address": "--ray-address"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "study", help="LR sweep of the norm variants with a report: what QK-norm buys on your data",
        description="Train the variants " + ", ".join(study.VARIANTS) + " over a grid of peak learning rates and "
        "write summary.json, report.html and plots. Profiles: " + "; ".join(
            f"{k}: {v.description}" for k, v in study.PROFILES.items()) + ".")
    p.add_argument("--quick", action="store_true", help="the quick profile: " + study.PROFILES["quick"].description)
    p.add_argument("--profile", choices=tuple(study.PROFILES), default=None,
                   help="study size; default: 'gpu' with --device cuda, else 'default' ('quick' with --quick); "
                   "'stabilizers' ('scaling') with --device cuda runs 'stabilizers_gpu' ('scaling_gpu')")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="text file, directory, glob or token file (.bin/.npy); default: the embedded corpus")
    p.add_argument("--tokenizer", default=None, metavar="F", help="a Hugging Face tokenizer.json (default: bytes)")
    p.add_argument("--out", default="study_out", metavar="DIR",
                   help="output directory (default: study_out); rerunning the same study there reuses its finished "
                   "runs")
    p.add_argument("--seed", type=int, default=0, help="first seed; run seeds are seed, seed+1, ... (default 0)")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="seeds per (variant, LR) (default: the profile's, 1); with more than one the table, summary "
                   "and plots give the mean and the min-max over seeds")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="parallel worker processes, one torch thread each; 1 = in this process (default: the "
                   "profile's)")
    p.add_argument("--device", default=None, metavar="D", help="cpu, cuda, cuda:N, mps (default: the profile's)")
    p.add_argument("--variants", default=None, metavar="A,B", help="comma-separated subset of: "
                   + ", ".join(study.VARIANTS))
    p.add_argument("--optimizers", default=None, metavar="A,B",
                   help="comma-separated optimizers crossed with the variants: " + ", ".join(study.OPTIMIZERS)
                   + " (default: the profile's; adamw except for the stabilizers profiles)")
    p.add_argument("--lrs", default=None, metavar="X,Y", help="comma-separated peak learning rates, e.g. 1e-3,3e-2")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="optimizer steps per run (default: the profile's)")
    p.add_argument("--max-minutes", type=float, default=None, metavar="M",
                   help="time budget: runs not finished by then stop and are recorded as cut, left out of LR "
                   "sensitivity; the same command again trains them")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="where the runs train: local = worker processes on this machine (default); ray = one Ray "
                   "task a run (1 CPU, and 1/workers of a GPU with --device cuda), on a Ray instance started for the "
                   "study or the cluster at --ray-address; a run whose Ray worker dies (killed, lost node) is retried "
                   f"{MAX_RETRIES} times, then recorded failed; needs " + RAY_EXTRA)
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --backend ray: a running Ray cluster, HOST:PORT of its head node (ray start --head; "
                   "port 6379), ray://HOST:10001 (Ray Client) or auto; default: $RAY_ADDRESS if set, else start a "
                   "local Ray instance with --workers CPUs")
    add_tensorboard_and_compile(p, events_in="each run's metrics as TensorBoard event files in OUT/tb/<run name>",
                                compile_what="every run's training forward/backward, the compile cache shared by "
                                "the workers (OUT/.compile_cache)", compile_default=False)
    p.add_argument("--force", action="store_true",
                   help="overwrite an output directory holding another study (its runs are deleted, none reused)")
    return p


def run(args: argparse.Namespace) -> int:
    profile = args.profile or ("quick" if args.quick else
                               "gpu" if (args.device or "").startswith("cuda") else "default")
    if args.ray_address is not None and args.backend != "ray":
        raise ConfigError(f"ray_address={args.ray_address} is for backend=ray (add --backend ray)")
    profile = study.device_profile(profile, args.device)  # stabilizers -> stabilizers_gpu on CUDA (scaling too)
    if args.tensorboard:
        require_tensorboard()  # before any data is read
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise ConfigError(f"max_minutes={args.max_minutes!r} must be a positive number of minutes")
    kw = dict(variants=study.parse_variants(args.variants) if args.variants is not None else None,
              lrs=study.parse_lrs(args.lrs) if args.lrs is not None else None,
              optimizers=study.parse_optimizers(args.optimizers) if args.optimizers is not None else None,
              seeds=args.seeds, seed=args.seed, steps=args.steps, device=args.device, data=args.data,
              tokenizer=args.tokenizer, workers=args.workers, compile=args.compile)
    if args.compile:  # before anything is read or written (run_study checks too; a scaling study writes first)
        require_compile_support(args.device or study.PROFILES[profile].device)
    if study.is_scaling(profile):
        return _run_scaling(args, study.make_scaling_plan(profile, **kw))
    plan = study.make_plan(profile, **kw)
    ray = study.RayScheduler(args.ray_address) if args.backend == "ray" else None  # no Ray: one line, exit 2
    if ray is None or ray.address is None:  # a cluster's GPUs are its nodes', checked when the study connects
        check_device_available(plan.train.device)
    t0 = time.perf_counter()
    summary = study.run_study(plan, args.out, force=args.force, max_minutes=args.max_minutes,
                               scheduler=ray or study.LocalPool(), tensorboard=args.tensorboard)
    reused = summary.config.reused_runs
    emit(f"qknorm study ({summary.config.label}): {study.plural(len(summary.runs), 'run')} "
         + (f"({reused} reused) " if reused else "") + f"in {time.perf_counter() - t0:.0f} s; wrote "
         f"{args.out}/summary.json, {args.out}/report.html" + ("" if summary.config.plots else " (no plots)")
         + "\n" + study.format_table(summary))
    return 0


def _run_scaling(args: argparse.Namespace, splan) -> int:
    """A scaling profile: the study at each model size, then the trend across sizes (study/scaling_driver.py)."""
    def scheduler():
        return study.RayScheduler(args.ray_address) if args.backend == "ray" else study.LocalPool()

    if args.backend != "ray" or scheduler().address is None:
        check_device_available(splan.first.train.device)
    t0 = time.perf_counter()
    summary = study.run_scaling_study(splan, args.out, force=args.force, max_minutes=args.max_minutes,
                                      scheduler=scheduler, tensorboard=args.tensorboard)
    runs = sum(len(s.summary.runs) for s in summary.sizes)
    emit(f"qknorm scaling study ({summary.config.label}): {study.plural(len(summary.sizes), 'size')}, "
         f"{study.plural(runs, 'run')} in {time.perf_counter() - t0:.0f} s; wrote {args.out}/summary.json, "
         f"{args.out}/report.html" + ("" if summary.config.plots else " (no plots)") + "\n"
         + study.format_scaling_table(summary))
    return 0
