#!/usr/bin/env bash
# DNS benchmark (issue 6), in one run on this machine:
#   1. berth: dnsperf inside a demo container's network namespace on host1
#      of `deploy/local-cluster.sh up 3`, against its nameserver (the
#      node's DNS on the bridge gateway), asking for the service by name.
#   2. berth: propagation (bench/dns_propagation.py): from a replica's
#      running (or stop) event to every node's DNS answering accordingly,
#      over ROUNDS rounds of scaling the demo 3 -> 4 -> 3.
#   3. Docker (Debian's docker.io): a swarm service of 3 replicas on an
#      attachable overlay network; dnsperf inside one container's network
#      namespace against the embedded DNS, 127.0.0.11, asking for the
#      service by name.
# Also, as a ceiling of the client on this machine: dnsmasq with a fixed
# answer, asked from berth's container the same way.
# The same query file, dnsperf settings and number of runs on every side;
# berth is stopped before Docker starts. Docker's networks are put in
# 198.18.0.0/15 like every address of berth's tests.
# Usage: bench/dns.sh [SECONDS per dnsperf run, default 10] [ROUNDS, default 100]   (as root)
# Writes bench/results/dns.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/setup.sh
ensure_packages dnsperf:dnsperf dnsmasq:dnsmasq-base dockerd:docker.io python3:python3 dig:bind9-dnsutils busybox:busybox-static
SECS=${1:-10}
ROUNDS=${2:-100}
RUNS=3
DIR=${BERTH_LOCAL_DIR:-/tmp/berth-local}
export BERTH_CONFIG=$DIR/server-1/admin.conf # the local cluster's admin
[ -f "$DIR/size" ] && { echo "a local cluster is up in $DIR: run 'deploy/local-cluster.sh down' first" >&2; exit 1; }
work=$(mktemp -d /tmp/berth-dns.XXXXXX)
dockerd_pid=""
cleanup() {
  if [ -n "$dockerd_pid" ]; then
    docker service rm demo > /dev/null 2>&1 || true
    docker swarm leave --force > /dev/null 2>&1 || true
    kill "$dockerd_pid" 2> /dev/null || true
    while kill -0 "$dockerd_pid" 2> /dev/null; do sleep 0.2; done
    ip link del docker0 2> /dev/null || true
    ip link del docker_gwbridge 2> /dev/null || true
  fi
  deploy/local-cluster.sh down > /dev/null 2>&1 || true
  umount "$work/docker" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
printf 'demo A\n' > "$work/queries"

# CPU time of a process so far, in clock ticks (user + system).
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# dnsperf NETNS SERVER PID: one run's "QPS AVG_LATENCY_MS LOST CPU_US_PER_QUERY", the last
# being the CPU time the serving process PID spent per query answered.
dnsperf_run() {
  local before after
  before=$(ticks "$3")
  nsenter --net="$1" dnsperf -s "$2" -d "$work/queries" -l "$SECS" -q 100 -p "${PORT:-53}" > "$work/dnsperf.out" 2>&1
  after=$(ticks "$3")
  awk -v cpu=$(((after - before) * 1000000 / $(getconf CLK_TCK))) '
       /Queries completed:/ { done = $3 } /Queries per second:/ { q = $4 }
       /Average Latency \(s\):/ { l = $4 * 1000 } /Queries lost:/ { lost = $3 }
       END { printf "%.0f %.3f %s %.2f\n", q, l, lost, done ? cpu / done : 0 }' "$work/dnsperf.out"
}
median() { tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
declare -A qps lat cpu runs
measure() { # measure NAME NETNS SERVER PID
  local all_q="" all_l="" all_c="" q l lost c
  for _ in $(seq "$RUNS"); do
    read -r q l lost c < <(dnsperf_run "$2" "$3" "$4")
    all_q="$all_q $q"
    all_l="$all_l $l"
    all_c="$all_c $c"
    echo "$1: $q queries/s, average latency $l ms, lost $lost, server CPU $c us per query" >&2
  done
  runs[$1]="${all_q# } / ${all_l# } / ${all_c# }"
  qps[$1]=$(echo "${all_q# }" | median)
  lat[$1]=$(echo "${all_l# }" | median)
  cpu[$1]=$(echo "${all_c# }" | median)
}

# ---- berth
deploy/local-cluster.sh up 3 > /dev/null
BIN=$PWD/target/berth
export BERTH_SERVER=198.18.0.1:7400,198.18.0.2:7400,198.18.0.3:7400
id=$("$BIN/berthctl" service ps demo -o json | python3 -c 'import json,sys
print([t for t in json.load(sys.stdin) if t["node_name"] == "host1" and t["task"]["state"] == "running"][0]["task"]["id"])')
ns=/run/berth-local/h1/netns/$id
server=$(nsenter --net="$ns" ip route show default | awk '{ print $3 }')
echo "berth: a container on host1 asks $server:" "$(nsenter --net="$ns" dig +short +time=2 "@$server" demo | sort | tr '\n' ' ')" >&2
measure berth "$ns" "$server" "$(cat "$DIR/agent-1.pid")"
# A ceiling for this client on this path: dnsmasq (single-threaded C) with a
# fixed answer, on host1's gateway, port 5353, asked from the same container.
nsenter --net=/run/netns/berth-h1 dnsmasq --no-resolv --no-hosts --bind-interfaces --port=5353 \
  --listen-address="$server" --host-record=demo,198.19.0.2 --host-record=demo,198.19.1.2 \
  --host-record=demo,198.19.2.2 --pid-file="$work/dnsmasq.pid" --log-facility=/dev/null
PORT=5353 measure dnsmasq "$ns" "$server" "$(cat "$work/dnsmasq.pid")"
kill "$(cat "$work/dnsmasq.pid")"
python3 bench/dns_propagation.py "$BIN/berthctl" demo "$ROUNDS" 198.18.0.1 198.18.0.2 198.18.0.3 > "$work/propagation"
cat "$work/propagation" >&2
propagation=$(tail -3 "$work/propagation")
deploy/local-cluster.sh down > /dev/null

# ---- Docker: swarm, an overlay network, the same busybox
mkdir -p "$work/docker" "$work/rootfs/bin"
dockerd --data-root "$work/docker" --exec-root "$work/docker-exec" --pidfile "$work/dockerd.pid" \
  --host "unix://$work/docker.sock" --bip 198.19.250.1/24 --default-address-pool base=198.19.0.0/17,size=24 \
  > "$work/dockerd.log" 2>&1 &
dockerd_pid=$!
export DOCKER_HOST=unix://$work/docker.sock
deadline=$((SECONDS + 60))
until docker info > /dev/null 2>&1; do ((SECONDS < deadline)) || { echo "dockerd did not start" >&2; exit 1; }; sleep 0.3; done
docker network create --subnet 198.19.251.0/24 --opt com.docker.network.bridge.name=docker_gwbridge \
  --opt com.docker.network.bridge.enable_icc=false --opt com.docker.network.bridge.enable_ip_masquerade=true \
  docker_gwbridge > /dev/null
docker swarm init --advertise-addr 127.0.0.1 --default-addr-pool 198.19.128.0/17 > /dev/null
docker network create --driver overlay --attachable --subnet 198.19.200.0/24 benchnet > /dev/null
cp /bin/busybox "$work/rootfs/bin/busybox"
ln -s busybox "$work/rootfs/bin/sh"
tar -C "$work/rootfs" -c . | docker import - bench/busybox:dns > /dev/null
# dnsrr: the name answers with the three replicas' addresses, as berth's does (the
# default, a virtual IP, would be one record).
docker service create --detach --quiet --name demo --network benchnet --replicas 3 --endpoint-mode dnsrr bench/busybox:dns \
  /bin/busybox sleep 1000000 > /dev/null
deadline=$((SECONDS + 120))
until [ "$(docker service ps demo --filter desired-state=running --format '{{.CurrentState}}' | grep -c '^Running')" -ge 3 ]; do
  ((SECONDS < deadline)) || { docker service ps --no-trunc demo >&2; echo "swarm's replicas did not run" >&2; exit 1; }
  sleep 0.3
done
pid=$(docker inspect -f '{{.State.Pid}}' "$(docker ps -q --filter name=demo | head -1)")
echo "docker: a container asks 127.0.0.11:" "$(nsenter --net="/proc/$pid/ns/net" dig +short +time=2 @127.0.0.11 demo | sort | tr '\n' ' ')" >&2
measure docker "/proc/$pid/ns/net" 127.0.0.11 "$dockerd_pid"
dnsperf_version=$(sed -n 's/^Version //p' "$work/dnsperf.out")
docker_version=$(docker version --format '{{.Server.Version}}')

ratio() { python3 -c "import sys; print('%.2f' % (float(sys.argv[1]) / float(sys.argv[2])))" "$1" "$2"; }
{
  echo "# DNS: berth's node DNS vs Docker's embedded DNS"
  echo
  echo "\`bench/dns.sh $SECS $ROUNDS\` on $(nproc) cores, $(date -u +%Y-%m-%d). dnsperf $dnsperf_version"
  echo "inside a container's network namespace, asking for the service by name (\`demo A\`), 100 queries"
  echo "outstanding, $RUNS runs of ${SECS} s each (median). berth: a demo container on host1 of"
  echo "\`deploy/local-cluster.sh up 3\` asks its node's DNS ($server, the bridge gateway). Docker $docker_version"
  echo "(Debian docker.io): a container of a 3-replica swarm service (endpoint mode dnsrr, so that the name"
  echo "answers with the three replicas, as berth's does) on an attachable overlay network asks 127.0.0.11."
  echo "dnsmasq, a ceiling for this client on this path: the same three records, fixed, on host1's gateway"
  echo "(port 5353), asked from berth's container. One ran after the other. Server CPU: the serving process's user + system time"
  echo "during the run (berth-agent; dockerd, whose embedded DNS answers) over the queries answered;"
  echo "one core's worth of it is the server's capacity when the client is not the limit."
  echo
  echo "| server | queries/s / avg latency ms / CPU us per query (runs) | queries/s | avg latency ms | CPU us/query | vs Docker: queries/s | vs Docker: queries per CPU second |"
  echo "|---|---|---|---|---|---|---|"
  for name in berth docker dnsmasq; do
    echo "| $name | ${runs[$name]} | ${qps[$name]} | ${lat[$name]} | ${cpu[$name]} | $(ratio "${qps[$name]}" "${qps[docker]}") | $(ratio "${cpu[docker]}" "${cpu[$name]}") |"
  done
  echo
  echo "Propagation ($ROUNDS rounds of \`berthctl service scale demo=4\` then \`=3\`; every node's DNS polled"
  echo "over UDP in a loop; from the task's event on \`berthctl events\`):"
  echo
  echo "$propagation" | sed 's/^/- /'
} > bench/results/dns.md
cat bench/results/dns.md
