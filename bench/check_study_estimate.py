"""Check a study's printed wall-time estimate against its wall time (issue 27's goal: within 25%).

    PYTHONPATH=src python bench/check_study_estimate.py                        # the stabilizers profile
    PYTHONPATH=src python bench/check_study_estimate.py --out /tmp/stab -- --compile   # arguments after -- go to
    PYTHONPATH=src python bench/check_study_estimate.py --profile quick --tolerance 0.25  # `qknorm study`

Runs `python -m qknorm study --profile P --out OUT` (a fresh OUT: no run is reused, or the estimate would be of
fewer runs than the wall time measures) and prints: the estimate (summary.json `config.estimate`), the wall time of
the runs (the study's own `trained N runs in T s wall` line: from after the estimate to the last run; the
estimate's calibration runs come before it and are not part of what it predicts), their ratio, and the same in CPU
terms (the runs' summed process CPU time against the estimate's CPU seconds), with the load average before and
after. Exit 1 when the wall ratio is off by more than the tolerance, 2 when the study failed.

The estimate is for quiet cores: on a machine shared with other jobs the wall time is longer and the comparison
says so (the load average is printed); the CPU comparison holds either way. Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAINED = re.compile(r"trained (\d+) runs? in (\d+) s wall \(estimated (\d+) s\)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="stabilizers")
    ap.add_argument("--out", help="the study's output directory (must not exist; default: a new temporary one)")
    ap.add_argument("--tolerance", type=float, default=0.25, help="allowed |wall / estimate - 1| (default 0.25)")
    ap.add_argument("study_args", nargs="*", help="more `qknorm study` arguments (after --)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="check_estimate_")) / "study"
    if out.exists():
        print(f"check_study_estimate: --out {out} exists: give a new directory (finished runs would be reused)",
              file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "qknorm", "study", "--profile", args.profile, "--out", str(out), *args.study_args]
    load0, t0, cpu0 = os.getloadavg(), time.time(), os.times()
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    load1, t1, cpu1 = os.getloadavg(), time.time(), os.times()
    sys.stderr.write(proc.stderr)
    m = TRAINED.search(proc.stderr)
    if proc.returncode != 0 or m is None or not (out / "summary.json").is_file():
        print(f"check_study_estimate: the study failed (exit {proc.returncode}) or printed no estimate", file=sys.stderr)
        return 2
    cfg = json.loads((out / "summary.json").read_text())
    est, runs = cfg["config"]["estimate"], cfg["runs"]
    wall, est_wall = float(m.group(2)), float(est["wall_s"])
    runs_cpu = sum(r.get("cpu_s") or 0.0 for r in runs)
    children_cpu = (cpu1.children_user + cpu1.children_system) - (cpu0.children_user + cpu0.children_system)
    ratio = wall / est_wall
    print(f"command: {' '.join(cmd)}")
    print(f"load average (1/5/15 min): before {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, after "
          f"{load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}; usable CPUs {len(os.sched_getaffinity(0))}")
    print(f"estimate: {est_wall:.0f} s wall for {est['runs']} runs on {est['parallel']} quiet cores, "
          f"{est['cpu_s']:.0f} CPU s (calibration {est['calibration_s']:.0f} s before it)")
    print(f"actual:   {wall:.0f} s wall for the runs (whole invocation {t1 - t0:.0f} s); the runs' CPU "
          f"{runs_cpu:.0f} s (the whole process tree's {children_cpu:.0f} s)")
    print(f"wall / estimate = {ratio:.3f}; runs' CPU / estimated CPU = {runs_cpu / est['cpu_s']:.3f}; "
          f"CPU per core / estimated wall = {children_cpu / est['parallel'] / est_wall:.3f}")
    ok = abs(ratio - 1) <= args.tolerance
    print(f"{'PASS' if ok else 'FAIL'}: wall within {args.tolerance:.0%} of the estimate" if ok else
          f"FAIL: wall off the estimate by {ratio - 1:+.0%} (tolerance {args.tolerance:.0%})"
          + ("; the machine was loaded (load average above its CPUs): the estimate is for quiet cores"
             if max(load0[0], load1[0]) > len(os.sched_getaffinity(0)) else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
