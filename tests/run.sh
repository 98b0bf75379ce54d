#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what it needs,
# then checks formatting and lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/setup.sh

# Agent tests: a real registry, and static busybox as the payload of test images.
ensure_packages kill:procps gcc:gcc docker-registry:docker-registry busybox:busybox-static openssl:openssl \
  ip:iproute2 iptables:iptables nsenter:util-linux tcpdump:tcpdump wg:wireguard-tools \
  conntrack:conntrack dig:bind9-dnsutils dnsmasq:dnsmasq-base tini-static:tini \
  redis-server:redis-server fakeroot:fakeroot strip:binutils systemd-analyze:systemd
ensure_rust

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# End-to-end tests start the real binaries.
cargo build --workspace --bins
# The upgrade test starts from the previous release.
bash tests/previous.sh >/dev/null
# The package and release tests take the release package, and run it on
# the oldest glibc it supports.
bash deploy/package.sh >/dev/null
bash tests/oldest-glibc.sh >/dev/null
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f; exit (f > 0) }' "$log"
