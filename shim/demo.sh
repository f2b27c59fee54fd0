#!/usr/bin/env bash
# Runs one container through ingot's shim under containerd, as a user would with ctr:
#   sudo shim/demo.sh [COMMAND...]        (default: echo hello from ingot)
# Builds the shim, starts a private containerd (own root, state and socket in a temp dir, CRI
# plugin disabled) with the shim on its PATH, imports a busybox test image built from
# /bin/busybox, runs the container with --runtime io.containerd.ingot.v2, and cleans up.
# Needs the packages containerd and busybox-static.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- echo hello from ingot

cargo build --release --workspace --bins --locked >&2
bin="$PWD/target/release"
work=$(mktemp -d /tmp/ingot-demo.XXXXXX)
ns="ingot-demo-$$"
cat > "$work/config.toml" <<TOML
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
[ttrpc]
  address = "$work/containerd.sock.ttrpc"
TOML
PATH="$bin:$PATH" containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
containerd_pid=$!
cleanup() {
    ctr --address "$work/containerd.sock" -n "$ns" containers rm demo >/dev/null 2>&1 || true
    kill "$containerd_pid" 2>/dev/null || true
    wait "$containerd_pid" 2>/dev/null || true
    for hierarchy in /sys/fs/cgroup/*; do rmdir "$hierarchy/$ns" 2>/dev/null || true; done
    grep -o " $work/[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$work/containerd.sock" ] && break; sleep 0.1; done

ctr="ctr --address $work/containerd.sock -n $ns"
"$bin/ingot-bench" image "$work/busybox-oci.tar" >&2
$ctr images import "$work/busybox-oci.tar" >&2
$ctr run --rm --runtime io.containerd.ingot.v2 docker.io/library/ingot-busybox:test demo "$@"
