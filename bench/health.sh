#!/usr/bin/env bash
# Health probe cost, as issue 17 asks: the node agent's CPU with 100
# containers probed every second, for each kind of probe (tcp and http from
# the node, exec inside the container), against the same 100 containers
# without a check. One server, one agent, a registry on loopback; each
# container serves HTTP with busybox httpd. CPU is read from /proc: the
# agent's own (utime+stime), and with the processes it has reaped (the
# exec helpers, their commands).
# With --docker, the same 100 containers under Docker (Debian's docker.io)
# with `--health-cmd 'test -d /' --health-interval 1s`, and dockerd's,
# containerd's and the shims' CPU (with their reaped children) beside it.
# Usage: bench/health.sh [SECONDS] [--docker]   (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/setup.sh
. bench/lib.sh
secs=${1:-30}
docker=${2:-}
ensure_packages docker-registry:docker-registry busybox:busybox-static curl:curl python3:python3 ip:iproute2 \
  iptables:iptables
[ "$docker" = --docker ] && ensure_packages dockerd:docker.io
ensure_rust
bin=$(build_release)
work=$(mktemp -d /tmp/berth-health.XXXXXX)
pids=()
cleanup() {
  [ "$docker" = --docker ] && docker rm -f $(docker ps -aq 2>/dev/null) >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for n in $("$bin/berth-agent" ps -o json 2>/dev/null | grep -o '"name": "[^"]*"' | cut -d'"' -f4); do
    "$bin/berth-agent" rm -f "$n" >/dev/null 2>&1 || true
  done
  rmdir /sys/fs/cgroup/*/berth-bench /sys/fs/cgroup/berth-bench 2>/dev/null || true
  remove_node_network berthhealth /run/berth-health-bench
  rm -rf /run/berth-health-bench
  umount "$work/docker" 2>/dev/null || true
  # What dockerd and the agent leave behind once killed: bridges and the
  # cluster CIDR's fallback route (198.19/16 is the tests' range too).
  ip link del docker_gwbridge 2>/dev/null || true
  ip link del docker0 2>/dev/null || true
  ip route del unreachable 198.19.128.0/18 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
hz=$(getconf CLK_TCK)
# ticks PID...: CPU ticks of the processes, own and reaped children's.
ticks() {
  local own=0 all=0 p f
  for p in "$@"; do
    f=$(cut -d')' -f2 "/proc/$p/stat" 2>/dev/null) || continue
    read -r _ _ _ _ _ _ _ _ _ _ _ u s cu cs _ <<<"$f"
    own=$((own + u + s)) all=$((all + u + s + cu + cs))
  done
  echo "$own $all"
}
# measure LABEL PID...: CPU over $secs seconds, as % of one core.
measure() {
  local label=$1; shift
  local a b
  read -r a0 b0 < <(ticks "$@")
  sleep "$secs"
  read -r a1 b1 < <(ticks "$@")
  awk -v l="$label" -v a=$((a1 - a0)) -v b=$((b1 - b0)) -v hz="$hz" -v s="$secs" \
    'BEGIN { printf "%-28s own %5.1f%% of a core, with reaped children %5.1f%%\n", l, 100*a/hz/s, 100*b/hz/s }'
}
SERVE='mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www'

# ---- berth
berth_server /run/berth-health-bench
berth_agent berthhealth
ctl() { "$bin/berthctl" "$@"; }
# settled N CHECKED: N tasks run (and, when checked, are healthy).
settled() {
  ctl service ps web -o json | python3 -c 'import json,sys
t = [t["task"] for t in json.load(sys.stdin) if t["task"]["desired"] == "running" and t["task"]["state"] == "running"]
ok = len(t) >= int(sys.argv[1]) and (sys.argv[2] == "0" or all(x.get("health") == "healthy" for x in t))
sys.exit(0 if ok else 1)' "$1" "$2"
}
for mode in none tcp http exec; do
  case $mode in
  none) flags=() ;;
  tcp) flags=(--health-tcp 8080 --health-interval 1s) ;;
  http) flags=(--health-http 8080/index.html --health-interval 1s) ;;
  exec) flags=(--health-cmd 'test -d /' --health-interval 1s) ;;
  esac
  checked=1
  [ "$mode" = none ] && checked=0
  ctl service create --detach web --image "$image" --replicas 100 "${flags[@]}" -- sh -c "$SERVE" >/dev/null
  wait_until 300 settled 100 "$checked"
  sleep 3
  measure "berth agent, probe $mode" "$agent"
  ctl service rm web >/dev/null
  wait_until 120 bash -c "[ \"\$($bin/berth-agent ps -o json)\" = '[]' ]"
done

# ---- Docker, the same 100 containers with an exec health check every second
if [ "$docker" = --docker ]; then
  mkdir -p "$work/docker"
  dockerd --data-root "$work/docker" --exec-root "$work/docker-exec" --pidfile "$work/dockerd.pid" \
    --host "unix://$work/docker.sock" --bip 198.19.250.1/24 --default-address-pool base=198.19.0.0/17,size=24 \
    >"$work/dockerd.log" 2>&1 &
  pids+=($!)
  export DOCKER_HOST=unix://$work/docker.sock
  wait_until 60 docker info >/dev/null 2>&1
  mkdir -p "$work/rootfs"
  cp -a "$work"/agent/images/layers/sha256/*/. "$work/rootfs/"
  tar -C "$work/rootfs" -c . | docker import - bench/busybox:v1 >/dev/null
  for mode in none exec; do
    flags=()
    [ "$mode" = exec ] && flags=(--health-cmd 'test -d /' --health-interval 1s)
    for i in $(seq 100); do
      docker run -d --name "web$i" "${flags[@]}" bench/busybox:v1 sh -c "$SERVE" >/dev/null
    done
    if [ "$mode" = exec ]; then
      wait_until 300 bash -c '[ "$(docker ps --filter health=healthy -q | wc -l)" -ge 100 ]'
    fi
    sleep 3
    measure "docker, probe $mode" $(pgrep -x dockerd) $(pgrep -x containerd) $(pgrep -f containerd-shim)
    docker rm -f $(docker ps -aq) >/dev/null
  done
fi
