"""End-to-end training step, qknorm vs HF Olmo2 (372M, B=8, T=2048, bf16): see qknorm/benchmarks/train_step.py.

    python bench/bench_train_gpu.py --out bench/results/     # on a GPU
    python bench/bench_train_gpu.py --cpu-smoke              # tiny shapes on CPU
"""
import sys

from qknorm.benchmarks.train_step import main

if __name__ == "__main__":
    sys.exit(main())
