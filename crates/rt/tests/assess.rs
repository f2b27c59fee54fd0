//! `assess` against the fixture roots under `tests/fixtures` (see its README), variations of
//! them in temporary copies, a topology fixture, and this machine's real root.

use std::{
    fs,
    path::{Path, PathBuf},
};

use ingot_rt::{assess, render_table, Check, Readiness, RtError, Status, REQUIRED_FOR_RT_PODS};

const IDS: &[&str] = &[
    "preempt_rt",
    "isolcpus",
    "nohz_full",
    "rcu_nocbs",
    "irq_affinity",
    "irqbalance_banned",
    "sched_rt_runtime",
    "rt_group_sched",
    "thp",
    "numa_balancing",
    "governor_isolated",
    "c_states_isolated",
    "timer_migration",
    "clocksource",
    "swap",
    "hugepages_reserved",
    "kthread_affinity",
    "smt_siblings",
];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A writable copy of a fixture.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn of(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_tree(&fixture(name), dir.path());
        Self { dir }
    }

    fn write(&self, rel: &str, content: &str) -> &Self {
        let path = self.dir.path().join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, format!("{content}\n")).expect("write");
        self
    }

    fn remove(&self, rel: &str) -> &Self {
        let path = self.dir.path().join(rel);
        if path.is_dir() {
            fs::remove_dir_all(path).expect("rm -r");
        } else {
            fs::remove_file(path).expect("rm");
        }
        self
    }

    fn assess(&self) -> Readiness {
        assess(self.dir.path()).expect("assess")
    }
}

fn get<'a>(readiness: &'a Readiness, id: &str) -> &'a Check {
    readiness
        .checks
        .iter()
        .find(|check| check.id == id)
        .unwrap_or_else(|| panic!("no check {id}"))
}

fn value<'a>(check: &'a Check, file: &str) -> &'a str {
    check
        .evidence
        .iter()
        .find(|evidence| evidence.file == file)
        .map(|evidence| evidence.value.as_str())
        .unwrap_or_else(|| {
            panic!(
                "{}: no evidence from {file}: {:?}",
                check.id, check.evidence
            )
        })
}

/// Every report: the checks in order, each with evidence, a remedy exactly when not passing.
fn well_formed(readiness: &Readiness) {
    let ids: Vec<&str> = readiness.checks.iter().map(|check| check.id).collect();
    assert_eq!(ids, IDS);
    for check in &readiness.checks {
        assert!(!check.evidence.is_empty(), "{} has no evidence", check.id);
        assert!(!check.title.is_empty(), "{} has no title", check.id);
        match (&check.status, &check.remedy) {
            (Status::Pass, None) => {}
            (Status::Pass, Some(remedy)) => panic!("{} passes with remedy {remedy}", check.id),
            (_, None) => panic!("{} is {} without a remedy", check.id, check.status),
            (_, Some(remedy)) => assert!(!remedy.is_empty(), "{}", check.id),
        }
    }
}

fn status(readiness: &Readiness, id: &str) -> Status {
    get(readiness, id).status
}

#[test]
fn rt_ready_passes_every_check() {
    let readiness = assess(&fixture("rt-ready")).expect("assess");
    well_formed(&readiness);
    for check in &readiness.checks {
        assert_eq!(check.status, Status::Pass, "{check:#?}");
    }
    assert!(readiness.failed().is_empty());
    assert!(readiness.passes(REQUIRED_FOR_RT_PODS));
    assert!(readiness.passes(IDS));

    let check = get(&readiness, "preempt_rt");
    assert_eq!(value(check, "sys/kernel/realtime"), "1");
    assert!(value(check, "proc/version").contains("PREEMPT_RT"));
    let check = get(&readiness, "isolcpus");
    assert_eq!(
        value(check, "proc/cmdline"),
        "isolcpus=managed_irq,domain,2,3"
    );
    assert_eq!(value(check, "sys/devices/system/cpu/isolated"), "2-3");
    assert_eq!(check.title, "isolated CPUs 2-3");
    let check = get(&readiness, "nohz_full");
    assert_eq!(value(check, "proc/cmdline"), "nohz_full=2,3");
    assert_eq!(value(check, "sys/devices/system/cpu/nohz_full"), "2-3");
    assert_eq!(
        value(get(&readiness, "rcu_nocbs"), "proc/cmdline"),
        "rcu_nocbs=2,3"
    );
    let check = get(&readiness, "irq_affinity");
    assert_eq!(value(check, "proc/irq/default_smp_affinity"), "3");
    assert_eq!(
        value(check, "proc/irq/*/smp_affinity_list"),
        "7 IRQs, none on 2-3"
    );
    assert_eq!(
        value(
            get(&readiness, "irqbalance_banned"),
            "etc/sysconfig/irqbalance"
        ),
        "IRQBALANCE_BANNED_CPUS=0000000c"
    );
    let check = get(&readiness, "sched_rt_runtime");
    assert_eq!(value(check, "proc/sys/kernel/sched_rt_runtime_us"), "-1");
    assert!(check.title.contains("no RT throttling"), "{}", check.title);
    assert_eq!(
        value(
            get(&readiness, "rt_group_sched"),
            "sys/fs/cgroup/cpu/cpu.rt_runtime_us"
        ),
        "950000"
    );
    assert_eq!(
        value(
            get(&readiness, "thp"),
            "sys/kernel/mm/transparent_hugepage/enabled"
        ),
        "always madvise [never]"
    );
    assert_eq!(
        value(
            get(&readiness, "numa_balancing"),
            "proc/sys/kernel/numa_balancing"
        ),
        "0"
    );
    assert_eq!(
        value(
            get(&readiness, "governor_isolated"),
            "sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"
        ),
        "cpu2-3: performance"
    );
    assert_eq!(
        value(
            get(&readiness, "c_states_isolated"),
            "sys/devices/system/cpu/cpu*/power/pm_qos_resume_latency_us"
        ),
        "cpu2-3: n/a"
    );
    assert_eq!(
        value(
            get(&readiness, "timer_migration"),
            "proc/sys/kernel/timer_migration"
        ),
        "0"
    );
    assert_eq!(
        value(
            get(&readiness, "clocksource"),
            "sys/devices/system/clocksource/clocksource0/current_clocksource"
        ),
        "tsc"
    );
    assert_eq!(value(get(&readiness, "swap"), "proc/swaps"), "no entries");
    let check = get(&readiness, "hugepages_reserved");
    assert_eq!(
        value(
            check,
            "sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"
        ),
        "4"
    );
    assert_eq!(check.title, "hugepages reserved: 4 x 1048576kB");
    // rcu_preempt, rcuop/2, ksoftirqd/2, kworker/2:0, kworker/u8:1; not systemd or kthreadd.
    assert_eq!(
        value(get(&readiness, "kthread_affinity"), "proc/*/status"),
        "5 kernel threads (rcu*, ksoftirqd/*, kworker*) checked"
    );
    assert_eq!(
        value(
            get(&readiness, "smt_siblings"),
            "sys/devices/system/cpu/cpu*/topology/thread_siblings_list"
        ),
        "cpu2-3: 2-3"
    );
}

#[test]
fn plain_node_is_not_rt_ready() {
    let readiness = assess(&fixture("plain")).expect("assess");
    well_formed(&readiness);
    use Status::*;
    let expected = [
        ("preempt_rt", Fail),
        ("isolcpus", Warn),
        ("nohz_full", Warn),
        ("rcu_nocbs", Warn),
        ("irq_affinity", Pass),
        ("irqbalance_banned", Pass),
        ("sched_rt_runtime", Pass),
        ("rt_group_sched", Warn),
        ("thp", Pass),
        ("numa_balancing", Pass),
        ("governor_isolated", Pass),
        ("c_states_isolated", Pass),
        ("timer_migration", Warn),
        ("clocksource", Pass),
        ("swap", Pass),
        ("hugepages_reserved", Warn),
        ("kthread_affinity", Pass),
        ("smt_siblings", Pass),
    ];
    for (id, want) in expected {
        assert_eq!(status(&readiness, id), want, "{:#?}", get(&readiness, id));
    }
    assert!(!readiness.passes(REQUIRED_FOR_RT_PODS));
    let failed: Vec<&str> = readiness.failed().iter().map(|check| check.id).collect();
    assert_eq!(failed, ["preempt_rt"]);

    let check = get(&readiness, "preempt_rt");
    assert_eq!(value(check, "sys/kernel/realtime"), "absent");
    assert!(value(check, "proc/version").contains("PREEMPT_DYNAMIC"));
    assert_eq!(check.title, "not a PREEMPT_RT kernel (PREEMPT_DYNAMIC)");
    assert!(check
        .remedy
        .as_deref()
        .is_some_and(|r| r.contains("PREEMPT_RT")));
    // The capture left the command line out: absent, not an error.
    let check = get(&readiness, "isolcpus");
    assert_eq!(value(check, "proc/cmdline"), "absent");
    assert_eq!(value(check, "sys/devices/system/cpu/isolated"), "");
    assert_eq!(
        check.remedy.as_deref(),
        Some("kernel argument isolcpus=managed_irq,domain,<RT CPUs>")
    );
    let check = get(&readiness, "nohz_full");
    assert_eq!(value(check, "sys/devices/system/cpu/nohz_full"), "absent");
    assert_eq!(
        check.remedy.as_deref(),
        Some("kernel argument nohz_full=<RT CPUs>")
    );
    assert_eq!(
        get(&readiness, "rcu_nocbs").remedy.as_deref(),
        Some("kernel argument rcu_nocbs=<RT CPUs>")
    );
    let check = get(&readiness, "irq_affinity");
    assert_eq!(check.title, "no isolated CPUs: nothing to check");
    assert_eq!(value(check, "proc/irq/default_smp_affinity"), "ffff");
    assert_eq!(value(check, "proc/irq/*/smp_affinity_list"), "24 IRQs");
    let check = get(&readiness, "sched_rt_runtime");
    assert_eq!(
        value(check, "proc/sys/kernel/sched_rt_runtime_us"),
        "950000"
    );
    assert_eq!(
        value(check, "proc/sys/kernel/sched_rt_period_us"),
        "1000000"
    );
    let check = get(&readiness, "rt_group_sched");
    assert_eq!(
        value(check, "sys/fs/cgroup/cpu/cpu.rt_runtime_us"),
        "absent"
    );
    assert!(check
        .remedy
        .as_deref()
        .is_some_and(|r| r.contains("CONFIG_RT_GROUP_SCHED")));
    assert_eq!(
        value(
            get(&readiness, "thp"),
            "sys/kernel/mm/transparent_hugepage/enabled"
        ),
        "always [madvise] never"
    );
    let check = get(&readiness, "timer_migration");
    assert_eq!(value(check, "proc/sys/kernel/timer_migration"), "1");
    assert_eq!(
        check.remedy.as_deref(),
        Some("sysctl kernel.timer_migration=0")
    );
    let check = get(&readiness, "hugepages_reserved");
    assert_eq!(
        value(
            check,
            "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
        ),
        "0"
    );
    assert!(check
        .remedy
        .as_deref()
        .is_some_and(|r| r.contains("hugepages=")));
    assert_eq!(value(get(&readiness, "swap"), "proc/swaps"), "no entries");
    assert_eq!(
        value(
            get(&readiness, "irqbalance_banned"),
            "etc/sysconfig/irqbalance"
        ),
        "absent"
    );
}

#[test]
fn isolation_that_does_not_cover_isolcpus_fails() {
    let tree = Tree::of("rt-ready");
    tree.write(
        "proc/cmdline",
        "ro isolcpus=managed_irq,domain,2,3 nohz_full=2 rcu_nocbs=2",
    )
    .write("sys/devices/system/cpu/nohz_full", "2");
    let readiness = tree.assess();
    well_formed(&readiness);
    let check = get(&readiness, "nohz_full");
    assert_eq!(check.status, Status::Fail);
    assert_eq!(
        check.title,
        "nohz_full 2 leaves isolated CPUs 3 with the tick"
    );
    assert_eq!(
        check.remedy.as_deref(),
        Some("kernel argument nohz_full=2-3")
    );
    let check = get(&readiness, "rcu_nocbs");
    assert_eq!(check.status, Status::Fail);
    assert_eq!(
        check.remedy.as_deref(),
        Some("kernel argument rcu_nocbs=2-3")
    );
    assert!(!readiness.passes(REQUIRED_FOR_RT_PODS));
    let failed: Vec<&str> = readiness.failed().iter().map(|check| check.id).collect();
    assert_eq!(failed, ["nohz_full", "rcu_nocbs"]);

    // nohz_full CPUs have their RCU callbacks offloaded without rcu_nocbs=.
    tree.write("proc/cmdline", "ro isolcpus=2,3 nohz_full=2-3")
        .write("sys/devices/system/cpu/nohz_full", "2-3");
    let readiness = tree.assess();
    let check = get(&readiness, "rcu_nocbs");
    assert_eq!(check.status, Status::Pass);
    assert!(
        check.title.contains("implied by nohz_full"),
        "{}",
        check.title
    );
    assert_eq!(value(check, "proc/cmdline"), "(no rcu_nocbs=)");

    // An unparseable argument is a warning, not an error.
    tree.write("proc/cmdline", "ro isolcpus=domain,2-x nohz_full=2-3");
    assert_eq!(status(&tree.assess(), "isolcpus"), Status::Warn);
}

#[test]
fn irqs_on_isolated_cpus_warn() {
    let tree = Tree::of("rt-ready");
    tree.write("proc/irq/default_smp_affinity", "f")
        .write("proc/irq/30/smp_affinity_list", "0-3")
        .write("proc/irq/31/smp_affinity_list", "3");
    let readiness = tree.assess();
    let check = get(&readiness, "irq_affinity");
    assert_eq!(check.status, Status::Warn);
    assert_eq!(
        check.title,
        "IRQs may run on isolated CPUs 2-3: default, 30, 31"
    );
    assert_eq!(
        value(check, "proc/irq/*/smp_affinity_list"),
        "2 of 9 IRQs on isolated CPUs: 30: 0-3, 31: 3"
    );
    assert!(check
        .remedy
        .as_deref()
        .is_some_and(|r| r.starts_with("kernel argument irqaffinity=0-1")));
}

#[test]
fn irqbalance_banned_cpus() {
    let tree = Tree::of("rt-ready");
    tree.write(
        "etc/sysconfig/irqbalance",
        "IRQBALANCE_BANNED_CPUS=00000004",
    );
    let check = get(&tree.assess(), "irqbalance_banned").clone();
    assert_eq!(check.status, Status::Warn);
    assert_eq!(check.title, "irqbalance may move IRQs onto isolated CPUs 3");
    assert!(check.remedy.as_deref().is_some_and(
        |r| r.starts_with("set IRQBALANCE_BANNED_CPUS=0000000c in /etc/sysconfig/irqbalance")
    ));

    // Set but empty: irqbalance bans nothing.
    tree.write("etc/sysconfig/irqbalance", "IRQBALANCE_BANNED_CPUS=");
    assert_eq!(status(&tree.assess(), "irqbalance_banned"), Status::Warn);
    // Not set: irqbalance bans isolated and nohz_full CPUs itself.
    tree.write("etc/sysconfig/irqbalance", "#IRQBALANCE_BANNED_CPUS=");
    assert_eq!(status(&tree.assess(), "irqbalance_banned"), Status::Pass);
    // The Debian location and the list form.
    tree.remove("etc/sysconfig/irqbalance")
        .write("etc/default/irqbalance", "IRQBALANCE_BANNED_CPULIST=2-3");
    let readiness = tree.assess();
    let check = get(&readiness, "irqbalance_banned");
    assert_eq!(check.status, Status::Pass);
    assert_eq!(
        value(check, "etc/default/irqbalance"),
        "IRQBALANCE_BANNED_CPULIST=2-3"
    );
}

#[test]
fn rt_throttling() {
    let tree = Tree::of("rt-ready");
    for (runtime, want) in [
        ("-1", Status::Pass),
        ("950000", Status::Pass),
        ("1000000", Status::Pass),
        ("500000", Status::Warn),
        ("0", Status::Fail),
        ("lots", Status::Warn),
    ] {
        tree.write("proc/sys/kernel/sched_rt_runtime_us", runtime);
        let readiness = tree.assess();
        assert_eq!(status(&readiness, "sched_rt_runtime"), want, "{runtime}");
        assert_eq!(readiness.passes(REQUIRED_FOR_RT_PODS), want == Status::Pass);
    }
    tree.remove("proc/sys/kernel/sched_rt_runtime_us");
    let readiness = tree.assess();
    let check = get(&readiness, "sched_rt_runtime");
    assert_eq!(check.status, Status::Warn);
    assert_eq!(
        value(check, "proc/sys/kernel/sched_rt_runtime_us"),
        "absent"
    );
}

#[test]
fn per_cpu_power_settings() {
    let tree = Tree::of("rt-ready");
    tree.write(
        "sys/devices/system/cpu/cpu3/cpufreq/scaling_governor",
        "powersave",
    )
    .write(
        "sys/devices/system/cpu/cpu2/power/pm_qos_resume_latency_us",
        "0",
    )
    .write(
        "sys/devices/system/cpu/cpu3/power/pm_qos_resume_latency_us",
        "10",
    );
    let readiness = tree.assess();
    let check = get(&readiness, "governor_isolated");
    assert_eq!(check.status, Status::Warn);
    assert_eq!(
        check.title,
        "isolated CPUs 3 not on the performance governor"
    );
    assert_eq!(
        value(
            check,
            "sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"
        ),
        "cpu2: performance; cpu3: powersave"
    );
    // cpu2 has no PM QoS constraint, but the command line limits C-states.
    let check = get(&readiness, "c_states_isolated");
    assert_eq!(check.status, Status::Pass);
    assert_eq!(check.title, "C-states limited on the kernel command line");
    assert_eq!(value(check, "proc/cmdline"), "intel_idle.max_cstate=0");

    tree.write("proc/cmdline", "ro isolcpus=2,3 nohz_full=2,3");
    let check = get(&tree.assess(), "c_states_isolated").clone();
    assert_eq!(check.status, Status::Warn);
    assert_eq!(check.title, "isolated CPUs 2 may enter deep C-states");

    // No cpufreq, no PM QoS: nothing to tune, a pass with a note.
    for cpu in 2..4 {
        tree.remove(&format!("sys/devices/system/cpu/cpu{cpu}/cpufreq"))
            .remove(&format!("sys/devices/system/cpu/cpu{cpu}/power"));
    }
    let readiness = tree.assess();
    let check = get(&readiness, "governor_isolated");
    assert_eq!(check.status, Status::Pass);
    assert!(check.title.starts_with("no cpufreq"), "{}", check.title);
    assert_eq!(status(&readiness, "c_states_isolated"), Status::Pass);
}

#[test]
fn unbound_kernel_threads_on_isolated_cpus_warn() {
    let tree = Tree::of("rt-ready");
    let stat = |pid: u32, comm: &str, flags: u64| {
        format!("{pid} ({comm}) I 2 0 0 0 -1 {flags} 0 0 0 0 0 0 0 0 20 0 1 0 9 0 0")
    };
    tree.write(
        "proc/81/stat",
        &stat(81, "kworker/u8:2-flush-8:0", 69238880),
    )
    .write(
        "proc/81/status",
        "Name:\tkworker/u8:2\nCpus_allowed_list:\t0-3",
    )
    .write("proc/82/stat", &stat(82, "rcu_preempt", 2129984))
    .write(
        "proc/82/status",
        "Name:\trcu_preempt\nCpus_allowed_list:\t1-2",
    )
    // A user process named like a kernel thread (no PF_KTHREAD) is not one.
    .write("proc/90/stat", &stat(90, "kworker) fake", 4194560))
    .write("proc/90/status", "Name:\tkworker\nCpus_allowed_list:\t0-3")
    // A process gone between listing and reading: no status.
    .write("proc/91/stat", &stat(91, "kworker/u8:3", 69238880));
    let readiness = tree.assess();
    let check = get(&readiness, "kthread_affinity");
    assert_eq!(check.status, Status::Warn, "{check:#?}");
    assert_eq!(
        check.title,
        "2 unbound kernel threads may run on isolated CPUs 2-3"
    );
    assert_eq!(
        value(check, "proc/81/status"),
        "kworker/u8:2-flush-8:0: Cpus_allowed_list 0-3"
    );
    assert_eq!(
        value(check, "proc/82/status"),
        "rcu_preempt: Cpus_allowed_list 1-2"
    );
    assert_eq!(check.evidence.len(), 2);
    assert!(check
        .remedy
        .as_deref()
        .is_some_and(|r| r.contains("/sys/devices/virtual/workqueue/cpumask")));
}

#[test]
fn smt_siblings_outside_isolation_warn() {
    let tree = Tree::of("rt-ready");
    tree.write(
        "sys/devices/system/cpu/cpu2/topology/thread_siblings_list",
        "0,2",
    )
    .write(
        "sys/devices/system/cpu/cpu3/topology/thread_siblings_list",
        "1,3",
    );
    let readiness = tree.assess();
    let check = get(&readiness, "smt_siblings");
    assert_eq!(check.status, Status::Warn);
    assert_eq!(
        check.title,
        "SMT siblings 0-1 of isolated CPUs are not isolated"
    );
    assert_eq!(
        value(
            check,
            "sys/devices/system/cpu/cpu*/topology/thread_siblings_list"
        ),
        "cpu2: 0,2; cpu3: 1,3"
    );
}

#[test]
fn node_wide_settings_that_warn() {
    let tree = Tree::of("rt-ready");
    tree.write(
        "sys/kernel/mm/transparent_hugepage/enabled",
        "[always] madvise never",
    )
    .write("proc/sys/kernel/numa_balancing", "1")
    .write("proc/sys/kernel/timer_migration", "1")
    .write(
        "sys/devices/system/clocksource/clocksource0/current_clocksource",
        "hpet",
    )
    .write(
        "proc/swaps",
        "Filename\tType\tSize\tUsed\tPriority\n/dev/sda2 partition 8388604 0 -2",
    )
    .write(
        "sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages",
        "0",
    )
    .remove("sys/fs/cgroup");
    let readiness = tree.assess();
    well_formed(&readiness);
    for id in [
        "thp",
        "numa_balancing",
        "timer_migration",
        "clocksource",
        "swap",
        "hugepages_reserved",
        "rt_group_sched",
    ] {
        assert_eq!(status(&readiness, id), Status::Warn, "{id}");
    }
    assert_eq!(value(get(&readiness, "swap"), "proc/swaps"), "/dev/sda2");
    assert_eq!(
        get(&readiness, "thp").remedy.as_deref(),
        Some("kernel argument transparent_hugepage=never (or madvise)")
    );
    assert!(get(&readiness, "numa_balancing")
        .remedy
        .as_deref()
        .is_some_and(|r| r.starts_with("sysctl kernel.numa_balancing=0")));
    // None of these is required for RT pods.
    assert!(readiness.passes(REQUIRED_FOR_RT_PODS));
    assert!(readiness.failed().is_empty());
}

#[test]
fn preempt_rt_from_either_source() {
    let tree = Tree::of("rt-ready");
    tree.remove("sys/kernel/realtime");
    assert_eq!(status(&tree.assess(), "preempt_rt"), Status::Pass);
    tree.write("sys/kernel/realtime", "1").write(
        "proc/version",
        "Linux version 6.12.0 #1 SMP PREEMPT_DYNAMIC",
    );
    assert_eq!(status(&tree.assess(), "preempt_rt"), Status::Pass);
    tree.remove("sys/kernel/realtime");
    let readiness = tree.assess();
    assert_eq!(status(&readiness, "preempt_rt"), Status::Fail);
    assert!(!readiness.passes(REQUIRED_FOR_RT_PODS));
}

#[test]
fn a_topology_fixture_with_isolated_smt_cores() {
    // sysfs only (no command line): isolation comes from sys/devices/system/cpu/{isolated,nohz_full}.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../topology/tests/fixtures/intel-2s-smt-isolated");
    let readiness = assess(&root).expect("assess");
    well_formed(&readiness);
    assert_eq!(get(&readiness, "isolcpus").title, "isolated CPUs 2-7,10-15");
    assert_eq!(status(&readiness, "nohz_full"), Status::Pass);
    assert_eq!(status(&readiness, "rcu_nocbs"), Status::Pass);
    let check = get(&readiness, "smt_siblings");
    assert_eq!(check.status, Status::Pass, "{check:#?}");
    assert!(value(
        check,
        "sys/devices/system/cpu/cpu*/topology/thread_siblings_list"
    )
    .starts_with("cpu2,10: 2,10; cpu3,11: 3,11"));
    assert_eq!(status(&readiness, "preempt_rt"), Status::Fail);
}

#[test]
fn json_report() {
    let readiness = assess(&fixture("plain")).expect("assess");
    let json = serde_json::to_value(&readiness).expect("json");
    let checks = json["checks"].as_array().expect("array");
    assert_eq!(checks.len(), IDS.len());
    assert_eq!(checks[0]["id"], "preempt_rt");
    assert_eq!(checks[0]["status"], "fail");
    assert_eq!(checks[0]["evidence"][0]["file"], "sys/kernel/realtime");
    assert_eq!(checks[0]["evidence"][0]["value"], "absent");
    assert_eq!(checks[1]["status"], "warn");
    let thp = checks.iter().find(|c| c["id"] == "thp").expect("thp");
    assert_eq!(thp["status"], "pass");
    assert!(thp["remedy"].is_null());
}

#[test]
fn table_is_aligned() {
    let readiness = assess(&fixture("plain")).expect("assess");
    let table = render_table(&readiness);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("STATUS  CHECK"), "{table}");
    let column = lines[0].find("EVIDENCE / REMEDY").expect("header");
    assert_eq!(lines[0].find("CHECK"), Some(8));
    for id in IDS {
        let line = lines
            .iter()
            .find(|line| line[8..].starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row for {id}:\n{table}"));
        assert!(
            line[column..].chars().next().is_some_and(|c| c != ' '),
            "{line}"
        );
    }
    assert!(table.contains("fail    preempt_rt "), "{table}");
    assert!(
        table.contains("  remedy: sysctl kernel.timer_migration=0"),
        "{table}"
    );
    assert!(
        table.contains("  sys/devices/system/cpu/isolated: (empty)"),
        "{table}"
    );
    for line in &lines[1..] {
        if !line.starts_with(|c: char| c.is_ascii_lowercase()) {
            assert!(line[..column].trim().is_empty(), "misaligned: {line}");
        }
    }
}

#[test]
fn a_missing_root_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = assess(&dir.path().join("nope")).expect_err("missing root");
    assert!(matches!(err, RtError::Root { .. }), "{err}");
    let file = dir.path().join("file");
    fs::write(&file, "x").expect("write");
    assert!(matches!(assess(&file), Err(RtError::Root { .. })));
    // An empty root is a node with nothing: every file absent, no error.
    let readiness = assess(dir.path()).expect("empty root");
    well_formed(&readiness);
    assert_eq!(status(&readiness, "preempt_rt"), Status::Fail);
}

#[test]
fn this_machine_read_only() {
    let readiness = assess(Path::new("/")).expect("assess /");
    well_formed(&readiness);
    let table = render_table(&readiness);
    assert_eq!(
        table.lines().next().map(|l| l.starts_with("STATUS")),
        Some(true)
    );
    println!("{table}");
}
