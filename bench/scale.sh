#!/usr/bin/env bash
# Scale: NODES simulated nodes and TASKS tasks against 3 real berth-servers
# on loopback (berth-sim: the nodes speak the real agent API, with no
# containers). Runs join, place, one change and failover, and ends with
#   nodes=N tasks=T tasks_per_s=X failover_ms=Y node_bytes_per_change=Z server_rss_mb=W
# Usage: bench/scale.sh NODES TASKS [berth-sim flags, see berth-sim --help]
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/setup.sh
ensure_packages kill:procps
ensure_rust
if [ $# -lt 2 ]; then
  echo "usage: bench/scale.sh NODES TASKS [berth-sim flags]" >&2
  exit 2
fi
# Each simulated node holds a connection to each server it uses, and every
# server one per node: room for both.
ulimit -n "$(( $1 * 4 + 4096 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --workspace --bins
exec target/release/berth-sim "$@"
