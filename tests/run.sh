#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what it needs,
# then checks formatting and lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/setup.sh

ensure_packages kill:procps gcc:gcc
ensure_rust

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# End-to-end tests start the real binaries.
cargo build --workspace --bins
cargo test --workspace
