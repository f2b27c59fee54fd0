#!/usr/bin/env bash
# crio-tuning.sh: what the reference CRI-O 1.32 does with the high-performance annotations.
#
# Runs the private CRI-O from ../shared/crio (setup-crio.sh; cgroupfs driver, runc via conmon) with an
# extra runtime handler "high-performance" whose allowed_annotations are the six tuning annotations
# (cpu-load-balancing, cpu-quota, irq-load-balancing, cpu-c-states, cpu-freq-governor, cpu-shared .crio.io),
# shared_cpuset = "0", and irqbalance_config_file pointing at a temp file. The handler is a drop-in in
# $D/crio.conf.d, which setup-crio.sh passes as --config-dir (written before `up`; the shared dir is not
# touched). Then, one host-network pod per case, it starts a Guaranteed container (cpuset "1",
# cpu_quota = cpu_period = 100000, cpu_shares 1024, 64Mi) with the annotations of that case and records:
# the RunPodSandbox/CreateContainer/StartContainer result (and error text), the container's and the pod's
# cpu.cfs_quota_us, the container's cpuset.cpus and cpuset.sched_load_balance (running and after stop),
# the host files below while running and after removal, exec CPU affinity and OPENSHIFT_* env, and
# CRI-O's log lines about the hooks. It prints a table.
#
# HOST FILES. CRI-O's hooks write the real host. This script touches the host ONLY through CRI-O, and only
# these files (all saved before CRI-O starts, restored at exit (trap EXIT, also on failure) where they
# differ, then compared byte for byte with the saved copy; the result is printed and a mismatch fails the
# run):
#   /proc/irq/default_smp_affinity, /proc/irq/*/smp_affinity and smp_affinity_list,
#   /sys/devices/system/cpu/cpu*/power/pm_qos_resume_latency_us,
#   /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor (absent on this VM),
#   /sys/fs/cgroup/cpuset/cpuset.sched_load_balance (root cpuset; checked only),
#   /etc/sysconfig/irqbalance and /etc/sysconfig/orig_irq_banned_cpus (checked only; crio is pointed elsewhere),
#   /run/crio (CRI-O saves original pm_qos/governor values under /var/run/crio/cpu; removed if we made it).
# CGROUPS. Pods use cgroup parents under /crio-hp-cmp-<pid> (made here in each v1 hierarchy, pod cgroups
# set up as kubelet would for a Guaranteed pod: cfs quota = sum of limits, shares, memory limit, cpuset);
# they are removed at exit (also the copies runc 1.1 makes in /sys/fs/cgroup/unified). No other cgroup is
# written. Only host-network pods (no bridge). Processes are stopped through CRI and setup-crio.sh down (by pid).
# Leaves nothing behind: setup-crio.sh down, temp dirs removed, cgroups removed; the cleanup checks this.
#
# CASES (one pod each): every annotation alone and together; malformed values; containers that are not
# Guaranteed/whole-CPU (no cpuset, fractional shares, burstable cgroup parent, requests<limits); the default
# runc handler (annotations not allowed); per-container "<annotation>/<container>" keys and container-level
# annotations; cpu-shared.crio.io/<container> with shared_cpuset; exec affinity on a 2-CPU container (with
# exec_cpu_affinity = "first" on the handler, a CRI-O >= 1.34 key that 1.32 ignores).
# Takes about 45 s. Needs Debian's conmon, runc, skopeo, docker-registry, jq (see ../shared/crio/README.md).
#
# usage: sudo tests/compare/crio-tuning.sh        (root; needs ../shared/crio and ../shared/cri-tools)
#   env: CRIO_DIR (default ../shared/crio)  CRICTL (default ../shared/cri-tools/crictl)
#        KEEP_LOG=FILE  copy CRI-O's full log there before cleanup
#        ONLY="case1 case2"  run only these cases (names as in the table)
set -euo pipefail

SHARED="$(cd "$(dirname "$0")/../../.." && pwd)/shared"
CRIO_DIR=${CRIO_DIR:-$SHARED/crio}
CRICTL_BIN=${CRICTL:-$SHARED/cri-tools/crictl}
SETUP=$CRIO_DIR/setup-crio.sh
export D=/tmp/crio-hp-cmp.$$
export CLAMP=${CLAMP:-1}
CG=crio-hp-cmp-$$                     # our cgroup subtree (relative to each v1 hierarchy root)
KEEP_LOG=${KEEP_LOG:-}
ONLY=${ONLY:-}
CTR_NAME=work
MEM=67108864

[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }
for f in "$SETUP" "$CRIO_DIR/crio" "$CRICTL_BIN" /usr/bin/conmon; do [ -e "$f" ] || { echo "missing $f (conmon: apt-get install conmon)" >&2; exit 1; }; done
for b in runc skopeo docker-registry jq; do command -v $b > /dev/null || { echo "missing $b (Debian package)" >&2; exit 1; }; done
# setup-crio.sh always makes (and `down` always removes) /sys/fs/cgroup/*/crio-cg: never run beside another one
if [ -e /sys/fs/cgroup/cpu/crio-cg ]; then echo "another setup-crio.sh instance is up (/sys/fs/cgroup/cpu/crio-cg exists); not running" >&2; exit 1; fi

# a free loopback port for setup-crio's registry
PORT=
for p in $(seq 5157 5199); do if ! (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then PORT=$p; break; fi; done
[ -n "$PORT" ] || { echo "no free port" >&2; exit 1; }
export PORT
IMG=127.0.0.1:$PORT/crio/busybox:1

V1_HIER=()
for c in /sys/fs/cgroup/*; do
  [ -d "$c" ] || continue
  case $c in */unified) continue;; esac
  grep -q " $c cgroup " /proc/mounts || continue
  V1_HIER+=("$c")
done

# ---------------------------------------------------------------- host state: save / restore / verify
HOST_FILES=()
save_host() {
  local f
  HOST_FILES=(/proc/irq/default_smp_affinity)
  for f in /proc/irq/*/smp_affinity /proc/irq/*/smp_affinity_list \
           /sys/devices/system/cpu/cpu[0-9]*/power/pm_qos_resume_latency_us \
           /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor \
           /sys/fs/cgroup/cpuset/cpuset.sched_load_balance; do
    [ -f "$f" ] && HOST_FILES+=("$f")
  done
  mkdir -p "$W/saved"
  local i=0
  for f in "${HOST_FILES[@]}"; do
    cat "$f" > "$W/saved/$i" 2>/dev/null || : > "$W/saved/$i"
    i=$((i+1))
  done
  # files that must not appear/change: their existence (and content) before
  for f in /etc/sysconfig/irqbalance /etc/sysconfig/orig_irq_banned_cpus /run/crio /run/crio/cpu; do
    if [ -e "$f" ]; then echo "$f" >> "$W/preexisting"; fi
  done
  touch "$W/preexisting"
  for f in /etc/sysconfig/irqbalance /etc/sysconfig/orig_irq_banned_cpus; do
    [ -f "$f" ] && cp -p "$f" "$W/saved/$(echo "$f" | tr / _)"
  done
  HOST_SAVED=1
}

restore_host() {   # restore what differs; print before/after of the interesting files; return 1 on mismatch
  local i=0 f bad=0 cur
  for f in "${HOST_FILES[@]}"; do
    if ! cmp -s "$W/saved/$i" <(cat "$f" 2>/dev/null); then
      case $f in
        */smp_affinity_list) ;;                       # restored through smp_affinity below
        */cpuset.sched_load_balance) echo "WARN: root $f changed (not ours to write back): $(cat "$f")";;
        *) echo "restoring $f: $(cat "$f" 2>/dev/null | tr '\n' ' ')-> $(tr '\n' ' ' < "$W/saved/$i")"
           printf '%s' "$(cat "$W/saved/$i")" > "$f" 2>/dev/null || echo "WARN: write $f failed";;
      esac
    fi
    i=$((i+1))
  done
  # second pass for *_list whose smp_affinity did not bring it back
  i=0
  for f in "${HOST_FILES[@]}"; do
    case $f in */smp_affinity_list)
      if ! cmp -s "$W/saved/$i" <(cat "$f" 2>/dev/null); then printf '%s' "$(cat "$W/saved/$i")" > "$f" 2>/dev/null || true; fi;;
    esac
    i=$((i+1))
  done
  echo
  echo "== host files: saved before CRI-O started vs now (byte-for-byte)"
  i=0
  local nirq=0 nirq_ok=0
  for f in "${HOST_FILES[@]}"; do
    if cmp -s "$W/saved/$i" <(cat "$f" 2>/dev/null); then st=identical; else st=DIFFERENT; bad=1; fi
    case $f in
      /proc/irq/[0-9]*) nirq=$((nirq+1)); [ $st = identical ] && nirq_ok=$((nirq_ok+1))
                        [ $st = identical ] || echo "  $f before=$(tr '\n' ' ' < "$W/saved/$i") now=$(cat "$f" | tr '\n' ' ') $st";;
      *) printf '  %-58s before=%-10s now=%-10s %s\n' "$f" "$(tr -d '\n' < "$W/saved/$i")" "$(cat "$f" 2>/dev/null | tr -d '\n')" $st;;
    esac
    i=$((i+1))
  done
  echo "  /proc/irq/*/smp_affinity{,_list}: $nirq_ok of $nirq files identical ($(cat /proc/irq/[0-9]*/smp_affinity_list 2>/dev/null | sort | uniq -c | tr -s ' ' | tr '\n' ';'))"
  for f in /etc/sysconfig/irqbalance /etc/sysconfig/orig_irq_banned_cpus; do
    s="$W/saved/$(echo "$f" | tr / _)"
    if grep -qx "$f" "$W/preexisting"; then
      if cmp -s "$s" "$f"; then echo "  $f: identical"; else echo "  $f: DIFFERENT"; bad=1; fi
    elif [ -e "$f" ]; then echo "  $f: CREATED during the run (removing)"; rm -f "$f"; bad=1
    else echo "  $f: absent before and after"; fi
  done
  return $bad
}

# ---------------------------------------------------------------- cgroups we own
cg_make() {  # cg_make REL [quota shares]  (REL under each hierarchy root, e.g. $CG/pod1)
  local rel=$1 quota=${2:-} shares=${3:-} h p acc
  for h in "${V1_HIER[@]}"; do
    acc=$h
    for p in ${rel//\// }; do
      acc=$acc/$p
      if [ ! -d "$acc" ]; then
        mkdir "$acc"
        if [ -f "$acc/cpuset.cpus" ]; then
          cat "$(dirname "$acc")/cpuset.cpus" > "$acc/cpuset.cpus"; cat "$(dirname "$acc")/cpuset.mems" > "$acc/cpuset.mems"
        fi
      fi
    done
  done
  if [ -n "$quota" ]; then   # pod-level values as kubelet writes them for a pod cgroup (cgroupfs driver)
    echo 100000 > /sys/fs/cgroup/cpu/$rel/cpu.cfs_period_us
    echo "$quota" > /sys/fs/cgroup/cpu/$rel/cpu.cfs_quota_us
    echo "$shares" > /sys/fs/cgroup/cpu/$rel/cpu.shares
    echo $MEM > /sys/fs/cgroup/memory/$rel/memory.limit_in_bytes
  fi
}
cg_remove_all() {
  local h left=0
  for h in "${V1_HIER[@]}" /sys/fs/cgroup/unified; do   # runc 1.1 in hybrid mode also makes the path in cgroup2
    [ -d "$h/$CG" ] || continue
    find "$h/$CG" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [ -d "$h/$CG" ] && { echo "WARN: $h/$CG still there: $(find "$h/$CG" -name cgroup.procs -exec cat {} + | tr '\n' ' ')"; left=1; }
  done
  return $left
}

# ---------------------------------------------------------------- cleanup (trap)
W=$(mktemp -d /tmp/crio-hp-save.XXXXXX)   # saved host values + per-case scratch
CRIO_UP=0
HOST_SAVED=0
cleanup() {
  local rc=$? bad=0
  set +e
  trap - EXIT INT TERM
  echo
  echo "== cleanup"
  if [ "$CRIO_UP" = 1 ] || [ -d "$D" ]; then
    [ -n "$KEEP_LOG" ] && [ -f "$D/crio.log" ] && cp "$D/crio.log" "$KEEP_LOG" && echo "CRI-O log copied to $KEEP_LOG"
    "$SETUP" down >/dev/null 2>&1
    [ -d "$D" ] && { echo "WARN: $D left after down"; rm -rf "$D"; }
  fi
  cg_remove_all || bad=1
  # CRI-O's save dir for original pm_qos / governor values
  if [ -e /run/crio/cpu ]; then
    echo "CRI-O save dir /run/crio/cpu left: $(find /run/crio/cpu | tr '\n' ' ')"
    find /run/crio/cpu -type f | while read -r f; do echo "  $f=$(cat "$f")"; done
  fi
  for f in /run/crio/cpu /run/crio; do
    if [ -e "$f" ] && ! grep -qx "$f" "$W/preexisting" 2>/dev/null; then rm -rf "$f"; echo "removed $f (made by CRI-O during this run)"; fi
  done
  if [ "$HOST_SAVED" = 1 ]; then restore_host || bad=1; fi
  # leftovers: our cgroups, state dir, processes naming it
  local left; left=$(ls -d /sys/fs/cgroup/*/"$CG" "$D" 2>/dev/null || true)
  for p in /proc/[0-9]*; do grep -qs -- "$D" "$p/cmdline" && left+=" pid ${p#/proc/}: $(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)"; done
  if [ -n "$left" ]; then echo "LEFT BEHIND: $left"; bad=1; else echo "nothing left behind: no $D, no /sys/fs/cgroup/*/$CG, no process naming $D"; fi
  rm -rf "$W"
  if [ $bad = 1 ]; then echo "CLEANUP: host state NOT as before (see above)"; [ $rc = 0 ] && rc=3
  else echo "CLEANUP: host files identical to before, cgroups removed, $D removed"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- CRI-O up with the extra handler
save_host
echo "== host before: default_smp_affinity=$(cat /proc/irq/default_smp_affinity) pm_qos_resume_latency_us=$(cat /sys/devices/system/cpu/cpu[0-9]*/power/pm_qos_resume_latency_us | tr '\n' ',') cpufreq=$(ls -d /sys/devices/system/cpu/cpu0/cpufreq 2>/dev/null || echo absent) irqbalance=$(command -v irqbalance || echo absent)"
mkdir -p "$D/crio.conf.d"
RT=$D/runc-clamp; [ "$CLAMP" = 1 ] || RT=$(command -v runc || echo /usr/sbin/runc)
IRQB=$D/irqbalance
printf '# irqbalance config used by crio-tuning.sh (a temp file)\nIRQBALANCE_BANNED_CPUS=""\n' > "$IRQB"
cp "$IRQB" "$W/irqbalance.before"
cat > "$D/crio.conf.d/99-hp-compare.conf" <<EOT
[crio.runtime]
irqbalance_config_file = "$IRQB"
irqbalance_config_restore_file = "disable"
shared_cpuset = "0"
[crio.runtime.runtimes.high-performance]
runtime_path = "$RT"
runtime_type = "oci"
runtime_root = "$D/runc"
monitor_path = "/usr/bin/conmon"
monitor_cgroup = "pod"
allowed_annotations = ["cpu-load-balancing.crio.io", "cpu-quota.crio.io", "irq-load-balancing.crio.io", "cpu-c-states.crio.io", "cpu-freq-governor.crio.io", "cpu-shared.crio.io"]
# CRI-O >= 1.34 only; 1.32 decodes its config with toml.Decode and ignores unknown keys (case exec-2cpu shows the effect)
exec_cpu_affinity = "first"
EOT
CRIO_UP=1
"$SETUP" up > "$W/setup.out" 2>&1 || { cat "$W/setup.out"; exit 1; }
printf 'runtime-endpoint: unix://%s/crio.sock\nimage-endpoint: unix://%s/crio.sock\ntimeout: 60\n' "$D" "$D" > "$W/crictl.yaml"
crictl() { "$CRICTL_BIN" --config "$W/crictl.yaml" "$@"; }
crictl pull "$IMG" > /dev/null
if grep -q 'exec_cpu_affinity' "$D/crio.log"; then EXECAFF="exec_cpu_affinity appears in CRI-O's effective config"
else EXECAFF="exec_cpu_affinity = \"first\" was set on the high-performance handler; CRI-O 1.32 accepted the file and its effective config (logged at start) has no such key"; fi
echo "== CRI-O $("$CRIO_DIR/crio" --version 2>/dev/null | awk '/^crio version/{print $3}') up at $D (registry :$PORT); handlers: $(grep -o 'crio\.runtime\.runtimes\.[a-z-]*\]' "$D/crio.log" | sed 's/.*\.//; s/]//' | sort -u | tr '\n' ' ')"

# ---------------------------------------------------------------- one case
ROWS=()
NOTES=()
N=0
hostcol() {  # compact host state: dsa / pm_qos cpu1 / banned
  printf 'dsa=%s pmqos1=%s ban=%s' "$(cat /proc/irq/default_smp_affinity)" \
    "$(cat /sys/devices/system/cpu/cpu1/power/pm_qos_resume_latency_us)" \
    "$(sed -n 's/^IRQBALANCE_BANNED_CPUS=//p' "$IRQB" | tr -d '"' | head -1)"
}
irqs_changed() {
  local i=0 f n=0
  for f in "${HOST_FILES[@]}"; do
    case $f in /proc/irq/[0-9]*/smp_affinity_list) cmp -s "$W/saved/$i" <(cat "$f") || n=$((n+1));; esac
    i=$((i+1))
  done
  echo $n
}
crierr() {  # the gRPC code and description from crictl's error output
  local o; o=$(cat)
  if grep -q 'rpc error: code = ' <<<"$o"; then
    grep -o 'rpc error: code = .*' <<<"$o" | head -1 | sed -E 's/^rpc error: code = ([A-Za-z]+) desc = /\1: /; s/" (podSandboxID|containerID|image|pod)=.*$//; s/\\"/"/g'
  else short <<<"$o"; fi
}
short() { tr '\n' ' ' | sed -E 's/time="[^"]*" level=([a-z]+) msg=/\1: /; s/  +/ /g; s/ $//'; }

# run_case NAME HANDLER PODANN_JSON CTRANN_JSON CPUSET QUOTA SHARES [burstable]
run_case() {
  local name=$1 handler=$2 podann=$3 ctrann=$4 cpus=$5 quota=$6 shares=$7 kind=${8:-guaranteed}
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return 0; fi
  N=$((N+1))
  local rel=$CG/pod$N
  [ "$kind" = burstable ] && rel=$CG/burstable/pod$N
  cg_make "$rel" "$quota" "$shares"
  local logfrom; logfrom=$(wc -l < "$D/crio.log")
  cp "$W/irqbalance.before" "$IRQB"     # each case starts from the same irqbalance file (ours, a temp file)
  local cpusjson=""; [ -n "$cpus" ] && cpusjson=", \"cpuset_cpus\": \"$cpus\""
  local res="{\"cpu_period\": 100000, \"cpu_quota\": $quota, \"cpu_shares\": $shares$cpusjson, \"memory_limit_in_bytes\": $MEM}"
  cat > "$W/pod.json" <<EOT
{"metadata": {"name": "hp-$name", "uid": "hp-$name-$$", "namespace": "crio-tuning", "attempt": 0},
 "annotations": $podann,
 "linux": {"cgroup_parent": "/$rel", "resources": $res,
           "security_context": {"namespace_options": {"network": 2, "pid": 1}}}}
EOT
  cat > "$W/ctr.json" <<EOT
{"metadata": {"name": "$CTR_NAME"}, "image": {"image": "$IMG", "user_specified_image": "$IMG"},
 "command": ["sleep", "3600"], "annotations": $ctrann,
 "linux": {"resources": $res, "security_context": {"namespace_options": {"network": 2, "pid": 1}}}}
EOT
  local runp=ok create=- start=- rmc=- stp=- rmp=- pod="" cid="" out kept=- st
  local cq=- pq=- ccpus=- slb=- slb_stop=- hrun=- hafter=- irqn=- ex=- env=- err=""
  if out=$(crictl runp --runtime "$handler" "$W/pod.json" 2>&1); then pod=$out
    # which tuning annotations CRI-O kept on the sandbox (disallowed ones are filtered out)
    kept=$( { crictl inspectp -o json "$pod" 2>/dev/null || true; } | jq -r '[.status.annotations // {} | keys[] | select(test("crio\\.io"))] | join(",")' 2>/dev/null | sed 's/\.crio\.io//g' || true)
    [ -n "$kept" ] || kept=none
  else runp=FAIL; err+="${err:+$'\n'    }RunPodSandbox: $(crierr <<<"$out")"; fi
  if [ -n "$pod" ]; then
    if out=$(crictl create --no-pull "$pod" "$W/ctr.json" "$W/pod.json" 2>&1); then cid=$out; create=ok
    else create=FAIL; err+="${err:+$'\n'    }CreateContainer: $(crierr <<<"$out")"; fi
  fi
  if [ -n "$cid" ]; then
    if out=$(crictl start "$cid" 2>&1); then start=ok
    else start=FAIL; err+="${err:+$'\n'    }StartContainer: $(crierr <<<"$out")"
      st=$( { crictl inspect -o go-template --template '{{.status.state}}' "$cid" 2>&1 || true; } | crierr | cut -c1-120)
      err+=$'\n'"    container after the failed start: $st"
      case $st in NotFound*) rmc=gone;; esac
    fi
    local cdir; cdir=$(ls -d /sys/fs/cgroup/cpu/$rel/crio-"$cid"* 2>/dev/null | head -1 || true)
    local sdir=${cdir/\/cpu\//\/cpuset\/}
    pq="$(cat /sys/fs/cgroup/cpu/$rel/cpu.cfs_quota_us) cpus=$(cat /sys/fs/cgroup/cpuset/$rel/cpuset.cpus) slb=$(cat /sys/fs/cgroup/cpuset/$rel/cpuset.sched_load_balance)"
    if [ -n "$cdir" ] && [ -d "$cdir" ]; then
      cq=$(cat "$cdir/cpu.cfs_quota_us"); ccpus=$(cat "$sdir/cpuset.cpus"); slb=$(cat "$sdir/cpuset.sched_load_balance")
    else cq="(no cgroup)"; fi
    hrun=$(hostcol); irqn=$(irqs_changed)
    if [ -d /run/crio/cpu ] && [ -n "$(find /run/crio/cpu -type f)" ]; then
      err+="${err:+$'\n'    }while running, CRI-O's saved originals: $(find /run/crio/cpu -type f | while read -r f; do printf '%s=%s ' "$f" "$(cat "$f")"; done)"
    fi
    if [ "$start" = ok ]; then
      ex="exec=$( { crictl exec "$cid" cat /proc/self/status 2>&1 || true; } | sed -n 's/^Cpus_allowed_list:\s*//p') pid1=$( { crictl exec "$cid" cat /proc/1/status 2>&1 || true; } | sed -n 's/^Cpus_allowed_list:\s*//p')"
      env=$(crictl exec "$cid" env 2>/dev/null | grep '^OPENSHIFT_' | tr '\n' ' ' | sed 's/ $//' || true); [ -n "$env" ] || env=none
      crictl stop --timeout 0 "$cid" > /dev/null 2>&1 || true
      if [ -n "$cdir" ] && [ -d "$sdir" ]; then slb_stop=$(cat "$sdir/cpuset.sched_load_balance"); fi
    fi
    if [ "$rmc" = - ]; then
      if out=$(crictl rm -f "$cid" 2>&1); then rmc=ok; else rmc=FAIL; err+="${err:+$'\n'    }RemoveContainer: $(crierr <<<"$out")"; fi
    fi
  fi
  if [ -n "$pod" ]; then
    if out=$(crictl stopp "$pod" 2>&1); then stp=ok; else stp=FAIL; err+="${err:+$'\n'    }StopPodSandbox: $(crierr <<<"$out")"; fi
    if out=$(crictl rmp -f "$pod" 2>&1); then rmp=ok; else rmp=FAIL; err+="${err:+$'\n'    }RemovePodSandbox: $(crierr <<<"$out")"; fi
  fi
  hafter=$(hostcol)
  [ -n "$err" ] && NOTES+=("[$name] $err")
  # CRI-O's log lines about the hooks for this case
  local lg
  lg=$(tail -n +"$((logfrom+1))" "$D/crio.log" | grep -E 'pre-start hook|pre-stop hook|pre-create hook|Skip PreStart|Disable|Configure|rqbalance|deprecated|is-enabled|level=(error|warning)' \
       | grep -v -E 'Allowed annotations are specified|Failed to find memory.limit_in_bytes|without adding high-performance feature annotations|is-enabled check returned|timed out. Killing|Running pod sandbox|Ran pod sandbox' \
       | sed -E 's/^time="[^"]*" //; s/[0-9a-f]{64}/<id>/g; s/ id=[0-9a-f-]+ name=\/runtime\.v1\.RuntimeService\/([A-Za-z]+)/ (\1)/' | sort | uniq -c | sed -E 's/^ +//' || true)
  [ -n "$lg" ] && NOTES+=("[$name] crio.log:"$'\n'"$(sed 's/^/    /' <<<"$lg")")
  ROWS+=("$name|$handler|$(jq -c . <<<"$podann" | sed 's/\.crio\.io//g')|$(jq -c . <<<"$ctrann" | sed 's/\.crio\.io//g')|$kept|${cpus:-none} q=$quota s=$shares${kind/guaranteed/}|$runp/$create/$start/$rmc/$stp/$rmp|$cq|$pq|$ccpus|$slb/$slb_stop|$irqn|$hrun|$hafter|$ex|$env")
  # remove this pod's cgroup dirs (runc/crio removed the container's; ours are the pod levels)
  local h; for h in "${V1_HIER[@]}" /sys/fs/cgroup/unified; do [ -d "$h/$rel" ] && find "$h/$rel" -depth -type d -exec rmdir {} \; 2>/dev/null || true; done
  return 0
}

L=cpu-load-balancing.crio.io Q=cpu-quota.crio.io I=irq-load-balancing.crio.io C=cpu-c-states.crio.io G=cpu-freq-governor.crio.io S=cpu-shared.crio.io
HP=high-performance
ALL4="{\"$L\":\"disable\",\"$Q\":\"disable\",\"$I\":\"disable\",\"$C\":\"disable\"}"
cg_make "$CG"
# 1. the annotations, Guaranteed whole-CPU container (cpuset 1, quota=period, shares 1024)
run_case all5            $HP "{\"$L\":\"disable\",\"$Q\":\"disable\",\"$I\":\"disable\",\"$C\":\"disable\",\"$G\":\"performance\"}" '{}' 1 100000 1024
run_case all4            $HP "$ALL4" '{}' 1 100000 1024
run_case lb-disable      $HP "{\"$L\":\"disable\"}" '{}' 1 100000 1024
run_case quota-disable   $HP "{\"$Q\":\"disable\"}" '{}' 1 100000 1024
run_case irq-disable     $HP "{\"$I\":\"disable\"}" '{}' 1 100000 1024
run_case cstates-disable $HP "{\"$C\":\"disable\"}" '{}' 1 100000 1024
run_case cstates-max10   $HP "{\"$C\":\"max_latency:10\"}" '{}' 1 100000 1024
run_case cstates-enable  $HP "{\"$C\":\"enable\"}" '{}' 1 100000 1024
run_case gov-performance $HP "{\"$G\":\"performance\"}" '{}' 1 100000 1024
run_case deprecated-true $HP "{\"$L\":\"true\",\"$Q\":\"true\",\"$I\":\"true\"}" '{}' 1 100000 1024
run_case none-on-hp      $HP '{}' '{}' 1 100000 1024
# 2a. malformed values
run_case lb-bogus        $HP "{\"$L\":\"bogus\"}" '{}' 1 100000 1024
run_case quota-bogus     $HP "{\"$Q\":\"bogus\"}" '{}' 1 100000 1024
run_case quota-enable    $HP "{\"$Q\":\"enable\"}" '{}' 1 100000 1024
run_case irq-bogus       $HP "{\"$I\":\"bogus\"}" '{}' 1 100000 1024
run_case cstates-bogus   $HP "{\"$C\":\"bogus\"}" '{}' 1 100000 1024
run_case cstates-abc     $HP "{\"$C\":\"max_latency:abc\"}" '{}' 1 100000 1024
run_case cstates-max0    $HP "{\"$C\":\"max_latency:0\"}" '{}' 1 100000 1024
run_case gov-bogus       $HP "{\"$G\":\"bogus\"}" '{}' 1 100000 1024
# 2b. not Guaranteed / not whole CPUs
run_case nocpuset-all4   $HP "$ALL4" '{}' "" 100000 1024
run_case nocpuset-quota  $HP "{\"$Q\":\"disable\"}" '{}' "" 100000 1024
run_case nocpuset-lb     $HP "{\"$L\":\"disable\"}" '{}' "" 100000 1024
run_case fractional      $HP "$ALL4" '{}' 1 50000 512
run_case fraction-1.5    $HP "$ALL4" '{}' "" 150000 1536
run_case req1-lim2       $HP "{\"$Q\":\"disable\",\"$L\":\"disable\"}" '{}' 1 200000 1024
run_case burstable-parent $HP "$ALL4" '{}' 1 100000 1024 burstable
# 2c. handler that does not allow the annotations (default runc handler)
run_case runc-all4       runc "$ALL4" '{}' 1 100000 1024
run_case runc-none       runc '{}' '{}' 1 100000 1024
# 3. per-container form <annotation>/<container-name>, and container-level annotations
run_case per-ctr-pod     $HP "{\"$L/$CTR_NAME\":\"disable\",\"$Q/$CTR_NAME\":\"disable\",\"$I/$CTR_NAME\":\"disable\",\"$C/$CTR_NAME\":\"disable\"}" '{}' 1 100000 1024
run_case ctr-level-ann   $HP '{}' "$ALL4" 1 100000 1024
# 4. cpu-shared (shared_cpuset = "0")
run_case shared-ctr      $HP "{\"$S/$CTR_NAME\":\"enable\"}" '{}' 1 100000 1024
run_case shared-plain    $HP "{\"$S\":\"enable\"}" '{}' 1 100000 1024
run_case shared-quota    $HP "{\"$S/$CTR_NAME\":\"enable\",\"$Q\":\"disable\"}" '{}' 1 100000 1024
run_case shared-other    $HP "{\"$S/other\":\"enable\"}" '{}' 1 100000 1024
run_case shared-nocpuset $HP "{\"$S/$CTR_NAME\":\"enable\"}" '{}' "" 100000 1024
# 5. exec affinity with two container CPUs
run_case exec-2cpu       $HP "{\"$L\":\"disable\",\"$Q\":\"disable\"}" '{}' 0-1 200000 2048

# ---------------------------------------------------------------- report
echo
echo "== results (CRI-O $("$CRIO_DIR/crio" --version 2>/dev/null | awk '/^crio version/{print $3}'), cgroup v1, cgroupfs; host before: dsa=$(cat "$W/saved/0") pmqos1=0 ban=\"\")"
echo "columns: case | handler | pod annotations | container annotations | tuning annotations CRI-O kept on the sandbox | container cpuset/quota/shares |"
echo "         RunPodSandbox/CreateContainer/StartContainer/RemoveContainer(-f)/StopPodSandbox/RemovePodSandbox (gone = CRI-O removed it itself) |"
echo "         ctr cfs_quota_us | pod cfs_quota_us, cpuset.cpus, sched_load_balance | ctr cpuset.cpus | ctr sched_load_balance running/stopped | IRQs whose smp_affinity_list changed |"
echo "         host while running (default_smp_affinity, cpu1 pm_qos_resume_latency_us, IRQBALANCE_BANNED_CPUS) | host after removal | exec/pid1 Cpus_allowed_list | OPENSHIFT_* env"
for r in "${ROWS[@]}"; do echo "$r"; done
echo "note: $EXECAFF"
echo
echo "== errors and CRI-O log lines per case"
for n in "${NOTES[@]}"; do echo "$n"; done
