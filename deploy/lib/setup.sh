# Shared setup for berth's scripts: system packages and a Rust toolchain.
# Sourced, not run. Every script that needs something installs it itself, so
# a fresh Debian machine needs nothing beforehand.

# ensure_packages CMD:PACKAGE... installs PACKAGE when CMD is missing; a
# CMD that starts with / is a file the package installs (a library's header).
ensure_packages() {
  local missing=() pair want
  for pair in "$@"; do
    want=${pair%%:*}
    if [[ $want == /* ]]; then
      [ -e "$want" ] || missing+=("${pair#*:}")
    else
      command -v "$want" >/dev/null 2>&1 || missing+=("${pair#*:}")
    fi
  done
  ((${#missing[@]})) || return 0
  echo "installing ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# ensure_rust makes cargo available (rustup's stable toolchain when absent),
# with what berth's build links: libseccomp (the shim loads seccomp filters
# with it) and a C toolchain.
ensure_rust() {
  ensure_packages gcc:gcc /usr/include/seccomp.h:libseccomp-dev
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
  if ! command -v cargo >/dev/null 2>&1; then
    ensure_packages curl:curl gcc:gcc
    echo "installing the Rust toolchain with rustup" >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    . "$HOME/.cargo/env"
  fi
  rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt 2>/dev/null || true
}

# GLIBC_FLOOR is the oldest glibc that release binaries run on (Debian 11,
# Ubuntu 20.04 and RHEL 9 have it or newer).
GLIBC_FLOOR=2.31

# ensure_zigbuild puts cargo-zigbuild and zig (pinned, from PyPI, in a
# virtualenv under target/tools/) first on PATH. Zig links against stubs of
# any glibc version, which is how release binaries get an older floor than
# the build machine's own glibc.
ensure_zigbuild() {
  local venv=$PWD/target/tools/zig pins="ziglang==0.17.1 cargo-zigbuild==0.24.1"
  # Made again when the pins change, so a bump reaches machines that have it.
  if [ ! -x "$venv/bin/cargo-zigbuild" ] || [ "$(cat "$venv/pins" 2>/dev/null)" != "$pins" ]; then
    ensure_packages python3:python3
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      rm -rf "$venv"
      ensure_packages /usr/share/doc/python3-venv:python3-venv
      python3 -m venv "$venv" || return 1
    fi
    echo "installing zig and cargo-zigbuild into $venv" >&2
    # shellcheck disable=SC2086 # the pins are words
    "$venv/bin/pip" install -q $pins >&2 || { rm -rf "$venv"; return 1; }
    echo "$pins" > "$venv/pins"
  fi
  PATH=$venv/bin:$PATH
}

# build_release builds every binary optimized and gathers them in
# target/berth/, whose path it prints. They need glibc $GLIBC_FLOOR or
# newer, whatever glibc builds them: zig links them (in their own target
# directory, target/compat, so the ordinary build is never invalidated),
# and the shim carries libseccomp inside. berth-monitor is linked
# statically: one runs per container, and static it maps no shared
# libraries (RSS 2.3 -> 1.5 MB), and a static binary needs no glibc at all.
#
# Callers use `bin=$(build_release)`: set -e does not reach into a command
# substitution, so every step checks itself.
build_release() {
  local host flags target out=target/berth compat=target/compat seccomp
  host=$(rustc -vV | sed -n 's/^host: //p')
  [ -n "$host" ] || { echo "build_release: cannot tell the host target from rustc -vV" >&2; return 1; }
  [[ $host == *-linux-gnu ]] || { echo "build_release: the host target $host is not a glibc Linux" >&2; return 1; }
  ensure_zigbuild || return 1
  seccomp=$(gcc -print-file-name=libseccomp.a)
  [ -f "$seccomp" ] || { echo "build_release: no libseccomp.a (from libseccomp-dev)" >&2; return 1; }
  # A directory of its own, so that the linker searches no system library
  # directory (whose libc is the build machine's).
  mkdir -p "$compat/seccomp" && cp -f "$seccomp" "$compat/seccomp/" || return 1
  target=$host.$GLIBC_FLOOR
  LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=$PWD/$compat/seccomp \
    cargo zigbuild --release --workspace --bins --target "$target" --target-dir "$compat" >&2 || return 1
  flags="CARGO_TARGET_$(echo "$host" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
  # RUSTFLAGS would override the per-target flags, so it is cleared here.
  env -u RUSTFLAGS "$flags=-C target-feature=+crt-static" \
    cargo build --release -p berth-monitor --target "$host" >&2 || return 1
  mkdir -p "$out" || return 1
  find "$compat/$host/release" -maxdepth 1 -type f -perm -u+x -name 'berth*' -exec cp -f {} "$out/" \; || return 1
  cp -f "target/$host/release/berth-monitor" "$out/" || return 1
  echo "$PWD/$out"
}

# remove_node_network BRIDGE RUN_DIR: what an agent's node network leaves
# once the agent is gone: task namespaces under RUN_DIR/netns (user
# namespaces in netns/users), the bridge, the iptables jumps tagged
# berth:BRIDGE and the node's chains they lead to.
remove_node_network() {
  local bridge=$1 run=$2 ns table rule
  for ns in "$run"/netns/* "$run"/netns/users/*; do
    [ -f "$ns" ] || continue
    umount -l "$ns" 2>/dev/null || true
    rm -f "$ns"
  done
  ip link del dev "$bridge" 2>/dev/null || true
  for table in filter nat; do
    iptables -w -t "$table" -S 2>/dev/null | grep -F "berth:$bridge\"" | sed 's/^-A //' |
      while read -r rule; do eval "iptables -w -t $table -D $rule" || true; done
  done
  for chain in filter:FWD nat:POST nat:MESH; do
    iptables -w -t "${chain%%:*}" -F "BERTH-${chain#*:}-$bridge" 2>/dev/null || true
    iptables -w -t "${chain%%:*}" -X "BERTH-${chain#*:}-$bridge" 2>/dev/null || true
  done
}
