#!/usr/bin/env bash
# Builds the previous release (tests/fixtures/release/) into
# target/previous/bin and prints that path, for the upgrade test
# (tests/tests/upgrade.rs). Its dependencies are this build's: the
# compiled crates of target/debug are brought into its own target
# directory first, so only berth's crates compile. Nothing is done when
# the binaries of that release are there already.
set -euo pipefail
cd "$(dirname "$0")/.."
release=tests/fixtures/release
rev=$(head -1 "$release/previous.rev")
out=$PWD/target/previous
if [ -x "$out/bin/berth-server" ] && [ "$(cat "$out/rev" 2>/dev/null)" = "$rev" ]; then
  echo "$out/bin"
  exit 0
fi
rm -rf "$out"
mkdir -p "$out/src" "$out/target/debug" "$out/bin"
tar -xJf "$release/previous.tar.xz" -C "$out/src"
# berth's own crates keep the same names and hashes in either tree (cargo
# hashes a workspace's paths from its root), so they are left out: the
# previous release's would otherwise be written through the links into
# this build's. The others are linked (their files are never rewritten
# in place) or, for build scripts' outputs and fingerprints, copied.
if [ -d target/debug/deps ]; then
  mkdir -p "$out/target/debug/deps"
  find target/debug/deps -maxdepth 1 -type f ! -name '*berth*' -exec ln -t "$out/target/debug/deps" {} +
fi
for dir in build .fingerprint; do
  [ -d "target/debug/$dir" ] || continue
  mkdir -p "$out/target/debug/$dir"
  find "target/debug/$dir" -mindepth 1 -maxdepth 1 ! -name '*berth*' -exec cp -a -t "$out/target/debug/$dir" {} +
done
(cd "$out/src" && CARGO_TARGET_DIR="$out/target" cargo build --bins \
  -p berth-control-plane -p berth-node-agent -p berth-monitor -p berth-ctl >&2)
for b in berth-server berth-agent berth-shim berth-monitor berthctl; do
  cp "$out/target/debug/$b" "$out/bin/"
done
# The sources and the build are not needed once the binaries are out.
rm -rf "$out/src" "$out/target"
echo "$rev" > "$out/rev"
echo "$out/bin"
