#!/usr/bin/env bash
# Node agent benchmark, side by side with runc (Debian package runc):
#  1. start latency with the image cached: `berth-agent run --rm IMAGE true`
#     versus `runc run` of an equivalent bundle, median of N each;
#  2. 100 containers started concurrently (sleep): time until all run;
#  3. memory: peak RSS of the agent command, RSS/PSS/private of each shim.
# Usage: bench/agent.sh [RUNS]   (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/setup.sh
ensure_packages runc:runc busybox:busybox-static
ensure_rust
[ -x /usr/bin/time ] || ensure_packages gnu-time-missing:time
runs=${1:-20}
bin=$(build_release)
work=$(mktemp -d /tmp/berth-bench.XXXXXX)
# Data on disk, runtime state on tmpfs under /run, as a real agent keeps them.
export BERTH_AGENT_DATA_DIR=$work/agent BERTH_AGENT_RUN_DIR=/run/berth-bench BERTH_SHIM=$bin/berth-shim \
  BERTH_CGROUP_PARENT=berth-bench
cleanup() {
  for n in $("$bin/berth-agent" ps -o json 2>/dev/null | grep -o '"name": "[^"]*"' | cut -d'"' -f4); do
    "$bin/berth-agent" rm -f "$n" >/dev/null 2>&1 || true
  done
  runc delete -f bench-runc >/dev/null 2>&1 || true
  rmdir /sys/fs/cgroup/*/berth-bench /sys/fs/cgroup/berth-bench 2>/dev/null || true
  rm -rf "$work" /run/berth-bench
}
trap cleanup EXIT

image=$("$bin/berth-image" "$work/layout" bench)
"$bin/berth-agent" image pull "$image" >/dev/null
"$bin/berth-agent" run --rm "$image" true   # warm caches

# A runc bundle with the same root filesystem (the unpacked layer).
mkdir -p "$work/bundle/rootfs"
cp -a "$work"/agent/images/layers/sha256/*/. "$work/bundle/rootfs/"
(cd "$work/bundle" && runc spec && sed -i 's/"sh"/"true"/; s/"terminal": true/"terminal": false/' config.json)

ms() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
berth=() runc_t=()
# A pause before each start lets the kernel settle (the first cgroup
# attach after a quiet spell waits for an RCU grace period; one right
# after another start does not), so neither side rides on the other's.
for ((i = 0; i < runs; i++)); do
  sleep 0.2; t0=$(ms); "$bin/berth-agent" run --rm "$image" true; t1=$(ms)
  berth+=($(((t1 - t0) / 1000)))
  sleep 0.2; t0=$(ms); runc run --bundle "$work/bundle" bench-runc >/dev/null; t1=$(ms)
  runc_t+=($(((t1 - t0) / 1000)))
done
b=$(printf '%s\n' "${berth[@]}" | median); r=$(printf '%s\n' "${runc_t[@]}" | median)
echo "start latency (median of $runs, us): berth-agent run --rm $b, runc run $r, ratio $(awk -v b="$b" -v r="$r" 'BEGIN{printf "%.2f", b/r}')"
# This shared VM's speed drifts from second to second; each berth run and
# the runc run right after it see the same conditions, so the median of
# their ratios is the steadier figure.
pairs=$(for ((i = 0; i < runs; i++)); do awk -v b="${berth[i]}" -v r="${runc_t[i]}" 'BEGIN{print b/r}'; done | median)
echo "start latency, median of $runs paired ratios berth/runc: $(awk -v p="$pairs" 'BEGIN{printf "%.2f", p}')"

# 100 containers at once.
t0=$(ms)
seq 1 100 | xargs -P 100 -I{} "$bin/berth-agent" run -d --name s{} "$image" sleep 600 >/dev/null
while [ "$("$bin/berth-agent" ps -o json | grep -c '"state": "running"')" -lt 100 ]; do sleep 0.01; done
t1=$(ms)
echo "100 concurrent starts until all running: $(((t1 - t0) / 1000000)) ms"
peak=$( { /usr/bin/time -f %M "$bin/berth-agent" run -d --name s101 "$image" sleep 600 >/dev/null; } 2>&1 | tail -1)
ps_peak=$( { /usr/bin/time -f %M "$bin/berth-agent" ps >/dev/null; } 2>&1 | tail -1)
echo "berth-agent peak RSS: run -d ${peak} KiB, ps with 101 containers ${ps_peak} KiB"
# Each shim has exec'd into berth-monitor by now (same pid). RSS counts
# shared library pages in full; PSS shares them out; private is the shim's own.
rss=0 pss=0 priv=0 max=0 n=0
for pid in $(pgrep -f "$bin/berth-monitor"); do
  r=$(awk '/^VmRSS/ {print $2}' /proc/$pid/status)
  rss=$((rss + r)); ((r > max)) && max=$r
  pss=$((pss + $(awk '/^Pss:/ {print $2}' /proc/$pid/smaps_rollup)))
  priv=$((priv + $(awk '/^Private_(Clean|Dirty):/ {s += $2} END {print s}' /proc/$pid/smaps_rollup)))
  n=$((n + 1))
done
echo "shims: $n, RSS mean $((rss / n)) KiB max $max KiB, PSS mean $((pss / n)) KiB, private mean $((priv / n)) KiB"
