#!/usr/bin/env bash
# Partitions of the local cluster (deploy/local-cluster.sh, brought up if
# it is not): two writers store configs through berthctl while host 3's
# link is cut for 12 s, then host 2's for 10 s, each healed after. Per
# cut it reports the Raft elections (the term's rise), whether the leader
# changed, the writes acknowledged and the longest time between two of
# them, from a moment before the cut to 5 s after the heal.
#   bench/partition.sh [CUT_SECONDS...]   (default: 12 10)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${BERTH_LOCAL_DIR:-/tmp/berth-local}
[ -f "$DIR/size" ] || deploy/local-cluster.sh up > /dev/null
BIN=$PWD/target/berth
export BERTH_CONFIG=$DIR/server-1/admin.conf
export BERTH_SERVER=198.18.0.1:7400,198.18.0.2:7400,198.18.0.3:7400
cuts=("$@")
((${#cuts[@]})) || cuts=(12 10)

work=$(mktemp -d)
writers=()
trap 'kill "${writers[@]}" 2> /dev/null || true; ip link set blh3 up; ip link set blh2 up; rm -rf "$work"' EXIT
echo value > "$work/value"

# term LEADER_ID: the leader's view, from whichever server answers.
raft() { "$BIN/berthctl" cluster status -o json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["term"], s.get("leader_id"))'; }

for w in 1 2; do
  (
    n=0
    while :; do
      n=$((n + 1))
      if "$BIN/berthctl" config create "part-$$-$w-$n" "$work/value" > /dev/null 2>&1; then
        date +%s%N >> "$work/acks"
      fi
    done
  ) &
  writers+=($!)
done
sleep 3

host=3
echo "| cut | seconds | term before -> after | elections | leader before -> after | writes acked | longest write stall |"
echo "|---|---|---|---|---|---|---|"
for seconds in "${cuts[@]}"; do
  read -r term0 leader0 < <(raft)
  from=$(date +%s%N)
  sleep 1
  ip link set "blh$host" down
  sleep "$seconds"
  ip link set "blh$host" up
  sleep 5
  to=$(date +%s%N)
  read -r term1 leader1 < <(raft)
  stats=$(sort -n "$work/acks" | awk -v from="$from" -v to="$to" '
    $1 >= from && $1 <= to { n++; if (last) { gap = $1 - last; if (gap > max) max = gap } else { max = $1 - from }; last = $1 }
    END { if (last) { tail = to - last; if (tail > max) max = tail } else { max = to - from }; printf "%d | %.0f ms", n, max / 1e6 }')
  echo "| host$host | $seconds | $term0 -> $term1 | $((term1 - term0)) | $leader0 -> $leader1 | $stats |"
  host=$((host - 1))
  ((host >= 2)) || host=3
  sleep 2
done
