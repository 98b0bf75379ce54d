#!/usr/bin/env bash
# Builds the Debian package target/berth/berth_VERSION_amd64.deb, and
# prints its path: berth-server, berth-agent, berth-shim, berth-monitor and
# berthctl; their systemd units; default settings under /etc/berth/;
# berthctl's shell completions; each binary's --help text and the README
# under /usr/share/doc/berth/. Installing it starts nothing: set
# /etc/berth/server.toml or agent.env, then `systemctl enable --now` the
# unit (README.md, "Run on real hosts").
#
# BERTH_PACKAGE_BIN=DIR packages the binaries in DIR instead of building
# them (release binaries gathered elsewhere; ones that need a newer glibc
# or libseccomp's library are refused), and BERTH_PACKAGE_OUT=DIR writes
# the package there.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/setup.sh
ensure_packages dpkg-deb:dpkg fakeroot:fakeroot strip:binutils

if [ -n "${BERTH_PACKAGE_BIN:-}" ]; then
  bin=$BERTH_PACKAGE_BIN
  # The package says what release builds need: refuse binaries that need more.
  for b in berth-server berth-agent berth-shim berth-monitor berthctl; do
    newest=$(objdump -T "$bin/$b" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1 || true)
    if [ -n "$newest" ] && [ "$(printf '%s\n%s\n' "$newest" "$GLIBC_FLOOR" | sort -V | tail -1)" != "$GLIBC_FLOOR" ]; then
      echo "package.sh: $bin/$b needs glibc $newest, newer than $GLIBC_FLOOR (build it with build_release)" >&2
      exit 1
    fi
    if objdump -p "$bin/$b" | grep -q 'NEEDED.*libseccomp'; then
      echo "package.sh: $bin/$b links libseccomp dynamically; the package does not depend on it (build it with build_release)" >&2
      exit 1
    fi
  done
else
  ensure_rust
  bin=$(build_release)
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || { echo "package.sh: no version in Cargo.toml" >&2; exit 1; }
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

for b in berth-server berth-agent berth-shim berth-monitor berthctl; do
  install -D -m 0755 "$bin/$b" "$root/usr/bin/$b"
  # The symbols stay (backtraces name functions); the line tables go.
  strip --strip-debug "$root/usr/bin/$b"
done
install -D -m 0644 -t "$root/lib/systemd/system" deploy/systemd/berth-server.service deploy/systemd/berth-agent.service
# Owner-only: a join token goes in them.
install -D -m 0600 deploy/etc/server.toml "$root/etc/berth/server.toml"
install -D -m 0600 deploy/etc/agent.env "$root/etc/berth/agent.env"
"$bin/berthctl" completion bash | install -D -m 0644 /dev/stdin "$root/usr/share/bash-completion/completions/berthctl"
"$bin/berthctl" completion zsh | install -D -m 0644 /dev/stdin "$root/usr/share/zsh/vendor-completions/_berthctl"
"$bin/berthctl" completion fish | install -D -m 0644 /dev/stdin "$root/usr/share/fish/vendor_completions.d/berthctl.fish"
doc="$root/usr/share/doc/berth"
install -D -m 0644 README.md "$doc/README.md"
install -D -m 0644 docs/architecture.md "$doc/architecture.md"
for b in berth-server berth-agent berthctl; do
  "$bin/$b" --help > "$doc/$b.txt"
done
chmod 0644 "$doc"/*.txt

size=$(du -sk "$root" | cut -f1)
mkdir -p "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<CONTROL
Package: berth
Version: $version
Architecture: $arch
Maintainer: berth developers <berth@example.invalid>
Installed-Size: $size
Depends: libc6 (>= $GLIBC_FLOOR), iproute2, iptables, conntrack, util-linux
Section: admin
Priority: optional
Description: container orchestrator: Raft control plane and node agent
 berth schedules containers onto hosts from a Raft-replicated control plane
 (berth-server), runs them in namespaces and cgroups (berth-agent), joins
 the hosts with a WireGuard overlay and gives services DNS names.
CONTROL
printf '/etc/berth/server.toml\n/etc/berth/agent.env\n' > "$root/DEBIAN/conffiles"
install -m 0755 deploy/debian/postinst "$root/DEBIAN/postinst"
install -m 0755 deploy/debian/prerm "$root/DEBIAN/prerm"

out="${BERTH_PACKAGE_OUT:-$bin}/berth_${version}_${arch}.deb"
fakeroot dpkg-deb -Zgzip --build "$root" "$out" >&2
echo "$out"
