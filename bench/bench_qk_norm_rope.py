"""Same as `qknorm bench kernel` (fused QK-RMSNorm + RoPE vs the bandwidth floor, eager, torch.compile, Liger;
attention sub-layer): see qknorm/benchmarks/kernel.py. Flags as for the CLI.

    python bench/bench_qk_norm_rope.py --out bench/results/new/   # on a GPU (EXTRA_SITE=dir adds a folder with Liger)
    python bench/bench_qk_norm_rope.py --cpu-smoke                # tiny shapes on CPU under TRITON_INTERPRET=1
"""
import sys

from qknorm.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "kernel", *sys.argv[1:]]))
