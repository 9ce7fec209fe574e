#!/usr/bin/env bash
# Run the test suite (real exports, real runtimes, small inputs). Extra arguments go to pytest,
# e.g. ./scripts/test.sh -m "not slow" or ./scripts/test.sh tests/test_zoo.py
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
ruff check .
exec python -m pytest -q --timeout 900 "$@"
