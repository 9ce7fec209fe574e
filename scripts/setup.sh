#!/usr/bin/env bash
# Set up edgekit from scratch on a fresh machine: a .venv with every extra and the dev tools.
# torch is installed first and pinned through constraints.txt so that nothing pulls the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install --quiet --upgrade pip wheel setuptools
python -m pip install --quiet -c constraints.txt "torch==2.13.0"
python -m pip install --quiet -c constraints.txt -e ".[all,dev]"
python - <<'PY'
import torch, edgekit
assert "+cpu" in torch.__version__ or not torch.cuda.is_available(), torch.__version__
print(f"edgekit {edgekit.__version__} ready: torch {torch.__version__}")
PY
echo "Activate with: . .venv/bin/activate"
