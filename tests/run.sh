#!/usr/bin/env bash
# The whole test suite: installs the Debian packages the tests use, builds every binary, checks
# formatting and lints, and runs unit and integration tests. Run as root (the integration tests
# create containers, cgroups and mounts, and remove them).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: run as root (the integration tests create containers)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends \
    busybox-static containerd runc crun libseccomp-dev pkg-config protobuf-compiler \
    skopeo docker-registry containernetworking-plugins iproute2 numactl rt-tests util-linux procps

cargo fmt --all --check
cargo build --workspace --bins --locked
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

# The CRI validation suite against ingotd, offline (tests/critest.sh: what is skipped and why).
tests/critest.sh
