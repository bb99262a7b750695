#!/usr/bin/env bash
# The prepared device-machine checks, one stage a call (see bench/README.md). Writes under $OUT:
#   bash bench/gpu_session.sh bench   GPU-marked tests, `qknorm bench kernel`, `qknorm bench train` (~8 min)
#   bash bench/gpu_session.sh study   `qknorm study --device cuda` (the GPU protocol, ~4-5 min)
# SMOKE=1 runs the same commands at CPU smoke sizes (checks the script itself on a machine without a GPU).
# Liger-Kernel is used when its wheel lies in .whl/ (pure Python; installed to /tmp/site, never over torch).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/qknorm_gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
stage=${1:?usage: gpu_session.sh bench|study}
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export EXTRA_SITE=/tmp/site
fi
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
  "$PY" -c 'import torch, triton, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda,
"triton", triton.__version__, "transformers", transformers.__version__)'; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

case "$stage" in
  bench)
    if [ -n "${SMOKE:-}" ]; then kflags="--cpu-smoke"; tflags="--cpu-smoke"; else
      kflags="--nshapes 2"; tflags="--variants hf,hf_compile,hf_liger,ours_compile,ours_compile_noqk"; fi
    echo "== GPU-marked tests"
    timeout 60 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/ops 2>&1 | tail -15 | tee "$OUT/gpu_tests.log"
    echo "== kernel benchmark"
    timeout 170 "$PY" -m qknorm bench kernel --out "$OUT/kernel" $kflags 2>&1 | tee "$OUT/kernel.log" | grep -v '^{'
    echo "== training-step benchmark"
    PYTHONPATH="$PYTHONPATH${EXTRA_SITE:+:$EXTRA_SITE}" timeout 270 "$PY" -m qknorm bench train --out "$OUT/train" \
      $tflags 2>&1 | tee "$OUT/train.log"
    ;;
  study)
    if [ -n "${SMOKE:-}" ]; then sflags="--profile smoke --device cpu"; else sflags="--device cuda --max-minutes ${MAX_MIN:-4.5} ${STUDY_ARGS:-}"; fi
    timeout ${STUDY_TIMEOUT:-330} "$PY" -m qknorm study --out "$OUT/study" --force $sflags 2>&1 | tee "$OUT/study.log"
    tar -C "$OUT" -czf "$OUT/study.tgz" study && rm -rf "$OUT/study"
    ;;
  *) echo "unknown stage $stage (bench|study)" >&2; exit 2 ;;
esac
