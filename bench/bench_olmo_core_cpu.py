"""Our model vs OLMo-core's on CPU: the same forward+backward step, the same model and weights
(qknorm.benchmarks.olmo_core_cpu; needs the `peers` extra: pip install -e '.[peers]').

    python bench/bench_olmo_core_cpu.py                       # writes bench/results/olmo_core_cpu_<date>.md
    python bench/bench_olmo_core_cpu.py --families olmo2 --rounds 5 --no-write
"""
import sys

from qknorm.benchmarks.olmo_core_cpu import main

if __name__ == "__main__":
    sys.exit(main())
