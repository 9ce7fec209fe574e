#!/usr/bin/env bash
# Set up edgekit from scratch on a fresh machine: a .venv with every extra and the dev tools.
# torch is installed first and pinned through constraints.txt so that nothing pulls the CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools for ARM targets: OpenSSH's server (the SSH benchmark test talks to a real sshd on
# 127.0.0.1) and QEMU user-mode emulation (`edgekit targets prepare-emulation`). Debian packages;
# needs root (or sudo). Skipped with a warning where neither is available: those tests then skip.
SYS_PKGS="openssh-server openssh-client qemu-user-static"
if ! command -v /usr/sbin/sshd >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else SUDO="none"; fi
    if [ "$SUDO" != none ] && command -v apt-get >/dev/null; then
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $SYS_PKGS >/dev/null
    else
        echo "warning: cannot install $SYS_PKGS (need apt-get and root): SSH/emulation tests will skip" >&2
    fi
fi

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
# The aarch64 environment `edgekit bench --emulate` runs artifacts in (Debian arm64 python3.11 +
# aarch64 wheels, ~110 MB once, into ~/.cache/edgekit; a no-op when already prepared).
if command -v qemu-aarch64-static >/dev/null; then
    edgekit targets prepare-emulation
fi
echo "Activate with: . .venv/bin/activate"
