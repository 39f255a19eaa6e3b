#!/usr/bin/env bash
# The test suite: sets itself up on a fresh machine, then runs pytest (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/python -m pytest --durations=15 "$@"
