"""open_model at a published size: an OLMo-core olmo2_190M trainer checkpoint (267M parameters with its 100k
vocabulary; OLMo-core builds and initializes it, saved as a step directory) read by `qknorm inspect` and `qknorm
train --init-from` (one step). Prints each command's exit status, wall and child-process CPU time and peak RSS.
Usage: python bench/bench_open_model_olmo_core_cpu.py [WORK_DIR]  (results: bench/results/open_model_olmo_core_*.md)"""
import json, resource, subprocess, sys, time, warnings
from pathlib import Path
import torch
from olmo_core.distributed.checkpoint import save_model_and_optim_state
from olmo_core.nn.transformer import TransformerConfig

root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/open_model_scale")
step = root / "step0"
cfg = TransformerConfig.olmo2_190M(vocab_size=100352)
if not (step / "config.json").exists():
    model = cfg.build(init_device="cpu")
    model.init_weights(device=torch.device("cpu"))
    n = sum(p.numel() for p in model.parameters())
    print("params", n, flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_model_and_optim_state(str(step / "model_and_optim"), model, None)
    (step / "config.json").write_text(json.dumps({"model": cfg.as_config_dict()}))
    del model
for cmd in (["inspect", str(step), "--ids", ",".join(str(i) for i in range(1, 65)), "--json"],
            ["train", "--init-from", str(step), "--steps", "1", "--batch-size", "1", "--seq-len", "32", "--device",
             "cpu", "--no-progress", "--set", "stats_every=0", "--set", "eval_batches=1", "--out", str(root / "run"),
             "--data", str(Path(__file__).resolve().parents[1] / "README.md")]):
    t0 = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run([sys.executable, "-m", "qknorm", *cmd], capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(cmd[0], "rc", p.returncode, "wall %.1fs" % (time.time() - t0),
          "cpu %.1fs" % (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime),
          "peak rss %.0f MB" % (after.ru_maxrss / 1024), flush=True)
    print(p.stdout[-600:], p.stderr[-600:], flush=True)
