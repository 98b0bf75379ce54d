#!/usr/bin/env bash
# Installs berth on a host without the Debian package: the binaries under
# PREFIX/bin (default /usr/local), the systemd units (their ExecStart
# pointed there) in /etc/systemd/system, default settings in /etc/berth/
# (an existing file is kept), and berthctl's shell completions. Starts
# nothing: set /etc/berth/server.toml or agent.env, then
# `systemctl enable --now berth-server` or `berth-agent`.
#
#   deploy/install.sh [--from DIR] [--prefix DIR]
#
# --from takes the binaries from DIR (as gathered by `build_release`, or
# copied from another machine); without it they are built here. DESTDIR
# installs under another root (as packagers do).
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib/setup.sh

from="" prefix=/usr/local
while (($#)); do
  case $1 in
    --from) from=$2; shift 2 ;;
    --prefix) prefix=$2; shift 2 ;;
    *) echo "install.sh: unknown argument $1 (expected --from DIR, --prefix DIR)" >&2; exit 2 ;;
  esac
done
if [ -z "$from" ]; then
  ensure_rust
  from=$(build_release)
fi
for b in berth-server berth-agent berth-shim berth-monitor berthctl; do
  [ -x "$from/$b" ] || { echo "install.sh: $from/$b is missing" >&2; exit 1; }
done

dest=${DESTDIR:-}
install -d -m 0755 "$dest$prefix/bin"
for b in berth-server berth-agent berth-shim berth-monitor berthctl; do
  install -m 0755 "$from/$b" "$dest$prefix/bin/$b"
done
install -d -m 0755 "$dest/etc/systemd/system"
for unit in berth-server.service berth-agent.service; do
  sed "s|/usr/bin/|$prefix/bin/|" "deploy/systemd/$unit" > "$dest/etc/systemd/system/$unit"
  chmod 0644 "$dest/etc/systemd/system/$unit"
done
install -d -m 0755 "$dest/etc/berth"
for conf in server.toml agent.env; do
  [ -e "$dest/etc/berth/$conf" ] || install -m 0600 "deploy/etc/$conf" "$dest/etc/berth/$conf"
done
"$from/berthctl" completion bash | install -D -m 0644 /dev/stdin "$dest/etc/bash_completion.d/berthctl"
"$from/berthctl" completion zsh | install -D -m 0644 /dev/stdin "$dest$prefix/share/zsh/site-functions/_berthctl"
"$from/berthctl" completion fish | install -D -m 0644 /dev/stdin "$dest/etc/fish/completions/berthctl.fish"
if [ -z "$dest" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
echo "installed berth in $dest$prefix/bin; settings in $dest/etc/berth/" >&2
