#!/usr/bin/env bash
# Rollout benchmark, berth side by side with Docker Swarm on this one
# machine (one node, image already local), as issue 17 asks:
#   1. a 20-replica service with an exec health check (every 1 s, one
#      retry) is updated (a new env var), 2 tasks at a time, start-first,
#      health-gated, monitor 2 s: time until the CLI says it converged;
#   2. the same service updated to an image that is not in the registry,
#      failure action rollback: time until the CLI says it rolled back.
# Both CLIs wait on their own (berthctl service update, docker service
# update without --detach), so each figure is what a user waits for.
# Usage: [BENCH_IMAGE=umoci] bench/rollout.sh [RUNS]   (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/setup.sh
. bench/lib.sh
ensure_packages docker-registry:docker-registry busybox:busybox-static dockerd:docker.io curl:curl python3:python3 \
  ip:iproute2 iptables:iptables umoci:umoci skopeo:skopeo
ensure_rust
runs=${1:-3}
bin=$(build_release)
work=$(mktemp -d /tmp/berth-rollout.XXXXXX)
CMD="touch /tmp/ok; trap 'exit 0' TERM; while true; do sleep 1; done"
pids=()
cleanup() {
  docker service rm web >/dev/null 2>&1 || true
  docker swarm leave --force >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for n in $("$bin/berth-agent" ps -o json 2>/dev/null | grep -o '"name": "[^"]*"' | cut -d'"' -f4); do
    "$bin/berth-agent" rm -f "$n" >/dev/null 2>&1 || true
  done
  rmdir /sys/fs/cgroup/*/berth-bench /sys/fs/cgroup/berth-bench 2>/dev/null || true
  remove_node_network berthroll /run/berth-rollout-bench
  rm -rf /run/berth-rollout-bench
  umount "$work/docker" 2>/dev/null || true
  # What dockerd and the agent leave behind once killed: bridges and the
  # cluster CIDR's fallback route (198.19/16 is the tests' range too).
  ip link del docker_gwbridge 2>/dev/null || true
  ip link del docker0 2>/dev/null || true
  ip route del unreachable 198.19.128.0/18 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# ---- berth: one server, one agent, a registry on loopback holding busybox
berth_server /run/berth-rollout-bench
# BENCH_IMAGE=umoci: both sides run an image umoci built and skopeo pushed
# instead of the tests' own.
if [ "${BENCH_IMAGE:-}" = umoci ]; then
  image=127.0.0.1:$port/umoci/busybox:1
  umoci_busybox "$work" "$image" sh test touch sleep true
  "$bin/berth-agent" image pull "$image" >/dev/null
fi
nope=127.0.0.1:$port/nope:v1
berth_agent berthroll
ctl() { "$bin/berthctl" "$@"; }
health=(--health-cmd 'test -f /tmp/ok' --health-interval 1s --health-retries 1)
healthy() { # healthy N: N tasks of web run and are healthy
  ctl service ps web -o json | python3 -c 'import json,sys
t = [t["task"] for t in json.load(sys.stdin) if t["task"]["desired"] == "running"]
sys.exit(0 if sum(x.get("health") == "healthy" for x in t) >= int(sys.argv[1]) else 1)' "$1"
}
b_update=() b_back=()
for run in $(seq "$runs"); do
  ctl service create --detach web --image "$image" --replicas 20 "${health[@]}" --update-parallelism 2 \
    --update-monitor 2s --update-failure-action rollback --rollback-monitor 2s --rollback-parallelism 2 \
    -- sh -c "$CMD" >/dev/null
  wait_until 120 healthy 20
  t0=$(ms)
  ctl service update web --env-add "V=$run" >/dev/null
  b_update+=("$(since "$t0")")
  t0=$(ms)
  if ctl service update web --image "$nope" >"$work/bad.log" 2>&1; then
    echo "berth: the bad image did not fail" >&2
    exit 1
  fi
  b_back+=("$(since "$t0")")
  grep -q 'rolled back' "$work/bad.log" || { cat "$work/bad.log" >&2; exit 1; }
  ctl service rm web >/dev/null
  wait_until 120 bash -c "[ \"\$($bin/berth-agent ps -o json)\" = '[]' ]"
done
echo "berth: rollout of 20 (parallelism 2, health-gated) ${b_update[*]} ms; bad image -> rolled back ${b_back[*]} ms"

# ---- Docker Swarm, same machine, same image (imported), same health check and update config
mkdir -p "$work/docker"
dockerd --data-root "$work/docker" --exec-root "$work/docker-exec" --pidfile "$work/dockerd.pid" \
  --host "unix://$work/docker.sock" --bip 198.19.250.1/24 --default-address-pool base=198.19.0.0/17,size=24 \
  >"$work/dockerd.log" 2>&1 &
pids+=($!)
export DOCKER_HOST=unix://$work/docker.sock
wait_until 60 docker info >/dev/null 2>&1
# Its gateway bridge made beforehand (as bench/swarm.sh does), so Docker
# takes no subnet of its own choosing.
docker network create --subnet 198.19.251.0/24 --opt com.docker.network.bridge.name=docker_gwbridge \
  --opt com.docker.network.bridge.enable_icc=false --opt com.docker.network.bridge.enable_ip_masquerade=true \
  docker_gwbridge >/dev/null
docker swarm init --advertise-addr 127.0.0.1 --default-addr-pool 198.19.128.0/17 >/dev/null
if [ "${BENCH_IMAGE:-}" = umoci ]; then
  tar -C "$work/unpacked/rootfs" -c . | docker import - bench/busybox:v1 >/dev/null
else
  mkdir -p "$work/rootfs"
  cp -a "$work"/agent/images/layers/sha256/*/. "$work/rootfs/"
  tar -C "$work/rootfs" -c . | docker import - bench/busybox:v1 >/dev/null
fi
s_update=() s_back=()
for run in $(seq "$runs"); do
  docker service create --quiet --name web --replicas 20 --health-cmd 'test -f /tmp/ok' --health-interval 1s \
    --health-retries 1 --update-parallelism 2 --update-monitor 2s --update-order start-first \
    --update-failure-action rollback --rollback-monitor 2s --rollback-parallelism 2 \
    bench/busybox:v1 sh -c "$CMD" >/dev/null 2>&1
  t0=$(ms)
  docker service update --quiet --env-add "V=$run" web >/dev/null 2>&1
  s_update+=("$(since "$t0")")
  t0=$(ms)
  docker service update --quiet --image "$nope" web >"$work/swarm-bad.log" 2>&1 || true
  s_back+=("$(since "$t0")")
  docker service inspect web --format '{{.UpdateStatus.State}}' | grep -q rollback_completed ||
    { echo "swarm did not roll back: $(docker service inspect web --format '{{json .UpdateStatus}}')" >&2
      cat "$work/swarm-bad.log" >&2; exit 1; }
  docker service rm web >/dev/null
  wait_until 120 bash -c '[ -z "$(docker ps -q)" ]'
done
echo "swarm: rollout of 20 (parallelism 2, health-gated) ${s_update[*]} ms; bad image -> rolled back ${s_back[*]} ms"
python3 - "${b_update[*]}" "${s_update[*]}" "${b_back[*]}" "${s_back[*]}" <<'EOF'
import statistics, sys
med = lambda s: statistics.median(int(x) for x in s.split())
bu, su, bb, sb = (med(a) for a in sys.argv[1:5])
print(f"swarm/berth (medians): rollout {su / bu:.1f}x ({su:.0f} / {bu:.0f} ms), "
      f"bad image rolled back {sb / bb:.1f}x ({sb:.0f} / {bb:.0f} ms) (target >= 5x)")
EOF
