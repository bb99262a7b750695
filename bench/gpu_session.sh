#!/usr/bin/env bash
# The prepared device-machine session: everything a GPU has to measure or check, in one command, under $OUT.
#
#   bash bench/gpu_session.sh                # = tests kernel train, ~9 min on an H200 (fits one 600 s call)
#   bash bench/gpu_session.sh study          # optional, a second call if device time is left: the GPU study
#   bash bench/gpu_session.sh tests kernel   # any subset of the stages, in order
#   SMOKE=1 PY=.venv/bin/python bash bench/gpu_session.sh   # the same stages on CPU (interpreter, --cpu-smoke)
#
# Stages and what each leaves in $OUT (flat: the device tool returns at most 8 files, 2 folders down):
#   tests   gpu_tests.log    pytest -m gpu -n 12 tests (the kernel matrix vs float64, every preset triton
#                            vs torch, patch_hf vs transformers, fullgraph torch.compile); SMOKE: the CPU subset
#   kernel  qk_norm_rope.{json,md}   qknorm bench kernel --nshapes 2 (the acceptance shape, head and full)
#   train   train_step.{json,md}     qknorm bench train: hf_compile, ours_compile, ours_compile_noqk first (the
#                            acceptance pair and QK-norm's cost), then hf_liger, hf, ours, hf_compile_noqk; results
#                            are written after every variant, so a stage cut by its timeout keeps what it measured
#   study   study.tgz        qknorm study --device cuda within ${MAX_MIN:-4.5} minutes
#   always  env.txt (date, GPU, driver, versions, git commit), session.log (everything printed)
# Liger-Kernel: not on the device image; put its wheel in .whl/ and carry .whl (see bench/README.md):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl liger-kernel==0.8.5
# Timeouts per stage (seconds): TESTS_S=150 KERNEL_S=150 TRAIN_S=260 (560 in all) STUDY_S=330.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/qknorm_gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests kernel train)
for s in "${stages[@]}"; do
  case "$s" in tests|kernel|train|study) ;; *) echo "gpu_session.sh: unknown stage '$s' (tests, kernel, train, study)" >&2; exit 2 ;; esac
done
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export EXTRA_SITE=/tmp/site PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
LOG="$OUT/session.log"
{ date -u +%Y-%m-%dT%H:%M:%SZ; echo "stages: ${stages[*]}${SMOKE:+ (SMOKE: CPU dry run)}"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
  "$PY" -c 'import sys, torch, triton, transformers; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.version.cuda, "triton", triton.__version__, "transformers", transformers.__version__)'
  "$PY" -c 'import liger_kernel, importlib.metadata as m; print("liger_kernel", m.version("liger_kernel"))' 2>/dev/null \
    || echo "liger_kernel: not installed (no .whl/); the Liger rows will be missing"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" | tee "$LOG"
status=0

run_stage() {  # name timeout log command...: run, tee into session.log and log, remember a failure
  local name=$1 secs=$2 log=$3; shift 3
  echo "== $name (timeout ${secs}s): $*" | tee -a "$LOG" "$log"
  local t0=$SECONDS
  timeout "$secs" "$@" 2>&1 | tee -a "$LOG" "$log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG" "$log"
  [ "$rc" -eq 0 ] || status=1
}

for s in "${stages[@]}"; do
  case "$s" in
    tests)
      if [ -n "${SMOKE:-}" ]; then sel=(tests/ops/test_gpu_matrix.py tests/ops/test_gpu_models.py); else
        sel=(-m gpu -n 12 tests); fi
      cat "$OUT/env.txt" > "$OUT/gpu_tests.log"
      run_stage tests "${TESTS_S:-150}" "$OUT/gpu_tests.log" \
        "$PY" -m pytest -v -rfEs -p no:cacheprovider --durations=15 "${sel[@]}"
      ;;
    kernel)
      if [ -n "${SMOKE:-}" ]; then kflags=(--cpu-smoke); else kflags=(--nshapes 2); fi
      run_stage kernel "${KERNEL_S:-150}" /dev/null "$PY" -m qknorm bench kernel --out "$OUT" --force "${kflags[@]}"
      ;;
    train)
      if [ -n "${SMOKE:-}" ]; then tflags=(--cpu-smoke); else
        tflags=(--variants hf_compile,ours_compile,ours_compile_noqk,hf_liger,hf,ours,hf_compile_noqk); fi
      run_stage train "${TRAIN_S:-260}" /dev/null "$PY" -m qknorm bench train --out "$OUT" --force "${tflags[@]}"
      ;;
    study)
      if [ -n "${SMOKE:-}" ]; then sflags=(--profile smoke --device cpu); else
        sflags=(--device cuda --max-minutes "${MAX_MIN:-4.5}" ${STUDY_ARGS:-}); fi
      run_stage study "${STUDY_S:-330}" /dev/null "$PY" -m qknorm study --out "$OUT/study" --force "${sflags[@]}"
      tar -C "$OUT" -czf "$OUT/study.tgz" study && rm -rf "$OUT/study"
      ;;
  esac
done
echo "== done; files in $OUT:" | tee -a "$LOG"
ls -la "$OUT" | tee -a "$LOG"
exit $status
