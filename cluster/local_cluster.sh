#!/usr/bin/env bash
# A Ray cluster on one machine: a head node plus N worker nodes, each declaring logical GPUs and its own custom
# resource (a "node pool": pool_head, pool_1, pool_2, ...), everything bound to 127.0.0.1 and token auth set
# the same way for every process. Use it to try multi-node placement (`clients.placement`) and
# `ray job submit` before touching a real cluster.
#
#   cluster/local_cluster.sh start [N_WORKERS]   # default 1 worker node; prints the submit address
#   cluster/local_cluster.sh stop                # stops this cluster only (not other Ray instances)
#   cluster/local_cluster.sh kill-node K         # kills worker node K at once, as a crashed machine would
#                                                # (its actors restart on the nodes left)
#
# Change with environment variables: CPUS_PER_NODE (1), GPUS_PER_NODE (2, logical), RAY_PORT (6390),
# RAY_DASHBOARD_PORT (8265), AGENT_PORT (52400: node k's dashboard agent listens on AGENT_PORT + k, so the
# nodes of this cluster and any other Ray instance on the machine do not fight over 52365), RAY_CLUSTER_DIR
# (/tmp/raypfl-cluster: the head's temp dir, worker node k uses RAY_CLUSTER_DIR-wk; keep it short, Unix socket
# paths are limited), RAY_AUTH_MODE (disabled; use `token` on shared machines, and the same value in every shell
# that talks to the cluster).
# Each node has its own temp dir, as on real machines: a node unpacking a job's working directory into a temp
# dir it shared with the head would delete the driver's copy under it.
set -euo pipefail

export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}" RAY_USAGE_STATS_ENABLED=0
port="${RAY_PORT:-6390}"
dashboard_port="${RAY_DASHBOARD_PORT:-8265}"
cpus="${CPUS_PER_NODE:-1}"
gpus="${GPUS_PER_NODE:-2}"
agent_port="${AGENT_PORT:-52400}"
dir="${RAY_CLUSTER_DIR:-/tmp/raypfl-cluster}"

case "${1:-}" in
  start)
    workers="${2:-1}"
    ray start --head --node-ip-address=127.0.0.1 --port="$port" --dashboard-host=127.0.0.1 \
      --dashboard-port="$dashboard_port" --num-cpus="$cpus" --num-gpus="$gpus" \
      --dashboard-agent-listen-port="$agent_port" --resources='{"pool_head": 1}' --temp-dir="$dir" \
      --disable-usage-stats >/dev/null
    for i in $(seq 1 "$workers"); do
      ray start --address="127.0.0.1:$port" --node-ip-address=127.0.0.1 --num-cpus="$cpus" --num-gpus="$gpus" \
        --dashboard-agent-listen-port="$((agent_port + i))" --resources="{\"pool_$i\": 1}" --temp-dir="$dir-w$i" \
        --disable-usage-stats >/dev/null
    done
    echo "Ray cluster up: head + $workers worker node(s) at 127.0.0.1:$port"
    echo "submit with: ray job submit --address http://127.0.0.1:$dashboard_port --working-dir . -- raypfl run CONFIG"
    ;;
  stop)
    # `ray stop` would stop every Ray instance of this user; this stops only the processes of this cluster.
    pkill -TERM -f -- "$dir" || true
    for _ in $(seq 1 30); do pgrep -f -- "$dir" >/dev/null || break; sleep 0.5; done
    pkill -KILL -f -- "$dir" || true
    echo "Ray cluster in $dir stopped"
    ;;
  kill-node)
    node="${2:?usage: $0 kill-node K}"
    pkill -KILL -f -- "$dir-w$node" || true
    echo "worker node $node of the cluster in $dir killed"
    ;;
  *)
    echo "usage: $0 start [N_WORKERS] | stop | kill-node K" >&2
    exit 2
    ;;
esac
