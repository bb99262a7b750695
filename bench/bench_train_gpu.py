"""Same as `qknorm bench train` (one training step, our OLMo 2 372M vs HF Olmo2ForCausalLM, equal models):
see qknorm/benchmarks/train_step.py. Flags as for the CLI.

    python bench/bench_train_gpu.py --out bench/results/new/   # on a GPU
    python bench/bench_train_gpu.py --cpu-smoke                # tiny shape on CPU
"""
import sys

from qknorm.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "train", *sys.argv[1:]]))
