#!/usr/bin/env bash
# Overlay benchmark (issue 5): TCP throughput (iperf3) and round-trip time
# (ping) between two hosts of a local cluster (deploy/local-cluster.sh up 2),
# side by side on the same hosts, in the same run:
#   underlay      host1 -> host2 over the plain network (veth, bridge, veth)
#   berth         a container on host1 -> a container on host2, through
#                 berth's overlay (boringtun in each agent, WireGuard on UDP)
#   wireguard-go  host1 -> host2 through a wireguard-go tunnel (Debian's),
#                 the reference userspace WireGuard
# berth's path is the longer one: it also crosses each container's veth
# and bridge. The iperf3 and ping run in the container's network namespace
# (its eth0, route and MTU), from the host's binaries.
# Usage: bench/overlay.sh [SECONDS per iperf3 run, default 10]   (as root)
# Writes bench/results/overlay.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/setup.sh
ensure_packages iperf3:iperf3 wireguard-go:wireguard-go wg:wireguard-tools ping:iputils-ping python3:python3
SECS=${1:-10}
RUNS=3
DIR=${BERTH_LOCAL_DIR:-/tmp/berth-local}
export BERTH_CONFIG=$DIR/server-1/admin.conf # the local cluster's admin
[ -f "$DIR/size" ] && { echo "a local cluster is up in $DIR: run 'deploy/local-cluster.sh down' first" >&2; exit 1; }
in_host() { local i=$1; shift; nsenter --net="/run/netns/berth-h$i" "$@"; }
cleanup() {
  pkill -x iperf3 2>/dev/null || true
  for i in 1 2; do in_host "$i" ip link del "wgb$i" 2>/dev/null || true; done
  deploy/local-cluster.sh down >/dev/null 2>&1 || true
}
trap cleanup EXIT
deploy/local-cluster.sh up 2 >/dev/null
BIN=$PWD/target/berth

# A demo task on each host: its address and its network namespace.
tasks=$(BERTH_SERVER=198.18.0.1:7400,198.18.0.2:7400 "$BIN/berthctl" service ps demo -o json)
task_on() { # task_on HOST FIELD
  python3 -c 'import json,sys
t=[t for t in json.loads(sys.argv[1]) if t["node_name"]==sys.argv[2] and t["task"]["state"]=="running"][0]
print(t["task"][sys.argv[3]])' "$tasks" "$1" "$2"
}
ns1=/run/berth-local/h1/netns/$(task_on host1 id)
ns2=/run/berth-local/h2/netns/$(task_on host2 id)
addr2=$(task_on host2 address)

# wireguard-go between the same two hosts, on addresses of its own.
export WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1
keys=$(mktemp -d)
for i in 1 2; do
  wg genkey > "$keys/$i"
  wg pubkey < "$keys/$i" > "$keys/$i.pub"
  in_host "$i" wireguard-go "wgb$i" 2>/dev/null
done
for i in 1 2; do
  j=$((3 - i))
  in_host "$i" wg set "wgb$i" private-key "$keys/$i" listen-port $((51900 + i)) \
    peer "$(cat "$keys/$j.pub")" endpoint "198.18.0.$j:$((51900 + j))" allowed-ips "198.18.250.$j/32"
  in_host "$i" ip addr add "198.18.250.$i/24" dev "wgb$i"
  in_host "$i" ip link set "wgb$i" mtu 1420 up
done
rm -rf "$keys"

# path NAME: the client's netns and the server's, and the address to reach.
path() {
  case $1 in
    underlay) echo "/run/netns/berth-h1 /run/netns/berth-h2 198.18.0.2" ;;
    berth) echo "$ns1 $ns2 $addr2" ;;
    wireguard-go) echo "/run/netns/berth-h1 /run/netns/berth-h2 198.18.250.2" ;;
  esac
}
gbits() { # gbits CLIENT_NS SERVER_NS ADDR: one iperf3 run's received Gbit/s
  nsenter --net="$2" iperf3 -s -1 -D -p 5301
  sleep 0.3
  nsenter --net="$1" iperf3 -c "$3" -p 5301 -t "$SECS" -J |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
}
rtt() { # rtt CLIENT_NS ADDR: average round trip in ms over 200 pings
  nsenter --net="$1" ping -q -c 200 -i 0.01 "$2" | sed -n 's|^rtt [^=]*= [^/]*/\([^/]*\)/.*|\1|p'
}
median() { tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

declare -A tput lat runs
for name in underlay berth wireguard-go; do
  read -r c s a <<< "$(path "$name")"
  nsenter --net="$c" ping -q -c 3 -i 0.2 "$a" > /dev/null # handshakes, ARP
  all=""
  for _ in $(seq "$RUNS"); do all="$all $(gbits "$c" "$s" "$a")"; done
  runs[$name]=${all# }
  tput[$name]=$(echo "${runs[$name]}" | median)
  lat[$name]=$(rtt "$c" "$a")
  echo "$name: ${runs[$name]} Gbit/s (median ${tput[$name]}), rtt ${lat[$name]} ms" >&2
done

# Peer updates: host2's agent restarts on another WireGuard port (a node
# changing address); how long from its start until host1's device has the
# new endpoint. An upper bound: it includes the agent's start and its
# registration going through Raft.
wg1=$(in_host 1 ip -br link | grep -o '^bw[0-9a-f]*')
restart_agent2() { # restart_agent2 PORT
  kill "$(cat "$DIR/agent-2.pid")"
  while kill -0 "$(cat "$DIR/agent-2.pid")" 2>/dev/null; do sleep 0.05; done
  BERTH_AGENT_DATA_DIR="$DIR/agent-2" BERTH_AGENT_RUN_DIR="/run/berth-local/h2" \
    BERTH_CGROUP_PARENT="berth-local-h2" BERTH_REGISTRIES="$DIR/registries.toml" \
    nsenter --net=/run/netns/berth-h2 "$BIN/berth-agent" --server 198.18.0.1:7400,198.18.0.2:7400 --name host2 \
    --advertise 198.18.0.2:7500 --wireguard-port "$1" >> "$DIR/agent-2.log" 2>&1 &
  echo $! > "$DIR/agent-2.pid"
}
peer_ms=""
for port in 51821 51822 51821 51822 51821; do
  restart_agent2 "$port"
  t0=$(date +%s%N)
  until in_host 1 wg show "$wg1" endpoints | grep -q "198.18.0.2:$port"; do
    (( ($(date +%s%N) - t0) < 10000000000 )) || { echo "host1 never saw port $port" >&2; exit 1; }
    sleep 0.005
  done
  peer_ms="$peer_ms $((($(date +%s%N) - t0) / 1000000))"
done
peer_ms=${peer_ms# }
echo "peer update: $peer_ms ms" >&2

ratio() { python3 -c "import sys; print('%.2f' % (float(sys.argv[1]) / float(sys.argv[2])))" "$1" "$2"; }
added() { python3 -c "import sys; print('%.3f' % (float(sys.argv[1]) - float(sys.argv[2])))" "$1" "$2"; }
{
  echo "# Overlay: berth vs wireguard-go vs the plain underlay"
  echo
  echo "\`bench/overlay.sh $SECS\` on $(nproc) cores, $(date -u +%Y-%m-%d); iperf3 TCP, $RUNS runs of ${SECS} s each"
  echo "(median), ping RTT averaged over 200 pings. Two hosts of \`deploy/local-cluster.sh up 2\`."
  echo
  echo "| path | Gbit/s (runs) | median | vs wireguard-go | RTT ms | added RTT ms |"
  echo "|---|---|---|---|---|---|"
  for name in underlay berth wireguard-go; do
    echo "| $name | ${runs[$name]} | ${tput[$name]} | $(ratio "${tput[$name]}" "${tput[wireguard-go]}") | ${lat[$name]} | $(added "${lat[$name]}" "${lat[underlay]}") |"
  done
  echo
  echo "Peer update: host2's agent restarts on another WireGuard port (a node changing address); from"
  echo "its start until host1's device has the new endpoint (includes the agent's start and its"
  echo "registration through Raft): $peer_ms ms."
} > bench/results/overlay.md
cat bench/results/overlay.md
