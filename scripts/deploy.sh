#!/usr/bin/env bash
# Registers r3's deployments on the Prefect server at PREFECT_API_URL (see README, "Scheduled refreshes").
#   R3DEPLOY_GALLERY   folder or manifest to keep indexed      (required)
#   R3DEPLOY_CRON  cron of the refresh                (default: hourly)
#   R3DEPLOY_PRESET    model preset                           (default: offline)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${R3DEPLOY_GALLERY:?set R3DEPLOY_GALLERY to the gallery folder or manifest to keep indexed}"
export R3DEPLOY_GALLERY=$(realpath "$R3DEPLOY_GALLERY")
export R3DEPLOY_CRON=${R3DEPLOY_CRON:-"0 * * * *"}
export R3DEPLOY_PRESET=${R3DEPLOY_PRESET:-offline}
export R3DEPLOY_PROJECT_DIR=$(pwd)
.venv/bin/prefect work-pool inspect r3-local >/dev/null 2>&1 || .venv/bin/prefect work-pool create r3-local --type process
exec .venv/bin/prefect --no-prompt deploy --prefect-file deployments/prefect.yaml --all
