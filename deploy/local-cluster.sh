#!/usr/bin/env bash
# A local multi-host berth cluster for a person to try, on one machine:
#   deploy/local-cluster.sh up [N]   build; N hosts (default 3), the demo service
#   deploy/local-cluster.sh status   nodes and the demo's tasks
#   deploy/local-cluster.sh down     stop everything and remove it
# Each host is a network namespace (berth-h1..N) on a bridge, with an address
# in 198.18.0.0/24; hosts 1-3 run a berth-server, every host a berth-agent
# whose containers get addresses from 198.19.0.0/16 and reach each other
# over the WireGuard overlay. A registry on 198.18.0.254:5000 holds the
# demo image; the demo's published port 8080 answers on every host, and
# each host's DNS (also on its address, port 53) names the demo's replicas.
# Every connection is mutual TLS: server 1 bootstraps the cluster (its root,
# and the admin's credential in server-1/admin.conf, which berthctl uses
# here); servers 2-3 and every agent join with the join tokens it prints.
# State lives in $BERTH_LOCAL_DIR (default /tmp/berth-local).
set -euo pipefail
# A relative BERTH_LOCAL_BIN is the caller's, before the cd below.
[ -z "${BERTH_LOCAL_BIN:-}" ] || BERTH_LOCAL_BIN=$(realpath -m "$BERTH_LOCAL_BIN")
cd "$(dirname "$0")/.."
. deploy/lib/setup.sh

DIR=${BERTH_LOCAL_DIR:-/tmp/berth-local}
# BERTH_LOCAL_BIN: binaries built elsewhere (an older build, to compare
# against: bench/idle.sh); unset, `up` builds them into target/berth.
BIN=${BERTH_LOCAL_BIN:-$PWD/target/berth}
BRIDGE=berthlocal
GATEWAY=198.18.0.254
size() { cat "$DIR/size" 2>/dev/null || echo 3; }
servers() { local n; n=$(size); ((n > 3)) && n=3; seq -s, -f "198.18.0.%g:7400" 1 "$n"; }
export BERTH_CONFIG=$DIR/server-1/admin.conf
ctl() { BERTH_SERVER=$(servers) "$BIN/berthctl" "$@"; }
in_host() { local i=$1; shift; nsenter --net="/run/netns/berth-h$i" "$@"; }

wait_for() { # wait_for SECONDS CMD...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { echo "timed out: $*" >&2; return 1; }
    sleep 0.3
  done
}

network() {
  local n=$1 i
  ip link add "$BRIDGE" type bridge
  ip addr add "$GATEWAY/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  iptables -w -I FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
  for i in $(seq 1 "$n"); do
    ip netns add "berth-h$i"
    ip link add "blh$i" type veth peer name eth0 netns "berth-h$i"
    ip link set "blh$i" master "$BRIDGE" up
    in_host "$i" ip link set lo up
    in_host "$i" ip addr add "198.18.0.$i/24" dev eth0
    in_host "$i" ip link set eth0 up
    in_host "$i" ip route add default via "$GATEWAY"
  done
}

registry() {
  mkdir -p "$DIR/registry"
  printf 'version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: %s:5000}\n' \
    "$DIR/registry" "$GATEWAY" > "$DIR/registry.yml"
  docker-registry serve "$DIR/registry.yml" > "$DIR/registry.log" 2>&1 &
  echo $! > "$DIR/registry.pid"
  wait_for 20 curl -sf "http://$GATEWAY:5000/v2/"
  "$BIN/berth-image" --push "$GATEWAY:5000/busybox:demo" > /dev/null
  printf '[[registry]]\nhost = "%s:5000"\ninsecure = true\n' "$GATEWAY" > "$DIR/registries.toml"
}

up() {
  local n=${1:-3} i
  [[ $n =~ ^[1-9]$ ]] || { echo "N must be 1..9" >&2; exit 2; }
  [ -f "$DIR/size" ] && { echo "a local cluster is already up in $DIR: run '$0 down' first" >&2; exit 1; }
  ip link show "$BRIDGE" > /dev/null 2>&1 && { echo "$BRIDGE exists: run '$0 down' first" >&2; exit 1; }
  ensure_packages kill:procps curl:curl docker-registry:docker-registry busybox:busybox-static \
    ip:iproute2 iptables:iptables nsenter:util-linux conntrack:conntrack dig:bind9-dnsutils tini-static:tini
  if [ -z "${BERTH_LOCAL_BIN:-}" ]; then
    ensure_rust
    build_release > /dev/null
  fi
  mkdir -p "$DIR"
  echo "$n" > "$DIR/size"
  network "$n"
  registry
  local voters=$((n < 3 ? n : 3)) server_token="" worker_token=""
  for i in $(seq 1 "$voters"); do
    local role=(--bootstrap)
    ((i == 1)) || role=(--join "198.18.0.1:7400" --token "$server_token")
    # nsenter execs the program, so $! is the server's pid.
    nsenter --net="/run/netns/berth-h$i" "$BIN/berth-server" --data-dir "$DIR/server-$i" --listen "198.18.0.$i:7400" \
      --cluster-cidr 198.19.0.0/16 --registries "$DIR/registries.toml" "${role[@]}" > "$DIR/server-$i.log" 2>&1 &
    echo $! > "$DIR/server-$i.pid"
    if ((i == 1)); then
      wait_for 30 test -s "$BERTH_CONFIG"
      wait_for 30 "$BIN/berthctl" -s 198.18.0.1:7400 cluster join-token server -q
      server_token=$("$BIN/berthctl" -s 198.18.0.1:7400 cluster join-token server -q)
      worker_token=$("$BIN/berthctl" -s 198.18.0.1:7400 cluster join-token worker -q)
    fi
  done
  wait_for 60 bash -c "BERTH_SERVER=$(servers) $BIN/berthctl cluster status -o json | grep -c '\"follower\"' | grep -qx $((voters - 1))"
  for i in $(seq 1 "$n"); do
    BERTH_AGENT_DATA_DIR="$DIR/agent-$i" BERTH_AGENT_RUN_DIR="/run/berth-local/h$i" \
      BERTH_CGROUP_PARENT="berth-local-h$i" BERTH_REGISTRIES="$DIR/registries.toml" \
      BERTH_TOKEN="$worker_token" nsenter --net="/run/netns/berth-h$i" "$BIN/berth-agent" --server "$(servers)" --name "host$i" \
      --advertise "198.18.0.$i:7500" --dns-listen "198.18.0.$i:53" > "$DIR/agent-$i.log" 2>&1 &
    echo $! > "$DIR/agent-$i.pid"
  done
  wait_for 60 bash -c "BERTH_SERVER=$(servers) $BIN/berthctl node ls | grep -c ' ready ' | grep -qx $n"
  ctl apply -f deploy/examples/demo.yaml
  wait_for 120 bash -c "BERTH_SERVER=$(servers) $BIN/berthctl service ps demo | awk '\$4 == \"running\" && \$5 == \"running\"' | grep -c . | grep -qx 3"
  status
  local addr
  echo
  echo "The demo answers on every task's address, from any host (over the overlay between hosts):"
  for addr in $(ctl service ps demo -o json | grep -o '"address": "[^"]*"' | cut -d'"' -f4); do
    echo "  \$ ip netns exec berth-h1 curl -s http://$addr/"
    echo "  $(in_host 1 curl -s --max-time 5 "http://$addr/" || echo "(no answer)")"
  done
  echo
  echo "Its published port 8080 answers on every host's address (the routing mesh), from this machine too:"
  for i in $(seq 1 "$n"); do
    echo "  \$ curl -s http://198.18.0.$i:8080/"
    echo "  $(curl -s --max-time 5 "http://198.18.0.$i:8080/" || echo "(no answer)")"
  done
  echo
  echo "Every node answers DNS for the cluster (its containers ask it by name):"
  echo "  \$ dig +short @198.18.0.1 demo.berth.local"
  dig +short +time=2 @198.18.0.1 demo.berth.local | sed 's/^/  /'
  echo
  echo "berthctl (as the cluster's admin): export BERTH_CONFIG=$BERTH_CONFIG; $BIN/berthctl service ps demo"
  echo "Another host joins with: $BIN/berthctl cluster join-token worker"
}

status() {
  ctl node ls
  echo
  ctl service ps demo
}

down() {
  local f i n
  n=$(size)
  for f in "$DIR"/agent-*.pid "$DIR"/server-*.pid "$DIR"/registry.pid; do
    [ -e "$f" ] && kill "$(cat "$f")" 2> /dev/null || true
  done
  # Agents remove their WireGuard sockets as they stop: give them time.
  local deadline=$((SECONDS + 10))
  for f in "$DIR"/*.pid; do
    while [ -e "$f" ] && kill -0 "$(cat "$f")" 2> /dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    [ -e "$f" ] && kill -9 "$(cat "$f")" 2> /dev/null || true
  done
  for i in $(seq 1 "$n"); do
    if [ -d "$DIR/agent-$i" ]; then
      for c in $(BERTH_AGENT_DATA_DIR="$DIR/agent-$i" BERTH_AGENT_RUN_DIR="/run/berth-local/h$i" \
        "$BIN/berth-agent" ps -o json 2> /dev/null | grep -o '"name": "[^"]*"' | cut -d'"' -f4); do
        BERTH_AGENT_DATA_DIR="$DIR/agent-$i" BERTH_AGENT_RUN_DIR="/run/berth-local/h$i" \
          BERTH_CGROUP_PARENT="berth-local-h$i" "$BIN/berth-agent" rm -f "$c" > /dev/null 2>&1 || true
      done
    fi
    # Task namespaces, and (tasks with --userns auto) the user namespaces' dir.
    for f in /run/berth-local/h"$i"/netns/users/* /run/berth-local/h"$i"/netns/*; do
      [ -e "$f" ] && { umount -l "$f" 2> /dev/null || true; rm -rf "$f"; }
    done
    rmdir /sys/fs/cgroup/*/berth-local-h"$i" /sys/fs/cgroup/berth-local-h"$i" 2> /dev/null || true
    ip netns del "berth-h$i" 2> /dev/null || true
  done
  ip link del "$BRIDGE" 2> /dev/null || true
  iptables -w -D FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2> /dev/null || true
  rm -rf "$DIR" /run/berth-local
  echo "local cluster stopped and removed"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  status) status ;;
  down) down ;;
  *) echo "usage: $0 up [N] | status | down" >&2; exit 2 ;;
esac
