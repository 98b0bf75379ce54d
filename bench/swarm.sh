#!/usr/bin/env bash
# Orchestration benchmark, berth side by side with Docker Swarm on this one
# machine (one node, image already local), as issue 4 asks:
#   1. create a 20-replica service -> all 20 running
#   2. scale 20 -> 100 -> all 100 running
#   3. kill one container -> its replacement running
#   4. a second node joins with a worker token -> ready (Swarm's in a
#      network namespace of its own, 198.18.77.0/30; berth's agent on loopback)
# Both run the same busybox image and the same command; Swarm from Debian's
# docker.io. Docker's networks are put in 198.18.0.0/15, like every address
# berth's tests use. Usage: bench/swarm.sh   (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/setup.sh
. bench/lib.sh
ensure_packages docker-registry:docker-registry busybox:busybox-static dockerd:docker.io curl:curl python3:python3 \
  ip:iproute2 iptables:iptables
ensure_rust
bin=$(build_release)
work=$(mktemp -d /tmp/berth-swarm.XXXXXX)
CMD="trap 'exit 0' TERM; while true; do sleep 1; done"
pids=()
cleanup() {
  docker service rm web >/dev/null 2>&1 || true
  docker swarm leave --force >/dev/null 2>&1 || true
  [ -f "$work/dockerd2.pid" ] && kill "$(cat "$work/dockerd2.pid")" 2>/dev/null || true
  ip netns del berthswarm2 2>/dev/null || true
  ip link del bsw0 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for n in $("$bin/berth-agent" ps -o json 2>/dev/null | grep -o '"name": "[^"]*"' | cut -d'"' -f4); do
    "$bin/berth-agent" rm -f "$n" >/dev/null 2>&1 || true
  done
  rmdir /sys/fs/cgroup/*/berth-bench /sys/fs/cgroup/berth-bench 2>/dev/null || true
  remove_node_network berthbench /run/berth-swarm-bench
  rm -rf /run/berth-swarm-bench
  umount "$work/docker" "$work/docker2" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# ---- berth: one server, one agent, a registry on loopback holding busybox
# (container addresses from 198.19.128.0/18, clear of Docker's networks
# below; the image is cached, as on the Swarm side)
berth_server /run/berth-swarm-bench
# Mutual TLS as a user runs it: the node joins with the worker token,
# timed here (berth_agent does the same join untimed).
token=$("$bin/berthctl" cluster join-token worker -q)
join_t0=$(ms)
# (info from the join alone: its "registered" line times the join below)
BERTH_TOKEN=$token BERTH_LOG=warn,berth_agent::cmd::join=info \
  "$bin/berth-agent" --name bench --advertise 127.0.0.1:7500 --bridge berthbench >"$work/agent.log" 2>&1 &
pids+=($!)
ctl() { "$bin/berthctl" "$@"; }
# Tasks of web meant to run: how many run; and "STATE RESTARTS" of one task.
# (Polled with awk, as Swarm's side is with grep: a python3 per poll would
# take CPU from the very containers being started.)
berth_running() {
  [ "$(ctl service ps web | awk '$4 == "running" && $5 == "running"' | wc -l)" -ge "$1" ]
}
berth_restarted() {
  ctl service ps web -o json | python3 -c 'import json,sys
t = [t["task"] for t in json.load(sys.stdin) if t["task"]["id"] == sys.argv[1]]
sys.exit(0 if t and t[0]["state"] == "running" and t[0]["restarts"] >= 1 else 1)' "$1"
}
wait_until 30 bash -c "$bin/berthctl node ls | grep -q ready"
b_join=$(since "$join_t0")
# One poll (a berthctl start, a TLS handshake and a call) takes about as
# long as the whole join, so also take the time from the agent's own log:
# its registration (the node is ready from then on).
wait_until 10 grep -q ' registered' "$work/agent.log"
registered=$(grep -m1 ' registered' "$work/agent.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -d' ' -f1)
b_join_log=$((($(date -d "$registered" +%s%N) - join_t0) / 1000000))

t0=$(ms)
ctl service create --detach web --image "$image" --replicas 20 -- sh -c "$CMD" >/dev/null
wait_until 120 berth_running 20
b_create=$(since "$t0")
t0=$(ms)
ctl service scale --detach web=100 >/dev/null
wait_until 300 berth_running 100
b_scale=$(since "$t0")
read -r vname vpid < <("$bin/berth-agent" ps -o json | python3 -c 'import json,sys
c = [c for c in json.load(sys.stdin) if c.get("pid")][0]
print(c["name"], c["pid"])')
t0=$(ms)
kill -9 "$vpid"
wait_until 60 berth_restarted "$vname"
b_kill=$(since "$t0")
ctl service rm web >/dev/null
wait_until 120 bash -c "[ \"\$($bin/berth-agent ps -o json)\" = '[]' ]"
echo "berth: join -> ready ${b_join} ms (${b_join_log} ms by the agent's log), create 20 -> running ${b_create} ms, scale 20 -> 100 ${b_scale} ms, kill -> replaced ${b_kill} ms"

# ---- Docker Swarm, same machine, same image (imported), same command
mkdir -p "$work/docker"
dockerd --data-root "$work/docker" --exec-root "$work/docker-exec" --pidfile "$work/dockerd.pid" \
  --host "unix://$work/docker.sock" --bip 198.19.250.1/24 --default-address-pool base=198.19.0.0/17,size=24 \
  >"$work/dockerd.log" 2>&1 &
pids+=($!)
export DOCKER_HOST=unix://$work/docker.sock
wait_until 60 docker info >/dev/null 2>&1
docker network create --subnet 198.19.251.0/24 --opt com.docker.network.bridge.name=docker_gwbridge \
  --opt com.docker.network.bridge.enable_icc=false --opt com.docker.network.bridge.enable_ip_masquerade=true \
  docker_gwbridge >/dev/null
# The manager is reached by the second node (step 4) over a veth.
ip netns add berthswarm2
ip link add bsw0 type veth peer name bsw1
ip link set bsw1 netns berthswarm2
ip addr add 198.18.77.1/30 dev bsw0 && ip link set bsw0 up
ip -n berthswarm2 addr add 198.18.77.2/30 dev bsw1
ip -n berthswarm2 link set bsw1 up && ip -n berthswarm2 link set lo up
docker swarm init --advertise-addr 198.18.77.1 --default-addr-pool 198.19.128.0/17 >/dev/null
mkdir -p "$work/rootfs"
cp -a "$work"/agent/images/layers/sha256/*/. "$work/rootfs/"
tar -C "$work/rootfs" -c . | docker import - bench/busybox:v1 >/dev/null
swarm_running() { [ "$(docker service ps web --filter desired-state=running --format '{{.CurrentState}}' | grep -c '^Running')" -ge "$1" ]; }

t0=$(ms)
docker service create --detach --quiet --name web --replicas 20 bench/busybox:v1 sh -c "$CMD" >/dev/null 2>&1
wait_until 300 swarm_running 20
s_create=$(since "$t0")
t0=$(ms)
docker service scale --detach web=100 >/dev/null 2>&1
wait_until 600 swarm_running 100
s_scale=$(since "$t0")
victim=$(docker ps -q --filter name=web | head -1)
before=$(docker service ps web --format '{{.ID}}' | wc -l)
t0=$(ms)
docker kill "$victim" >/dev/null
wait_until 300 bash -c "[ \$(docker service ps web --format '{{.ID}}' | wc -l) -gt $before ] && \
  [ \$(docker service ps web --filter desired-state=running --format '{{.CurrentState}}' | grep -c '^Running') -ge 100 ]"
s_kill=$(since "$t0")

# A second dockerd, already running in its own network namespace (nsenter:
# `ip netns exec` would hide the cgroup mounts), joins as a worker.
nsenter --net=/run/netns/berthswarm2 dockerd --data-root "$work/docker2" --exec-root "$work/docker2-exec" \
  --pidfile "$work/dockerd2.pid" --host "unix://$work/docker2.sock" --bip 198.19.252.1/24 \
  --default-address-pool base=198.19.0.0/17,size=24 \
  >"$work/dockerd2.log" 2>&1 &
pids+=($!)
wait_until 60 docker -H "unix://$work/docker2.sock" info >/dev/null 2>&1
docker -H "unix://$work/docker2.sock" network create --subnet 198.19.253.0/24 \
  --opt com.docker.network.bridge.name=docker_gwbridge --opt com.docker.network.bridge.enable_icc=false \
  --opt com.docker.network.bridge.enable_ip_masquerade=true docker_gwbridge >/dev/null
token=$(docker swarm join-token -q worker)
t0=$(ms)
docker -H "unix://$work/docker2.sock" swarm join --token "$token" --advertise-addr 198.18.77.2 198.18.77.1:2377 \
  >/dev/null
wait_until 120 bash -c "[ \$(docker node ls --format '{{.Status}}' | grep -c Ready) -ge 2 ]"
s_join=$(since "$t0")
echo "swarm: join -> ready ${s_join} ms, create 20 -> running ${s_create} ms, scale 20 -> 100 ${s_scale} ms, kill -> replaced ${s_kill} ms"
awk -v a="$b_create" -v b="$s_create" -v c="$b_scale" -v d="$s_scale" -v e="$b_kill" -v f="$s_kill" \
  -v g="$b_join" -v h="$s_join" \
  'BEGIN { printf "swarm/berth: join %.1fx, create %.1fx, scale %.1fx, kill %.1fx (target >= 10x)\n", h/g, b/a, d/c, f/e }'
