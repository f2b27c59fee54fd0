# Debian packages ingot needs, sourced by cri/run.sh (build and run ingotd) and tests/run.sh
# (the whole test suite): one list, so the daemon's command works on a fresh machine too.

# To build: protoc compiles the CRI protos; libseccomp (through pkg-config) is linked by the
# runtime helper; libelf and zlib build libbpf, for the eBPF device filter of cgroup v2.
INGOT_BUILD_PACKAGES=(protobuf-compiler libseccomp-dev pkg-config libelf-dev zlib1g-dev)
# What ingotd uses at run time: the CNI plugins its default network configuration names
# (bridge, host-local), iptables for the plugins that masquerade and map host ports (bridge's
# ipMasq, portmap), nsenter and mount from util-linux.
INGOT_RUN_PACKAGES=(containernetworking-plugins iptables util-linux)

# Installs the given packages with apt-get (after `apt-get update`), unless all are there.
install_packages() {
    local missing=()
    local package
    for package in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed"; then
            missing+=("$package")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    echo "installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
}
