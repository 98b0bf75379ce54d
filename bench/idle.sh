#!/usr/bin/env bash
# What a local cluster costs at rest: 3 servers and 3 agents with the demo
# running (deploy/local-cluster.sh), nothing else happening. Samples each
# berth process's CPU time (its own and its reaped children's: a helper it
# runs counts) over SECONDS, and its memory at the end: RSS, and PSS
# (shared pages split between the processes that map them, so three
# servers' code counts once).
#
#   bench/idle.sh [SECONDS]    (default 60)
#
# Uses the cluster that is up, or brings one up (and down again after),
# and lets it settle for 20 s first. BERTH_LOCAL_BIN=DIR brings it up
# with the binaries in DIR (another build's target/berth, to compare). Ends with one line:
#   idle: cpu_pct=X rss_mb=Y pss_mb=Z (servers and agents) monitors_cpu_pct=.. monitors_pss_mb=..
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
DIR=${BERTH_LOCAL_DIR:-/tmp/berth-local}
export BERTH_LOCAL_DIR=$DIR
if [ ! -f "$DIR/size" ]; then
  deploy/local-cluster.sh up >/dev/null 2>"$DIR.up.log" || { cat "$DIR.up.log" >&2; exit 1; }
  trap 'deploy/local-cluster.sh down >/dev/null' EXIT
fi
sleep 20

tck=$(getconf CLK_TCK)
# cpu PID: its CPU ticks, with its reaped children's.
cpu() { awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/$3" 2>/dev/null || echo 0; }

declare -A group
for f in "$DIR"/server-*.pid; do group[$(cat "$f")]=servers; done
for f in "$DIR"/agent-*.pid; do group[$(cat "$f")]=agents; done
for p in $(pgrep -x berth-monitor || true); do group[$p]=monitors; done

declare -A before
for p in "${!group[@]}"; do before[$p]=$(cpu "$p"); done
sleep "$seconds"
report=$(for p in "${!group[@]}"; do
  [ -d "/proc/$p" ] || { echo "process $p (${group[$p]}) ended during the sample" >&2; exit 1; }
  echo "${group[$p]} $p $(($(cpu "$p") - before[$p])) $(kb "$p" VmRSS status) $(kb "$p" Pss smaps_rollup)"
done | sort)
echo "$report" | awk -v tck="$tck" -v s="$seconds" '
  { n[$1]++; c[$1] += $3; r[$1] += $4; q[$1] += $5 }
  END {
    for (g in n) printf "%-8s %d processes: CPU %.2f%% of a core, RSS %.1f MB, PSS %.1f MB\n", g, n[g], 100 * c[g] / tck / s, r[g] / 1024, q[g] / 1024
    printf "idle: cpu_pct=%.2f rss_mb=%.1f pss_mb=%.1f monitors_cpu_pct=%.2f monitors_pss_mb=%.1f\n",
      100 * (c["servers"] + c["agents"]) / tck / s, (r["servers"] + r["agents"]) / 1024, (q["servers"] + q["agents"]) / 1024,
      100 * c["monitors"] / tck / s, q["monitors"] / 1024
  }'
