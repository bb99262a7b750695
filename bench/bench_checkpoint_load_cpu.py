"""Loading a 494M-parameter model (Qwen2-0.5B's published shape, qknorm preset qwen2/0.5b, fp32, random weights)
from a model directory and from a 1-process sharded (DCP) training checkpoint with `qknorm.load_model`:
process CPU time, wall time and peak RSS. Run it with PYTHONPATH pointing at the code to measure:

    python bench/bench_checkpoint_load_cpu.py make DIR     # writes DIR/model and DIR/ckpts (about 7.5 GB)
    python bench/bench_checkpoint_load_cpu.py load DIR     # one fresh process per measurement
"""
from __future__ import annotations

import resource
import sys
import time
import warnings
from pathlib import Path

import torch

import qknorm


def make(root: Path) -> None:
    try:
        from qknorm.io.checkpoints.sharded import save_sharded
    except ImportError:  # the layout before the io/ package
        from qknorm.train.checkpoints.sharded import save_sharded
    from qknorm.train.runtime import Runtime

    cfg = qknorm.get_config("qwen2", "0.5b")
    torch.manual_seed(0)
    model = qknorm.TransformerLM(cfg)
    qknorm.save_model(model, root / "model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_sharded(root / "ckpts", 1, Runtime("cpu"), model, torch.optim.AdamW(model.parameters()),
                     model_config=cfg, train_config={})
    print(f"{cfg.num_params():,} parameters")


def load(root: Path) -> None:
    for what in ("model", "ckpts/step_0000001"):
        t0, w0 = time.process_time(), time.time()
        model = qknorm.load_model(root / what)
        print(f"{what}: cpu {time.process_time() - t0:.1f} s, wall {time.time() - w0:.1f} s, peak RSS "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB, "
              f"{sum(p.numel() for p in model.parameters()):,} parameters")


if __name__ == "__main__":
    {"make": make, "load": load}[sys.argv[1]](Path(sys.argv[2]))
