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
# OLMo-core 3.0, the reference tests/interop/test_olmo_core*.py compare against (the "peers" extra), for `test`
# and `setup`. Not its full dependency set (pandas, httpx, cloud-SDK helpers its model code never imports): exactly
# what importing its model, HF-export and checkpoint modules needs (cached-path imports the boto3 and
# google-cloud-storage clients at import time), pinned, with --no-deps so torch and transformers stay as they are.
PEERS=(ai2-olmo-core==3.0.0 cached-path==1.8.10 dataclass-extensions==0.5.0 bettermap==1.3.1 dill==0.4.1
       requests==2.34.2 urllib3==2.8.0 certifi==2026.10.19.post1 charset-normalizer==3.5.3
       boto3==1.44.8 botocore==1.44.8 s3transfer==0.19.3 jmespath==1.1.0
       google-cloud-storage==3.17.1 google-cloud-core==2.8.0 google-api-core==2.44.0 google-auth==2.63.0
       googleapis-common-protos==1.76.0 protobuf==7.36.2 cryptography==50.0.2 cffi==2.1.1)
# Ray, the "ray" extra, for `test` and `setup` (tests/study/test_ray_backend.py; `qknorm study --backend ray`),
# pinned to the version the tests ran with; installed before the peers, whose exact pins then win (--no-deps).
RAY=("ray[client]==2.60.0" grpcio==1.85.3)
installed() {  # every name==pin present (package metadata only: ~0.1 s, no import)
  "$PY" - "$@" <<'PYEOF' 2>/dev/null
import re, sys
from importlib.metadata import version
sys.exit(any(version(re.sub(r"\[.*\]", "", name)) != pin for name, _, pin in (s.partition("==") for s in sys.argv[1:])))
PYEOF
}
if [ "${1:-test}" != study ] && ! installed "${RAY[@]}"; then
  "$PY" -m pip install -q "${RAY[@]}"
fi
# TensorBoard, the "tensorboard" extra, for `test` and `setup` (tests/train/test_tensorboard.py; --tensorboard),
# pinned to the version the tests ran with (its dependencies: markdown, werkzeug, absl-py, tensorboard-data-server).
TENSORBOARD=(tensorboard==2.21.0)
if [ "${1:-test}" != study ] && ! installed "${TENSORBOARD[@]}"; then
  "$PY" -m pip install -q "${TENSORBOARD[@]}"
fi
if [ "${1:-test}" != study ] && ! installed "${PEERS[@]}"; then
  "$PY" -m pip install -q --no-deps "${PEERS[@]}"
fi
cmd=${1:-test}
shift || true
case "$cmd" in
  setup) echo "set up: $("$PY" -c 'import torch, qknorm; print("qknorm", qknorm.__version__, "torch", torch.__version__)')" ;;
  study) exec "$VENV/bin/qknorm" study "$@" ;;
  test)  exec "$PY" -m pytest -q -n 2 --dist loadgroup --durations=15 tests "$@" ;;
  *) echo "run.sh: unknown command '$cmd' (use: study, test, setup)" >&2; exit 2 ;;
esac
