#!/usr/bin/env bash
# Builds ingotd and starts it on its embedded defaults, on a fresh machine too: installs the
# Debian packages the build and the daemon need (cri/packages.sh), builds the release binaries
# (ingotd, the shim and its runtime helper, which ingotd finds beside itself), then runs
# `ingotd` with the arguments given (none: unix:///run/ingot/ingot.sock, /var/lib/ingot,
# /run/ingot). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "cri/run.sh: run as root (ingotd creates namespaces, mounts and cgroups)" >&2
    exit 1
fi
if ! command -v cargo >/dev/null; then
    echo "cri/run.sh: cargo is not on PATH (install a Rust toolchain, 1.85 or newer)" >&2
    exit 1
fi

# shellcheck source=cri/packages.sh
source cri/packages.sh
install_packages "${INGOT_BUILD_PACKAGES[@]}" "${INGOT_RUN_PACKAGES[@]}"

cargo build --release --locked --workspace --bins
exec target/release/ingotd "$@"
