#!/usr/bin/env bash
# Makes a minimal Debian 11 root (glibc 2.31, GLIBC_FLOOR in
# deploy/lib/setup.sh) in target/roots/debian-11 and prints its path: the
# release test (tests/tests/release.rs) runs the release binaries there.
# Nothing is done when the root is there already.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/setup.sh
root=$PWD/target/roots/debian-11
if [ -f "$root/.complete" ]; then
  echo "$root"
  exit 0
fi
ensure_packages debootstrap:debootstrap
rm -rf "$root"
mkdir -p "$(dirname "$root")"
debootstrap --variant=minbase bullseye "$root" http://deb.debian.org/debian >&2
touch "$root/.complete"
echo "$root"
