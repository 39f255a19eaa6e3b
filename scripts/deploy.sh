#!/usr/bin/env bash
# Registers r3's deployments on the Prefect server at PREFECT_API_URL (docs/operations.md).
#   R3DEPLOY_GALLERY   folder or manifest to keep indexed      (required)
#   R3DEPLOY_CRON  cron of the refresh                (default: hourly)
#   R3DEPLOY_PRESET    model preset                           (default: offline)
#   R3DEPLOY_GALLERY_NAME      gallery name                   (default: default)
#   R3DEPLOY_STANDING_QUERIES  queries file re-run after each refresh (default: standing-queries.jsonl in the data home)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${R3DEPLOY_GALLERY:?set R3DEPLOY_GALLERY to the gallery folder or manifest to keep indexed}"
export R3DEPLOY_GALLERY=$(realpath "$R3DEPLOY_GALLERY")
export R3DEPLOY_CRON=${R3DEPLOY_CRON:-"0 * * * *"}
export R3DEPLOY_PRESET=${R3DEPLOY_PRESET:-offline}
export R3DEPLOY_GALLERY_NAME=${R3DEPLOY_GALLERY_NAME:-default}
export R3DEPLOY_STANDING_QUERIES=${R3DEPLOY_STANDING_QUERIES:-${R3_HOME:-$HOME/.local/share/r3}/standing-queries.jsonl}
export R3DEPLOY_PROJECT_DIR=$(pwd)
prefect_bin=${R3DEPLOY_PREFECT:-.venv/bin/prefect}
[ -x "$prefect_bin" ] || prefect_bin=$(command -v prefect)
"$prefect_bin" work-pool inspect r3-local >/dev/null 2>&1 || "$prefect_bin" work-pool create r3-local --type process
exec "$prefect_bin" --no-prompt deploy --prefect-file deployments/prefect.yaml --all
