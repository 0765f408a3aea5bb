#!/usr/bin/env bash
# An MLflow tracking server for runs and sweeps that span several processes or nodes: SQLite backend, artifacts
# on local disk, bound to 127.0.0.1 unless you say otherwise, one worker (healthy in ~14 s).
#
#   cluster/mlflow_server.sh start   # then: export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
#   cluster/mlflow_server.sh stop
#
# Change with environment variables: MLFLOW_HOST (127.0.0.1; 0.0.0.0 only on a trusted network, so that worker
# nodes can reach it), MLFLOW_PORT (5000), MLFLOW_DIR (./mlflow-server: database, artifacts, pid and log).
set -euo pipefail

host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
dir="$(mkdir -p "${MLFLOW_DIR:-mlflow-server}" && cd "${MLFLOW_DIR:-mlflow-server}" && pwd)"

case "${1:-}" in
  start)
    setsid nohup mlflow server --backend-store-uri "sqlite:///$dir/mlflow.db" --artifacts-destination "$dir/artifacts" \
      --host "$host" --port "$port" --workers 1 >"$dir/server.log" 2>&1 &
    echo $! >"$dir/server.pid"
    for _ in $(seq 1 60); do
      if curl -fs "http://$host:$port/health" >/dev/null 2>&1; then
        echo "MLflow at http://$host:$port (export MLFLOW_TRACKING_URI=http://$host:$port)"
        exit 0
      fi
      sleep 1
    done
    echo "MLflow did not come up; see $dir/server.log" >&2
    exit 1
    ;;
  stop)
    if [ -f "$dir/server.pid" ]; then
      group="$(cat "$dir/server.pid")"  # the server leads its own process group (setsid): its workers go too
      kill -TERM -- "-$group" 2>/dev/null || true
      for _ in $(seq 1 20); do kill -0 -- "-$group" 2>/dev/null || break; sleep 0.5; done
      kill -KILL -- "-$group" 2>/dev/null || true
      rm -f "$dir/server.pid"
    fi
    echo "MLflow server stopped"
    ;;
  *)
    echo "usage: $0 start | stop" >&2
    exit 2
    ;;
esac
