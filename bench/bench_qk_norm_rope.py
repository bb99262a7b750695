"""QK-RMSNorm + RoPE kernel benchmark (ours vs eager, torch.compile, Liger, the bandwidth floor; attention
sub-layer overhead): see qknorm/benchmarks/kernel.py. Same as `qknorm bench kernel`.

    python bench/bench_qk_norm_rope.py --out bench/results/   # on a GPU (EXTRA_SITE=dir adds a folder with Liger)
    python bench/bench_qk_norm_rope.py --cpu-smoke            # tiny shapes on CPU under TRITON_INTERPRET=1
"""
import sys

from qknorm.benchmarks.kernel import main

if __name__ == "__main__":
    sys.exit(main())
