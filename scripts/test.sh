#!/usr/bin/env bash
# Run the test suite (real exports, real runtimes, small inputs). Extra arguments go to pytest,
# e.g. ./scripts/test.sh -m "not slow" or ./scripts/test.sh tests/test_zoo.py
# Two pytest-xdist workers (the machines have 2 cores; each worker keeps torch at one thread).
# 11-12 min on a shared 2-core Intel Xeon, about 1.45x that on CI's machine (Dec 2026).
# EDGEKIT_TEST_WORKERS=0 runs in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
ruff check .
# --dist loadgroup: the tests sharing the backend export Store, and each module with a
# module-scoped fixture, stay on one worker (conftest.py), so each export/fixture is built once
exec python -m pytest -q --timeout 900 -n "${EDGEKIT_TEST_WORKERS:-2}" --dist loadgroup "$@"
