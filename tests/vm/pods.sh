#!/bin/sh
# The test node's pod run (tests/tests/vm_rt.rs): the init of a guest booted with cgroup v2 only,
# two NUMA nodes (CPUs 0-1 and 2-3) and CPUs 2-3 isolated. It starts a registry holding the test
# image and ingotd on its own config, runs a high-performance pod on CPU 2 and a real-time pod on
# CPU 3 through crictl, prints what it finds as key=value lines between the markers, removes both
# pods, prints what is left, and powers off.
# A container's root is entered with pivot_root(2), which the initramfs root cannot be taken
# from (EINVAL, as on any node booted without switching root): the init moves the whole tree
# to a tmpfs and starts again there.
if [ ! -e /.switched ]; then
    mkdir -p /newroot
    mount -t tmpfs -o size=1200m tmpfs /newroot
    for entry in /*; do
        case "$entry" in
        /proc | /sys | /dev | /newroot) mkdir -p "/newroot$entry" ;;
        *) cp -a "$entry" /newroot/ ;;
        esac
    done
    touch /newroot/.switched
    exec switch_root /newroot /init
fi
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /sys/fs/cgroup
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
# Container root filesystems are overlays; Debian builds overlayfs as a module.
insmod /lib/modules/overlay.ko
hostname test-node
# What systemd does on a node: the controllers pods need, delegated below the root.
echo "+cpuset +cpu +memory +pids +hugetlb" > /sys/fs/cgroup/cgroup.subtree_control

say() { echo "$1=$2"; }
# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
    deadline=$(($(date +%s) + $1))
    shift
    while ! "$@" > /dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        usleep 200000
    done
}
cri() { crictl --config /etc/crictl.yaml --runtime-endpoint unix:///run/ingot/ingot.sock \
    --image-endpoint unix:///run/ingot/ingot.sock --timeout 120s "$@"; }

echo INGOT-VM-BEGIN
docker-registry serve /etc/registry.yml > /tmp/registry.log 2>&1 &
INGOT_LOG=info ingotd --config /etc/ingot/ingot.toml > /tmp/ingotd.log 2>&1 &
if ! wait_for 120 test -S /run/ingot/ingot.sock; then
    echo INGOT-VM-END
    tail -n 40 /tmp/ingotd.log
    poweroff -f
fi
say ingotd up
wait_for 60 wget -q -O /dev/null http://127.0.0.1:5000/v2/ && say registry up
cri pull 127.0.0.1:5000/vm/busybox:1 > /dev/null 2>/tmp/err && say pull ok || say pull "$(cat /tmp/err)"
say affinity.before "$(cat /proc/irq/default_smp_affinity)"

# A high-performance pod: CPU 2 exclusive, load balancing and quota off, IRQs off CPU 2.
hp=$(cri runp --runtime performance /etc/vm/hp-pod.json 2>/tmp/err) || say hp.runp "$(cat /tmp/err)"
hpc=$(cri create "$hp" /etc/vm/hp-ctr.json /etc/vm/hp-pod.json 2>/tmp/err) || say hp.create "$(cat /tmp/err)"
cri start "$hpc" > /dev/null 2>/tmp/err && say hp.start ok || say hp.start "$(cat /tmp/err)"
cg=/sys/fs/cgroup/ingot-vm/hp/$hpc
for file in cpuset.cpus cpuset.cpus.effective cpuset.mems.effective cpuset.cpus.partition \
    cpu.max memory.max hugetlb.2MB.max pids.max; do
    say "hp.$file" "$(cat "$cg/$file" 2>&1)"
done
say hp.pod.cpu.max "$(cat /sys/fs/cgroup/ingot-vm/hp/cpu.max 2>&1)"
say hp.affinity "$(cat /proc/irq/default_smp_affinity)"
say hp.exec "$(cri exec "$hpc" sh -c 'grep -E "^(Cpus|Mems)_allowed_list" /proc/self/status' \
    2>&1 | tr '\t\n' ' ')"
# The eBPF device program: /dev/zero is allowed, a node made for /dev/mem is not. The error is
# captured inside, on stdout, so the line's order does not hang on two streams interleaving.
say hp.devices "$(cri exec "$hpc" sh -c 'head -c 1 /dev/zero > /dev/null; echo zero=$?;
    mknod /tmp/mem c 1 1; err=$(head -c 1 /tmp/mem 2>&1 > /dev/null); echo "mem=$? $err"' \
    2>&1 | tr '\n' ' ')"

# A real-time pod: CPU 3 exclusive, SCHED_FIFO 80, cyclictest on its CPU.
rt=$(cri runp --runtime rt /etc/vm/rt-pod.json 2>/tmp/err) || say rt.runp "$(cat /tmp/err)"
rtc=$(cri create "$rt" /etc/vm/rt-ctr.json /etc/vm/rt-pod.json 2>/tmp/err) || say rt.create "$(cat /tmp/err)"
cri start "$rtc" > /dev/null 2>/tmp/err && say rt.start ok || say rt.start "$(cat /tmp/err)"
exited() { cri inspect -o go-template --template '{{.status.state}}' "$rtc" | grep -q EXITED; }
[ -n "$rtc" ] && wait_for 120 exited && say rt.exited yes
say rt.exit_code "$(cri inspect -o go-template --template '{{.status.exitCode}}' "$rtc" 2>&1)"
cri logs "$rtc" 2>&1 | sed 's/^/rt.log=/'

# The shims' logs, before the pods (and their directories) go.
cat /run/ingot/pods/*/shim.log > /tmp/shims.log 2>/dev/null
for pod in "$hp" "$rt"; do
    cri stopp "$pod" > /dev/null 2>&1 && cri rmp "$pod" > /dev/null 2>&1 || say removed "$pod failed"
done
say after.cgroups "$(ls /sys/fs/cgroup/ingot-vm 2>&1 | grep -v '^cgroup\.\|^cpu\|^memory\|^pids\|^hugetlb\|^io\.' | tr '\n' ' ')"
say after.exclusive "$(cat /sys/fs/cgroup/ingot-vm/cpuset.cpus.exclusive 2>&1)"
say after.affinity "$(cat /proc/irq/default_smp_affinity)"
# Pod shims left; ingotd's shim zygote (`-zygote`) lives as long as ingotd.
say after.shims "$(ps -o args | grep containerd-shim-ingot-v2 | grep -v -e -zygote -e grep | wc -l)"
echo INGOT-VM-END
echo INGOT-LOG-BEGIN
tail -n 60 /tmp/ingotd.log
tail -n 40 /tmp/shims.log
echo INGOT-LOG-END
poweroff -f
