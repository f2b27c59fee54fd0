#!/usr/bin/env bash
# The test node's parts (tests/tests/vm_rt.rs): qemu from bookworm-backports (the image's
# qemu-utils comes from there and blocks bookworm's qemu-system-x86) and Debian's PREEMPT_RT
# 6.12 kernel from bookworm-backports, unpacked from its .deb (never installed on this host)
# into $INGOT_VM_DIR (default /var/cache/ingot-vm): vmlinuz and its modules.
set -euo pipefail
VM_DIR="${INGOT_VM_DIR:-/var/cache/ingot-vm}"
KERNEL_PACKAGE="${INGOT_VM_KERNEL_PACKAGE:-linux-image-6.12.95+deb12-rt-amd64-unsigned}"

if [ ! -e /etc/apt/sources.list.d/ingot-backports.sources ] &&
    ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d; then
    cat > /etc/apt/sources.list.d/ingot-backports.sources <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    apt-get update
fi
if ! command -v qemu-system-x86_64 > /dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        -t bookworm-backports qemu-system-x86
fi

if [ ! -e "$VM_DIR/$KERNEL_PACKAGE/vmlinuz" ]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && apt-get download "$KERNEL_PACKAGE")
    mkdir -p "$VM_DIR/$KERNEL_PACKAGE.partial"
    dpkg-deb -x "$work"/*.deb "$VM_DIR/$KERNEL_PACKAGE.partial"
    cp "$VM_DIR/$KERNEL_PACKAGE.partial"/boot/vmlinuz-* "$VM_DIR/$KERNEL_PACKAGE.partial/vmlinuz"
    rm -rf "$VM_DIR/$KERNEL_PACKAGE"
    mv "$VM_DIR/$KERNEL_PACKAGE.partial" "$VM_DIR/$KERNEL_PACKAGE"
fi
ln -sfn "$VM_DIR/$KERNEL_PACKAGE" "$VM_DIR/kernel"
echo "test node kernel: $VM_DIR/kernel/vmlinuz"
