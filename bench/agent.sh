#!/usr/bin/env bash
# Node agent benchmark, side by side with runc (Debian package runc):
#  1. start latency and CPU per start with the image cached,
#     `berth-agent run --rm IMAGE true` against `runc run` of a bundle with
#     the same root filesystem, for two images: the one berth-image writes
#     (an OCI layout), and one built by other tools as a user would (umoci
#     with Debian's busybox-static in one layer, pushed by skopeo to a
#     docker-registry, pulled by reference). Each pair runs back to back and
#     with a 0.2 s pause before each start (bench/start_latency.py: A and B
#     in turn, wall and CPU of each whole process tree);
#     The cost of a user namespace of its own (`--userns auto`: the
#     namespace made, the layers idmapped) is the same pair with and
#     without it, for both images;
#  2. 100 containers started concurrently (sleep): time until all run;
#  3. memory: peak RSS of the agent command, RSS/PSS/private of each shim.
# Usage: bench/agent.sh [RUNS]   (as root). Ends with one line per ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/setup.sh
. bench/lib.sh
ensure_packages runc:runc busybox:busybox-static umoci:umoci skopeo:skopeo docker-registry:docker-registry \
  python3:python3
ensure_rust
[ -x /usr/bin/time ] || ensure_packages gnu-time-missing:time
runs=${1:-20}
bin=$(build_release)
work=$(mktemp -d /tmp/berth-bench.XXXXXX)
# Data on disk, runtime state on tmpfs under /run, as a real agent keeps them.
export BERTH_AGENT_DATA_DIR=$work/agent BERTH_AGENT_RUN_DIR=/run/berth-bench BERTH_SHIM=$bin/berth-shim \
  BERTH_CGROUP_PARENT=berth-bench BERTH_REGISTRIES=$work/registries.toml
registry_pid=
cleanup() {
  for n in $("$bin/berth-agent" ps -o json 2>/dev/null | grep -o '"name": "[^"]*"' | cut -d'"' -f4); do
    "$bin/berth-agent" rm -f "$n" >/dev/null 2>&1 || true
  done
  [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null || true
  runc delete -f bench-runc >/dev/null 2>&1 || true
  rmdir /sys/fs/cgroup/*/berth-bench /sys/fs/cgroup/berth-bench 2>/dev/null || true
  rm -rf "$work" /run/berth-bench
}
trap cleanup EXIT

# The tests' own image, as an OCI layout.
own=$("$bin/berth-image" "$work/layout" bench)

# An image made elsewhere: umoci builds it, skopeo pushes it to a registry.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
  "$work/registry" "$port" >"$work/registry.yml"
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
printf '[[registry]]\nhost = "127.0.0.1:%s"\ninsecure = true\n' "$port" >"$BERTH_REGISTRIES"
other=127.0.0.1:$port/umoci/busybox:1
python3 -c 'import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close(); break
    except OSError:
        time.sleep(0.1)' "$port"
umoci_busybox "$work" "$other" sh true echo sleep

# A runc bundle with the same root filesystem as each image (its unpacked layer).
bundle() { # IMAGE DIR
  "$bin/berth-agent" image pull "$1" >/dev/null
  "$bin/berth-agent" run --rm "$1" true # warm caches
  local layer
  layer=$("$bin/berth-agent" image ls -o json | python3 -c "import json,sys; \
    print([i['layers'][0] for i in json.load(sys.stdin) if i['reference'] == sys.argv[1]][0].split(':')[1])" "$1")
  mkdir -p "$2/rootfs"
  cp -a "$BERTH_AGENT_DATA_DIR/images/layers/sha256/$layer/." "$2/rootfs/"
  (cd "$2" && runc spec && sed -i 's/"sh"/"true"/; s/"terminal": true/"terminal": false/' config.json)
}
bundle "$own" "$work/bundle-own"
bundle "$other" "$work/bundle-other"

# A pause before each start lets the kernel settle (the first cgroup attach
# after a quiet spell waits for an RCU grace period; one right after
# another start does not): both modes are measured, each pair in turn.
lines=()
for image in own other; do
  ref=$own bundle_dir=$work/bundle-own
  [ "$image" = other ] && ref=$other bundle_dir=$work/bundle-other
  for pause in 0 0.2; do
    out=$(python3 bench/start_latency.py --runs "$runs" --pause "$pause" "berth-$image" runc -- \
      "$bin/berth-agent" run --rm "$ref" true ::: runc run --bundle "$bundle_dir" bench-runc)
    echo "$out" | head -2
    lines+=("$(echo "$out" | tail -1)")
  done
done

# A user namespace of its own against none, same image, same agent.
for image in own other; do
  ref=$own
  [ "$image" = other ] && ref=$other
  out=$(python3 bench/start_latency.py --runs "$runs" --pause 0.2 "userns-$image" "plain-$image" -- \
    "$bin/berth-agent" run --rm --userns auto "$ref" true ::: "$bin/berth-agent" run --rm "$ref" true)
  echo "$out" | head -2
  lines+=("$(echo "$out" | tail -1)")
done

# 100 containers at once.
t0=$(ms)
seq 1 100 | xargs -P 100 -I{} "$bin/berth-agent" run -d --name s{} "$own" sleep 600 >/dev/null
while [ "$("$bin/berth-agent" ps -o json | grep -c '"state": "running"')" -lt 100 ]; do sleep 0.01; done
t1=$(ms)
echo "100 concurrent starts until all running: $(((t1 - t0) / 1000000)) ms"
peak=$( { /usr/bin/time -f %M "$bin/berth-agent" run -d --name s101 "$own" sleep 600 >/dev/null; } 2>&1 | tail -1)
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
echo "start latency and CPU per start against runc, and with a user namespace against without (ratios A/B; paired: median of pair-by-pair ratios):"
printf '%s\n' "${lines[@]}"
