#!/usr/bin/env bash
# A local Prefect server (API + UI) on 127.0.0.1, started in the background and stopped by its PID.
#
#   bash scripts/prefect-server.sh start [PORT]   # PORT default: R3_SERVER_PORT, else a free port; prints the UI URL
#   bash scripts/prefect-server.sh stop           # stops the server this script started (its PID only)
#   bash scripts/prefect-server.sh status         # prints the URL and exits 0 when it answers, else exits 1
#   bash scripts/prefect-server.sh url            # prints the UI URL of the running server
#
# State (PID, port, log) lives in R3_SERVER_DIR (default: $TMPDIR/r3-prefect-server-$UID).
# The server's database lives under PREFECT_HOME, as usual for Prefect.
# Then: export PREFECT_API_URL=$(bash scripts/prefect-server.sh url)/api
set -euo pipefail
cd "$(dirname "$0")/.."

state_dir=${R3_SERVER_DIR:-${TMPDIR:-/tmp}/r3-prefect-server-$(id -u)}
pid_file=$state_dir/server.pid
port_file=$state_dir/server.port
log_file=$state_dir/server.log
timeout_s=${R3_SERVER_START_TIMEOUT:-120}

if [ -x .venv/bin/prefect ]; then
  prefect_bin=.venv/bin/prefect
  python_bin=.venv/bin/python
else
  prefect_bin=$(command -v prefect || true)
  python_bin=$(command -v python3 || command -v python)
fi

running_pid() {
  # The PID in the file, if that process is still alive.
  [ -f "$pid_file" ] || return 1
  local pid
  pid=$(cat "$pid_file")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

url() {
  echo "http://127.0.0.1:$(cat "$port_file")"
}

healthy() {
  "$python_bin" - "$(url)/api/health" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except OSError:
    sys.exit(1)
EOF
}

start() {
  if pid=$(running_pid); then
    echo "prefect server already running (pid $pid) at $(url)" >&2
    url
    return 0
  fi
  [ -n "$prefect_bin" ] || { echo "prefect is not installed: run scripts/setup.sh" >&2; exit 1; }
  mkdir -p "$state_dir"
  local port=${1:-${R3_SERVER_PORT:-}}
  if [ -z "$port" ]; then
    port=$("$python_bin" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  fi
  echo "$port" > "$port_file"
  # Offline machines: telemetry would only log an error on every loop. The UI must be told the
  # API's port, or it calls the default 4200.
  PREFECT_SERVER_ANALYTICS_ENABLED=${PREFECT_SERVER_ANALYTICS_ENABLED:-false} \
  PREFECT_SERVER_API_HOST=127.0.0.1 PREFECT_SERVER_API_PORT=$port \
  PREFECT_UI_API_URL=http://127.0.0.1:$port/api \
    nohup "$prefect_bin" server start --host 127.0.0.1 --port "$port" > "$log_file" 2>&1 < /dev/null &
  echo $! > "$pid_file"
  local deadline=$((SECONDS + timeout_s))
  until healthy; do
    if ! running_pid > /dev/null; then
      echo "prefect server exited while starting; its log ($log_file):" >&2
      tail -n 30 "$log_file" >&2
      rm -f "$pid_file"
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "prefect server did not answer within ${timeout_s}s; stopping it. Log: $log_file" >&2
      stop
      exit 1
    fi
    sleep 0.5
  done
  echo "prefect server (pid $(cat "$pid_file")) at $(url); log: $log_file" >&2
  url
}

stop() {
  local pid
  if ! pid=$(running_pid); then
    echo "no prefect server started by this script is running" >&2
    rm -f "$pid_file"
    return 0
  fi
  kill -TERM "$pid"
  # The server ends its web process and services on SIGTERM; give it time, then insist.
  for _ in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    sleep 2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pid_file"
  echo "prefect server (pid $pid) stopped" >&2
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  status)
    if running_pid > /dev/null && healthy; then url; else echo "not running" >&2; exit 1; fi ;;
  url) [ -f "$port_file" ] || { echo "never started" >&2; exit 1; }; url ;;
  *) echo "usage: $0 start [PORT] | stop | status | url" >&2; exit 2 ;;
esac
