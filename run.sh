#!/usr/bin/env bash
# One entry point for a fresh machine: sets up .venv (CPU PyTorch pinned, the package with its test extras),
# then runs what you ask for.
#   bash run.sh study [qknorm study options]   the main job: the QK-norm stability study on the embedded corpus
#   bash run.sh test  [pytest options]         the test suite
#   bash run.sh setup                          only the set-up
set -euo pipefail
cd "$(dirname "$0")"
VENV=${QKNORM_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import qknorm, torch, transformers, triton, matplotlib, pytest, xdist, hypothesis, tokenizers" 2>/dev/null; then
  "$PY" -m pip install -q --upgrade pip
  # the CPU build of torch 2.13.0 (on this machine's disk); a newer or unpinned torch pulls a multi-GB CUDA build
  "$PY" -m pip install -q "torch==2.13.0"
  "$PY" -m pip install -q -e ".[test]"
fi
cmd=${1:-test}
shift || true
case "$cmd" in
  setup) echo "set up: $("$PY" -c 'import torch, qknorm; print("qknorm", qknorm.__version__, "torch", torch.__version__)')" ;;
  study) exec "$VENV/bin/qknorm" study "$@" ;;
  test)  exec "$PY" -m pytest -q -n 2 --durations=15 tests "$@" ;;
  *) echo "run.sh: unknown command '$cmd' (use: study, test, setup)" >&2; exit 2 ;;
esac
