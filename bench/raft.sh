#!/usr/bin/env bash
# Control-plane benchmark: a 3-server berth cluster and a 3-member etcd
# cluster on loopback, under the same load from the same generator, both with
# mutual TLS between peers and for clients.
# Arguments go to berth-bench (see `berth-bench --help`): --clients, --seconds,
# --kills, --etcd-kills, --skip-etcd.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/setup.sh
ensure_packages etcd:etcd-server kill:procps openssl:openssl
ensure_rust
cargo build --release --workspace --bins
exec target/release/berth-bench "$@"
