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

# The build's and the daemon's packages (cri/packages.sh), and those the tests use.
# shellcheck source=cri/packages.sh
source cri/packages.sh
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends \
    "${INGOT_BUILD_PACKAGES[@]}" "${INGOT_RUN_PACKAGES[@]}" \
    busybox-static containerd runc crun conmon skopeo docker-registry iproute2 numactl rt-tests procps \
    python3-venv
# The test node's qemu and PREEMPT_RT kernel (tests/tests/vm_rt.rs).
tests/vm/prepare.sh

cargo fmt --all --check
cargo build --workspace --bins --locked
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

# The CRI validation suite against ingotd, offline (tests/critest.sh: what is skipped and why).
tests/critest.sh

# The benchmark harness, every runtime and metric a few samples each, so that it cannot rot
# (no assertion on times: speed is judged from full runs, README "Performance").
target/debug/ingot-bench run --smoke --quiet --json target/bench-smoke.json --svg target/bench-smoke.svg
