# What the benchmarks share (sourced after deploy/lib/setup.sh, with $bin,
# $work and a pids array set): polling, and berth on one machine, a
# registry on loopback holding the tests' busybox image, one bootstrapped
# server and an agent joined with the worker token.

# ms: now, in ns; since T0: ms from T0 to now.
ms() { date +%s%N; }
since() { echo $((($(ms) - $1) / 1000000)); }

# wait_until SECONDS CMD... : polls every 20 ms until CMD succeeds.
wait_until() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    ((SECONDS < deadline)) || { echo "timed out: $*" >&2; return 1; }
    sleep 0.02
  done
}

# berth_server RUN_DIR: the registry (busybox pushed as $image) and the
# server ($server, container addresses from 198.19.128.0/18), with the
# agent's and berthctl's environment exported and the image pulled into
# the agent's store; $port is the registry's.
berth_server() {
  port=$((20000 + RANDOM % 20000))
  mkdir -p "$work/registry"
  printf 'version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%s}\n' \
    "$work/registry" "$port" >"$work/registry.yml"
  docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
  pids+=($!)
  wait_until 20 curl -sf "http://127.0.0.1:$port/v2/" -o /dev/null
  image=127.0.0.1:$port/busybox:v1
  "$bin/berth-image" --push "$image" >/dev/null
  server=127.0.0.1:$((port + 1))
  "$bin/berth-server" --bootstrap --data-dir "$work/server" --listen "$server" --cluster-cidr 198.19.128.0/18 \
    >"$work/server.log" 2>&1 &
  pids+=($!)
  printf '[[registry]]\nhost = "127.0.0.1:%s"\ninsecure = true\n' "$port" >"$work/registries.toml"
  export BERTH_AGENT_DATA_DIR=$work/agent BERTH_AGENT_RUN_DIR=$1 \
    BERTH_CGROUP_PARENT=berth-bench BERTH_REGISTRIES=$work/registries.toml BERTH_SERVER=$server \
    BERTH_CONFIG=$work/server/admin.conf
  "$bin/berth-agent" image pull "$image" >/dev/null
  wait_until 30 "$bin/berthctl" cluster join-token worker -q
}

# berth_agent BRIDGE: an agent named bench joins with the worker token, on
# BRIDGE; returns once its node is ready; $agent is its pid.
berth_agent() {
  BERTH_TOKEN=$("$bin/berthctl" cluster join-token worker -q) \
    "$bin/berth-agent" --name bench --advertise 127.0.0.1:7500 --bridge "$1" >"$work/agent.log" 2>&1 &
  agent=$!
  pids+=("$agent")
  wait_until 30 bash -c "$bin/berthctl node ls | grep -q ready"
}

# umoci_busybox DIR REF APPLET...: an image made as a user would make it,
# not by berth's tools: umoci builds Debian's static busybox (with these
# applets) in one layer under DIR, skopeo pushes it to REF (a registry on
# loopback, plain HTTP). Its root filesystem stays in DIR/unpacked/rootfs.
umoci_busybox() {
  local dir=$1 ref=$2 applet; shift 2
  umoci init --layout "$dir/umoci"
  umoci new --image "$dir/umoci:bb"
  umoci unpack --image "$dir/umoci:bb" "$dir/unpacked" >/dev/null
  mkdir -p "$dir/unpacked/rootfs/bin" "$dir/unpacked/rootfs/tmp"
  cp /bin/busybox "$dir/unpacked/rootfs/bin/busybox"
  for applet in "$@"; do ln -s busybox "$dir/unpacked/rootfs/bin/$applet"; done
  umoci repack --image "$dir/umoci:bb" "$dir/unpacked"
  umoci config --image "$dir/umoci:bb" --config.cmd sh --config.env PATH=/bin
  skopeo copy -q --dest-tls-verify=false "oci:$dir/umoci:bb" "docker://$ref"
}
