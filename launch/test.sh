#!/usr/bin/env bash
# Quickstart 2: set up (with the test extras), then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
SETUP_EXTRAS=test bash launch/setup.sh
# The open_clip/PyTorch reference environment for parity tests (a separate venv, see there).
bash launch/setup_open_clip.sh
source launch/env.sh
# Two workers, whole files per worker (module-scoped compiled fixtures stay shared): most tests
# are compile-bound and single-threaded, so this uses both cores.
.venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
