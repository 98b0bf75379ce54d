#!/usr/bin/env bash
# A local berth cluster for a person to try:
#   deploy/local-cluster.sh up [N]   build, start N servers (default 3), declare the demo service
#   deploy/local-cluster.sh status   members and services
#   deploy/local-cluster.sh down     stop everything and remove its data
# Servers listen on 127.0.0.1:7401..740N; state lives in $BERTH_LOCAL_DIR
# (default /tmp/berth-local). Node agents join this cluster in a later step
# of berth's development; today the cluster stores and replicates services.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/setup.sh

DIR=${BERTH_LOCAL_DIR:-/tmp/berth-local}
BIN=target/release
port() { echo $((7400 + $1)); }
servers() { local n; n=$(cat "$DIR/size" 2>/dev/null || echo 3); seq -s, -f "127.0.0.1:74%02g" 1 "$n"; }
ctl() { BERTH_SERVER=$(servers) "$BIN/berthctl" "$@"; }

wait_for() { # wait_for SECONDS CMD...
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { echo "timed out: $*" >&2; return 1; }
    sleep 0.3
  done
}

up() {
  local n=${1:-3}
  [[ $n =~ ^[1-9]$ ]] || { echo "N must be 1..9" >&2; exit 2; }
  [ -f "$DIR/size" ] && { echo "a local cluster is already up in $DIR: run '$0 down' first" >&2; exit 1; }
  ensure_packages kill:procps
  ensure_rust
  cargo build --release --workspace --bins
  mkdir -p "$DIR"
  echo "$n" > "$DIR/size"
  for i in $(seq 1 "$n"); do
    local role=(--bootstrap)
    ((i == 1)) || role=(--join "127.0.0.1:$(port 1)")
    "$BIN/berth-server" --data-dir "$DIR/server-$i" --listen "127.0.0.1:$(port "$i")" "${role[@]}" \
      > "$DIR/server-$i.log" 2>&1 &
    echo $! > "$DIR/server-$i.pid"
    ((i > 1)) || wait_for 30 "$BIN/berthctl" -s "127.0.0.1:$(port 1)" cluster status
  done
  wait_for 60 bash -c "BERTH_SERVER=$(servers) $BIN/berthctl cluster status -o json | grep -c '\"follower\"' | grep -qx $((n - 1))"
  ctl apply -f deploy/examples/demo.yaml
  status
  echo
  echo "Try: BERTH_SERVER=$(servers) $BIN/berthctl service ls"
}

status() {
  ctl cluster status
  echo
  ctl service ls
}

down() {
  local f
  for f in "$DIR"/server-*.pid; do
    [ -e "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
  done
  sleep 1
  for f in "$DIR"/server-*.pid; do
    [ -e "$f" ] || continue
    kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  rm -rf "$DIR"
  echo "local cluster stopped and removed"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  status) status ;;
  down) down ;;
  *) echo "usage: $0 up [N] | status | down" >&2; exit 2 ;;
esac
