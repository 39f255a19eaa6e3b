#!/usr/bin/env bash
# The demo: sets itself up on a fresh machine, then runs `r3 demo` (extra arguments go to it).
# It indexes into the `demo` gallery of the data home; galleries of your own keep their rows.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/r3 demo "$@"
