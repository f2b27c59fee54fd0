//! The checks, one function each, in the order of the report.

use ingot_topology::CpuSet;

use crate::{
    read::{cpu_list, format_mask, isolcpus_list, parse_mask, per_cpu, Cmdline, Root, ABSENT},
    Check, Evidence, RtError, Status,
};

/// How many offenders (IRQs, kernel threads, CPUs) a check names before `and N more`.
const SHOWN: usize = 8;

/// The largest `pm_qos_resume_latency_us` (µs) that counts as keeping an isolated CPU out of
/// deep C-states.
const MAX_RESUME_LATENCY_US: u32 = 20;

/// The RT runtime (µs per `sched_rt_period_us`) from which throttling counts as harmless: the
/// kernel default, 950000 of 1000000, throttles only an RT task that hogs 95% of a CPU.
const MIN_RT_RUNTIME_US: i64 = 950_000;

/// `PF_KTHREAD` in `/proc/<pid>/stat`'s flags.
const PF_KTHREAD: u64 = 0x0020_0000;

const CMDLINE: &str = "proc/cmdline";
const CPU: &str = "sys/devices/system/cpu";

fn ev(file: &str, value: impl Into<String>) -> Evidence {
    Evidence {
        file: file.to_string(),
        value: value.into(),
    }
}

fn evidence_of(file: &str, value: &Option<String>) -> Evidence {
    ev(file, shown(value))
}

fn shown(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| ABSENT.to_string())
}

fn check(
    id: &'static str,
    status: Status,
    title: impl Into<String>,
    evidence: Vec<Evidence>,
    remedy: impl Into<String>,
) -> Check {
    Check {
        id,
        title: title.into(),
        status,
        evidence,
        remedy: (status != Status::Pass).then(|| remedy.into()),
    }
}

/// `items` joined, at most [`SHOWN`] of them, then `and N more`.
fn some_of(items: &[String]) -> String {
    let mut text = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(", and {} more", items.len() - SHOWN));
    }
    text
}

/// What every check needs to know about the node's CPU isolation.
struct Node<'a> {
    root: &'a Root<'a>,
    cmdline_file: Option<String>,
    cmdline: Cmdline,
    /// `isolcpus=` (flags dropped); `Err` when it does not parse.
    isolcpus: Result<CpuSet, String>,
    sys_isolated: Option<String>,
    /// `nohz_full=`.
    nohz_arg: Result<CpuSet, String>,
    sys_nohz: Option<String>,
    /// `isolcpus=` ∪ `/sys/devices/system/cpu/isolated`.
    isolated: CpuSet,
    /// `nohz_full=` ∪ `/sys/devices/system/cpu/nohz_full`.
    nohz: CpuSet,
    /// The isolated and the nohz_full CPUs: those the per-CPU checks look at.
    rt_cpus: CpuSet,
    online: Option<CpuSet>,
}

impl<'a> Node<'a> {
    fn read(root: &'a Root<'a>) -> Result<Self, RtError> {
        let cmdline_file = root.read(CMDLINE)?;
        let cmdline = Cmdline::parse(cmdline_file.as_deref().unwrap_or(""));
        let arg_list = |key: &str, parse: fn(&str) -> Result<CpuSet, String>| match cmdline.get(key)
        {
            Some(Some(value)) => parse(value),
            _ => Ok(CpuSet::new()),
        };
        let isolcpus = arg_list("isolcpus", isolcpus_list);
        let nohz_arg = arg_list("nohz_full", cpu_list);
        let sys_isolated = root.read(&format!("{CPU}/isolated"))?;
        let sys_nohz = root.read(&format!("{CPU}/nohz_full"))?;
        let sys_set = |value: &Option<String>| {
            value
                .as_deref()
                .and_then(|text| cpu_list(text).ok())
                .unwrap_or_default()
        };
        let isolated = isolcpus
            .clone()
            .unwrap_or_default()
            .union(&sys_set(&sys_isolated));
        let nohz = nohz_arg
            .clone()
            .unwrap_or_default()
            .union(&sys_set(&sys_nohz));
        let rt_cpus = isolated.union(&nohz);
        let online = root
            .read(&format!("{CPU}/online"))?
            .and_then(|text| cpu_list(&text).ok());
        Ok(Self {
            root,
            cmdline_file,
            cmdline,
            isolcpus,
            sys_isolated,
            nohz_arg,
            sys_nohz,
            isolated,
            nohz,
            rt_cpus,
            online,
        })
    }

    /// The command line's `key=` argument as evidence.
    fn arg(&self, key: &str) -> Evidence {
        match self.cmdline_file {
            None => ev(CMDLINE, ABSENT),
            Some(_) => ev(CMDLINE, self.cmdline.show(key)),
        }
    }

    /// The CPUs that are not RT CPUs, for remedies.
    fn housekeeping(&self) -> String {
        match &self.online {
            Some(online) if !online.difference(&self.rt_cpus).is_empty() => {
                online.difference(&self.rt_cpus).to_string()
            }
            _ => "<housekeeping CPUs>".to_string(),
        }
    }

    /// The RT CPUs for remedies, or a placeholder on a node without any.
    fn rt_or_placeholder(&self) -> String {
        if self.rt_cpus.is_empty() {
            "<RT CPUs>".to_string()
        } else {
            self.rt_cpus.to_string()
        }
    }

    /// The `Pass` of a per-CPU check on a node without isolated CPUs.
    fn nothing_to_check(&self, id: &'static str, mut evidence: Vec<Evidence>) -> Check {
        if evidence.is_empty() {
            evidence.push(self.arg("isolcpus"));
            evidence.push(evidence_of(&format!("{CPU}/isolated"), &self.sys_isolated));
        }
        check(
            id,
            Status::Pass,
            "no isolated CPUs: nothing to check",
            evidence,
            "",
        )
    }
}

/// Every check, in report order.
pub(crate) fn run(root: &Root<'_>) -> Result<Vec<Check>, RtError> {
    let node = Node::read(root)?;
    Ok(vec![
        preempt_rt(&node)?,
        isolcpus(&node),
        nohz_full(&node),
        rcu_nocbs(&node),
        irq_affinity(&node)?,
        irqbalance_banned(&node)?,
        sched_rt_runtime(&node)?,
        rt_group_sched(&node)?,
        thp(&node)?,
        numa_balancing(&node)?,
        governor_isolated(&node)?,
        c_states_isolated(&node)?,
        timer_migration(&node)?,
        clocksource(&node)?,
        swap(&node)?,
        hugepages_reserved(&node)?,
        kthread_affinity(&node)?,
        smt_siblings(&node)?,
    ])
}

fn preempt_rt(node: &Node<'_>) -> Result<Check, RtError> {
    let realtime = node.root.read("sys/kernel/realtime")?;
    let version = node.root.read("proc/version")?;
    let by_flag = realtime.as_deref() == Some("1");
    let by_version = version
        .as_deref()
        .is_some_and(|v| v.contains("PREEMPT_RT") || v.contains("PREEMPT RT"));
    let evidence = vec![
        ev("sys/kernel/realtime", shown(&realtime)),
        ev("proc/version", shown(&version)),
    ];
    let (status, title) = if by_flag || by_version {
        (Status::Pass, "PREEMPT_RT kernel".to_string())
    } else {
        let model = ["PREEMPT_DYNAMIC", "PREEMPT", "voluntary"]
            .into_iter()
            .find(|model| version.as_deref().is_some_and(|v| v.contains(model)))
            .map(|model| format!(" ({model})"))
            .unwrap_or_default();
        (Status::Fail, format!("not a PREEMPT_RT kernel{model}"))
    };
    Ok(check(
        "preempt_rt",
        status,
        title,
        evidence,
        "boot a PREEMPT_RT kernel (CONFIG_PREEMPT_RT=y: kernel-rt, linux-image-rt); on a \
         PREEMPT_DYNAMIC kernel the kernel argument preempt=full is only a partial substitute",
    ))
}

fn isolcpus(node: &Node<'_>) -> Check {
    let evidence = vec![
        node.arg("isolcpus"),
        ev(&format!("{CPU}/isolated"), shown(&node.sys_isolated)),
    ];
    let remedy = format!(
        "kernel argument isolcpus=managed_irq,domain,{}",
        node.rt_or_placeholder()
    );
    match &node.isolcpus {
        Err(reason) => check(
            "isolcpus",
            Status::Warn,
            format!("isolcpus= does not parse: {reason}"),
            evidence,
            remedy,
        ),
        Ok(_) if node.isolated.is_empty() => check(
            "isolcpus",
            Status::Warn,
            "no isolated CPUs",
            evidence,
            remedy,
        ),
        Ok(_) => check(
            "isolcpus",
            Status::Pass,
            format!("isolated CPUs {}", node.isolated),
            evidence,
            remedy,
        ),
    }
}

fn nohz_full(node: &Node<'_>) -> Check {
    let evidence = vec![
        node.arg("nohz_full"),
        ev(&format!("{CPU}/nohz_full"), shown(&node.sys_nohz)),
    ];
    let wanted = node.nohz.union(&node.isolated);
    let wanted = if wanted.is_empty() {
        "<RT CPUs>".to_string()
    } else {
        wanted.to_string()
    };
    let remedy = format!("kernel argument nohz_full={wanted}");
    let missing = node.isolated.difference(&node.nohz);
    if let Err(reason) = &node.nohz_arg {
        check(
            "nohz_full",
            Status::Warn,
            format!("nohz_full= does not parse: {reason}"),
            evidence,
            remedy,
        )
    } else if node.nohz.is_empty() {
        check(
            "nohz_full",
            Status::Warn,
            "no nohz_full CPUs: isolated CPUs keep the scheduler tick",
            evidence,
            remedy,
        )
    } else if !missing.is_empty() {
        check(
            "nohz_full",
            Status::Fail,
            format!(
                "nohz_full {} leaves isolated CPUs {missing} with the tick",
                node.nohz
            ),
            evidence,
            remedy,
        )
    } else {
        check(
            "nohz_full",
            Status::Pass,
            format!("nohz_full CPUs {}", node.nohz),
            evidence,
            remedy,
        )
    }
}

/// `rcu_nocbs=`; the kernel also offloads the callbacks of every `nohz_full` CPU, so those
/// count as covered.
fn rcu_nocbs(node: &Node<'_>) -> Check {
    let evidence = vec![node.arg("rcu_nocbs"), node.arg("nohz_full")];
    let arg = match node.cmdline.get("rcu_nocbs") {
        Some(Some(value)) => cpu_list(value),
        _ => Ok(CpuSet::new()),
    };
    let wanted = node.isolated.union(&node.nohz);
    let wanted_text = if wanted.is_empty() {
        "<RT CPUs>".to_string()
    } else {
        wanted.to_string()
    };
    let remedy = format!("kernel argument rcu_nocbs={wanted_text}");
    let arg = match arg {
        Ok(arg) => arg,
        Err(reason) => {
            return check(
                "rcu_nocbs",
                Status::Warn,
                format!("rcu_nocbs= does not parse: {reason}"),
                evidence,
                remedy,
            )
        }
    };
    let offloaded = arg.union(&node.nohz);
    let missing = node.isolated.difference(&offloaded);
    if offloaded.is_empty() {
        check(
            "rcu_nocbs",
            Status::Warn,
            "no rcu_nocbs CPUs: RCU callbacks run on every CPU",
            evidence,
            remedy,
        )
    } else if !missing.is_empty() {
        check(
            "rcu_nocbs",
            Status::Fail,
            format!("RCU callbacks still run on isolated CPUs {missing}"),
            evidence,
            remedy,
        )
    } else if arg.is_empty() {
        check(
            "rcu_nocbs",
            Status::Pass,
            format!("RCU callbacks offloaded from {offloaded} (implied by nohz_full)"),
            evidence,
            remedy,
        )
    } else {
        check(
            "rcu_nocbs",
            Status::Pass,
            format!("RCU callbacks offloaded from {offloaded}"),
            evidence,
            remedy,
        )
    }
}

fn irq_affinity(node: &Node<'_>) -> Result<Check, RtError> {
    const DEFAULT: &str = "proc/irq/default_smp_affinity";
    let default = node.root.read(DEFAULT)?;
    let mut evidence = vec![ev(DEFAULT, shown(&default))];
    let mut offenders = Vec::new();
    let mut unparsed = Vec::new();
    if let Some(text) = &default {
        match parse_mask(text) {
            Ok(cpus) if !cpus.is_disjoint(&node.rt_cpus) => {
                offenders.push(format!("default: {cpus}"))
            }
            Ok(_) => {}
            Err(_) => unparsed.push("default".to_string()),
        }
    }
    let irqs = node.root.numeric_entries("proc/irq")?;
    let mut read = 0;
    for irq in &irqs {
        let Some(text) = node
            .root
            .read(&format!("proc/irq/{irq}/smp_affinity_list"))?
        else {
            continue;
        };
        read += 1;
        match cpu_list(&text) {
            Ok(cpus) if !cpus.is_disjoint(&node.rt_cpus) => {
                offenders.push(format!("{irq}: {cpus}"))
            }
            Ok(_) => {}
            Err(_) => unparsed.push(irq.to_string()),
        }
    }
    if node.rt_cpus.is_empty() {
        evidence.push(evidence_of_irqs(read, None));
        return Ok(node.nothing_to_check("irq_affinity", evidence));
    }
    let irq_offenders: Vec<String> = offenders
        .iter()
        .filter(|o| !o.starts_with("default"))
        .cloned()
        .collect();
    evidence.push(evidence_of_irqs(
        read,
        Some((irq_offenders.as_slice(), &node.rt_cpus)),
    ));
    if !unparsed.is_empty() {
        evidence.push(ev(
            "proc/irq/*/smp_affinity_list",
            format!("unparseable: {}", some_of(&unparsed)),
        ));
    }
    let housekeeping = node.housekeeping();
    let remedy = format!(
        "kernel argument irqaffinity={housekeeping} (with isolcpus=managed_irq,... for managed \
         IRQs), or write {housekeeping} to /proc/irq/default_smp_affinity and each \
         /proc/irq/N/smp_affinity_list; per pod: annotation irq-load-balancing.crio.io: disable"
    );
    Ok(if offenders.is_empty() && unparsed.is_empty() {
        check(
            "irq_affinity",
            Status::Pass,
            format!("no IRQ on isolated CPUs {}", node.rt_cpus),
            evidence,
            remedy,
        )
    } else {
        let names: Vec<&str> = offenders
            .iter()
            .filter_map(|o| o.split(':').next())
            .collect();
        check(
            "irq_affinity",
            Status::Warn,
            format!(
                "IRQs may run on isolated CPUs {}: {}",
                node.rt_cpus,
                some_of(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            ),
            evidence,
            remedy,
        )
    })
}

fn evidence_of_irqs(read: usize, offenders: Option<(&[String], &CpuSet)>) -> Evidence {
    let value = match offenders {
        None => format!("{read} IRQs"),
        Some(([], rt)) => format!("{read} IRQs, none on {rt}"),
        Some((offenders, _)) => format!(
            "{} of {read} IRQs on isolated CPUs: {}",
            offenders.len(),
            some_of(offenders)
        ),
    };
    ev("proc/irq/*/smp_affinity_list", value)
}

/// irqbalance's banned CPUs. Without `IRQBALANCE_BANNED_CPUS`/`IRQBALANCE_BANNED_CPULIST`,
/// irqbalance bans the isolated and nohz_full CPUs itself, so that passes; a value that is set
/// (even empty) replaces that and must cover the RT CPUs.
fn irqbalance_banned(node: &Node<'_>) -> Result<Check, RtError> {
    let mut config = None;
    for file in ["etc/sysconfig/irqbalance", "etc/default/irqbalance"] {
        if let Some(text) = node.root.read(file)? {
            config = Some((file, text));
            break;
        }
    }
    let Some((file, text)) = config else {
        let evidence = vec![
            ev("etc/sysconfig/irqbalance", ABSENT),
            ev("etc/default/irqbalance", ABSENT),
        ];
        if node.rt_cpus.is_empty() {
            return Ok(node.nothing_to_check("irqbalance_banned", evidence));
        }
        return Ok(check(
            "irqbalance_banned",
            Status::Pass,
            "no irqbalance configuration: irqbalance, where it runs, bans isolated and nohz_full CPUs itself",
            evidence,
            "",
        ));
    };
    let mut banned: Option<(String, Result<CpuSet, String>)> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
        match key.trim() {
            "IRQBALANCE_BANNED_CPULIST" => banned = Some((line.to_string(), cpu_list(value))),
            "IRQBALANCE_BANNED_CPUS" if banned.is_none() => {
                banned = Some((line.to_string(), parse_mask(value)))
            }
            _ => {}
        }
    }
    let shown_line = banned
        .as_ref()
        .map(|(line, _)| line.clone())
        .unwrap_or_else(|| "(no IRQBALANCE_BANNED_CPUS=)".to_string());
    let evidence = vec![ev(file, shown_line)];
    if node.rt_cpus.is_empty() {
        return Ok(node.nothing_to_check("irqbalance_banned", evidence));
    }
    let remedy = |also: &CpuSet| {
        format!(
            "set IRQBALANCE_BANNED_CPUS={} in /{file} (or remove it: irqbalance then bans \
             isolated and nohz_full CPUs itself) and restart irqbalance",
            format_mask(&node.rt_cpus.union(also))
        )
    };
    Ok(match banned {
        None => check(
            "irqbalance_banned",
            Status::Pass,
            "no banned CPUs set: irqbalance bans isolated and nohz_full CPUs itself",
            evidence,
            "",
        ),
        Some((_, Err(reason))) => check(
            "irqbalance_banned",
            Status::Warn,
            format!("irqbalance's banned CPUs do not parse: {reason}"),
            evidence,
            remedy(&CpuSet::new()),
        ),
        Some((_, Ok(cpus))) => {
            let missing = node.rt_cpus.difference(&cpus);
            if missing.is_empty() {
                check(
                    "irqbalance_banned",
                    Status::Pass,
                    format!("irqbalance bans {cpus}"),
                    evidence,
                    "",
                )
            } else {
                check(
                    "irqbalance_banned",
                    Status::Warn,
                    format!("irqbalance may move IRQs onto isolated CPUs {missing}"),
                    evidence,
                    remedy(&cpus),
                )
            }
        }
    })
}

/// RT throttling. `-1` (none) passes, with the note that a runaway RT task can then starve its
/// CPU; from 950000 µs (the default: an RT task hogging 95% of a CPU is throttled for the rest
/// of the period) passes; below that warns (legitimate RT load gets throttled); `0` fails (RT
/// tasks get no CPU time at all).
fn sched_rt_runtime(node: &Node<'_>) -> Result<Check, RtError> {
    const RUNTIME: &str = "proc/sys/kernel/sched_rt_runtime_us";
    const PERIOD: &str = "proc/sys/kernel/sched_rt_period_us";
    let runtime = node.root.read(RUNTIME)?;
    let period = node.root.read(PERIOD)?;
    let evidence = vec![ev(RUNTIME, shown(&runtime)), ev(PERIOD, shown(&period))];
    let remedy = "sysctl kernel.sched_rt_runtime_us=-1 (no RT throttling) or 950000 (the default)";
    let value = runtime.as_deref().map(|text| text.parse::<i64>());
    let (status, title) = match value {
        None => (
            Status::Warn,
            "RT throttling unknown: sched_rt_runtime_us absent".to_string(),
        ),
        Some(Err(_)) => (
            Status::Warn,
            "sched_rt_runtime_us does not parse".to_string(),
        ),
        Some(Ok(-1)) => (
            Status::Pass,
            "no RT throttling (-1): a runaway RT task can starve its CPU".to_string(),
        ),
        Some(Ok(0)) => (
            Status::Fail,
            "RT runtime 0: RT tasks cannot run".to_string(),
        ),
        Some(Ok(us)) if us >= MIN_RT_RUNTIME_US => (
            Status::Pass,
            format!("RT tasks throttled only past {us} µs per period"),
        ),
        Some(Ok(us)) => (
            Status::Warn,
            format!("RT tasks throttled past {us} µs per period, below the default 950000"),
        ),
    };
    Ok(check("sched_rt_runtime", status, title, evidence, remedy))
}

fn rt_group_sched(node: &Node<'_>) -> Result<Check, RtError> {
    const FILES: [&str; 2] = [
        "sys/fs/cgroup/cpu/cpu.rt_runtime_us",
        "sys/fs/cgroup/cpu,cpuacct/cpu.rt_runtime_us",
    ];
    for file in FILES {
        if let Some(value) = node.root.read(file)? {
            return Ok(check(
                "rt_group_sched",
                Status::Pass,
                "RT group scheduling: pods can get their own RT budget (cpu.rt_runtime_us)",
                vec![ev(file, value)],
                "",
            ));
        }
    }
    Ok(check(
        "rt_group_sched",
        Status::Warn,
        "no RT group scheduling: RT pods share the node-wide RT budget",
        vec![ev(FILES[0], ABSENT)],
        "a kernel with CONFIG_RT_GROUP_SCHED=y and the cgroup v1 cpu controller (kernel argument \
         systemd.unified_cgroup_hierarchy=0), so each RT pod gets its own cpu.rt_runtime_us; \
         without it RT pods share kernel.sched_rt_runtime_us",
    ))
}

fn thp(node: &Node<'_>) -> Result<Check, RtError> {
    const FILE: &str = "sys/kernel/mm/transparent_hugepage/enabled";
    let enabled = node.root.read(FILE)?;
    let evidence = vec![ev(FILE, shown(&enabled))];
    let remedy = "kernel argument transparent_hugepage=never (or madvise)";
    let selected = enabled.as_deref().and_then(|text| {
        let start = text.find('[')?;
        let end = text[start..].find(']')?;
        Some(text[start + 1..start + end].to_string())
    });
    let (status, title) = match (enabled.is_some(), selected.as_deref()) {
        (false, _) => (
            Status::Pass,
            "no transparent hugepages in this kernel".to_string(),
        ),
        (true, Some(mode @ ("never" | "madvise"))) => {
            (Status::Pass, format!("transparent hugepages: {mode}"))
        }
        (true, Some("always")) => (
            Status::Warn,
            "transparent hugepages always: khugepaged and compaction stalls".to_string(),
        ),
        (true, _) => (
            Status::Warn,
            "transparent hugepage mode not understood".to_string(),
        ),
    };
    Ok(check("thp", status, title, evidence, remedy))
}

fn numa_balancing(node: &Node<'_>) -> Result<Check, RtError> {
    const FILE: &str = "proc/sys/kernel/numa_balancing";
    let value = node.root.read(FILE)?;
    let (status, title) = match value.as_deref() {
        None => (Status::Pass, "no automatic NUMA balancing in this kernel"),
        Some("0") => (Status::Pass, "automatic NUMA balancing off"),
        Some(_) => (
            Status::Warn,
            "automatic NUMA balancing on: page migrations and hinting faults",
        ),
    };
    Ok(check(
        "numa_balancing",
        status,
        title,
        vec![ev(FILE, shown(&value))],
        "sysctl kernel.numa_balancing=0 (kernel argument numa_balancing=disable)",
    ))
}

/// A per-CPU file of each RT CPU: the values found, by CPU.
fn per_rt_cpu(node: &Node<'_>, file: &str) -> Result<Vec<(u32, String)>, RtError> {
    let mut values = Vec::new();
    for cpu in node.rt_cpus.iter() {
        if let Some(value) = node.root.read(&format!("{CPU}/cpu{cpu}/{file}"))? {
            values.push((cpu, value));
        }
    }
    Ok(values)
}

fn governor_isolated(node: &Node<'_>) -> Result<Check, RtError> {
    const FILE: &str = "cpufreq/scaling_governor";
    let pattern = format!("{CPU}/cpu*/{FILE}");
    if node.rt_cpus.is_empty() {
        return Ok(node.nothing_to_check("governor_isolated", Vec::new()));
    }
    let values = per_rt_cpu(node, FILE)?;
    if values.is_empty() {
        return Ok(check(
            "governor_isolated",
            Status::Pass,
            "no cpufreq on the isolated CPUs: frequency not under the kernel's control",
            vec![ev(&pattern, ABSENT)],
            "",
        ));
    }
    let slow: CpuSet = values
        .iter()
        .filter(|(_, governor)| governor != "performance")
        .map(|(cpu, _)| *cpu)
        .collect();
    let evidence = vec![ev(&pattern, per_cpu(&values))];
    let remedy = "kernel argument cpufreq.default_governor=performance, or per pod the annotation \
                  cpu-freq-governor.crio.io: performance";
    Ok(if slow.is_empty() {
        check(
            "governor_isolated",
            Status::Pass,
            "performance governor on the isolated CPUs",
            evidence,
            remedy,
        )
    } else {
        check(
            "governor_isolated",
            Status::Warn,
            format!("isolated CPUs {slow} not on the performance governor"),
            evidence,
            remedy,
        )
    })
}

/// Whether the command line keeps CPUs out of deep C-states: `idle=poll`,
/// `intel_idle.max_cstate=1`, or `intel_idle.max_cstate=0` with `processor.max_cstate` 0 or 1.
fn cmdline_limits_c_states(cmdline: &Cmdline) -> bool {
    let number = |key: &str| {
        cmdline
            .get(key)
            .flatten()
            .and_then(|v| v.parse::<u32>().ok())
    };
    cmdline.get("idle") == Some(Some("poll"))
        || number("intel_idle.max_cstate") == Some(1)
        || (number("intel_idle.max_cstate") == Some(0)
            && number("processor.max_cstate").is_some_and(|n| n <= 1))
}

fn c_states_isolated(node: &Node<'_>) -> Result<Check, RtError> {
    const FILE: &str = "power/pm_qos_resume_latency_us";
    let pattern = format!("{CPU}/cpu*/{FILE}");
    if node.rt_cpus.is_empty() {
        return Ok(node.nothing_to_check("c_states_isolated", Vec::new()));
    }
    let values = per_rt_cpu(node, FILE)?;
    let mut evidence = vec![ev(
        &pattern,
        if values.is_empty() {
            ABSENT.to_string()
        } else {
            per_cpu(&values)
        },
    )];
    for key in ["idle", "intel_idle.max_cstate", "processor.max_cstate"] {
        if node.cmdline.get(key).is_some() {
            evidence.push(node.arg(key));
        }
    }
    let remedy = "kernel arguments intel_idle.max_cstate=0 processor.max_cstate=1 (or idle=poll), \
                  or per pod the annotation cpu-c-states.crio.io: disable (n/a in \
                  pm_qos_resume_latency_us)";
    // "n/a": no resume latency tolerated (no C-states); "0": no constraint at all.
    let deep: CpuSet = values
        .iter()
        .filter(|(_, value)| {
            value != "n/a"
                && !value
                    .parse::<u32>()
                    .is_ok_and(|us| (1..=MAX_RESUME_LATENCY_US).contains(&us))
        })
        .map(|(cpu, _)| *cpu)
        .collect();
    let limited = cmdline_limits_c_states(&node.cmdline);
    Ok(if values.is_empty() {
        check(
            "c_states_isolated",
            Status::Pass,
            "no PM QoS on the isolated CPUs (no cpuidle)",
            evidence,
            remedy,
        )
    } else if deep.is_empty() {
        check(
            "c_states_isolated",
            Status::Pass,
            format!("isolated CPUs kept out of deep C-states (resume latency n/a or ≤ {MAX_RESUME_LATENCY_US} µs)"),
            evidence,
            remedy,
        )
    } else if limited {
        check(
            "c_states_isolated",
            Status::Pass,
            "C-states limited on the kernel command line",
            evidence,
            remedy,
        )
    } else {
        check(
            "c_states_isolated",
            Status::Warn,
            format!("isolated CPUs {deep} may enter deep C-states"),
            evidence,
            remedy,
        )
    })
}

fn timer_migration(node: &Node<'_>) -> Result<Check, RtError> {
    const FILE: &str = "proc/sys/kernel/timer_migration";
    let value = node.root.read(FILE)?;
    let (status, title) = match value.as_deref() {
        Some("0") => (Status::Pass, "timer migration off"),
        Some(_) => (
            Status::Warn,
            "timer migration on: timers can land on isolated CPUs",
        ),
        None => (Status::Warn, "timer migration setting absent"),
    };
    Ok(check(
        "timer_migration",
        status,
        title,
        vec![ev(FILE, shown(&value))],
        "sysctl kernel.timer_migration=0",
    ))
}

fn clocksource(node: &Node<'_>) -> Result<Check, RtError> {
    const FILE: &str = "sys/devices/system/clocksource/clocksource0/current_clocksource";
    let value = node.root.read(FILE)?;
    let (status, title) = match value.as_deref() {
        Some(source @ ("tsc" | "arch_sys_counter")) => {
            (Status::Pass, format!("clocksource {source}"))
        }
        Some(source) => (
            Status::Warn,
            format!("clocksource {source}: slow time reads"),
        ),
        None => (Status::Warn, "clocksource unknown".to_string()),
    };
    Ok(check(
        "clocksource",
        status,
        title,
        vec![ev(FILE, shown(&value))],
        "kernel arguments clocksource=tsc tsc=reliable (x86)",
    ))
}

fn swap(node: &Node<'_>) -> Result<Check, RtError> {
    const FILE: &str = "proc/swaps";
    let remedy = "swapoff -a and drop swap from /etc/fstab (at least sysctl vm.swappiness=0)";
    let Some(text) = node.root.read(FILE)? else {
        return Ok(check(
            "swap",
            Status::Pass,
            "no swap support in this kernel",
            vec![ev(FILE, ABSENT)],
            remedy,
        ));
    };
    let areas: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect();
    Ok(if areas.is_empty() {
        check(
            "swap",
            Status::Pass,
            "no swap",
            vec![ev(FILE, "no entries")],
            remedy,
        )
    } else {
        check(
            "swap",
            Status::Warn,
            format!(
                "{} swap areas: pages of RT pods can be swapped out",
                areas.len()
            ),
            vec![ev(FILE, some_of(&areas))],
            remedy,
        )
    })
}

fn hugepages_reserved(node: &Node<'_>) -> Result<Check, RtError> {
    const DIR: &str = "sys/kernel/mm/hugepages";
    let remedy = "kernel arguments default_hugepagesz=1G hugepagesz=1G hugepages=<N> (or sysctl \
                  vm.nr_hugepages=<N> for 2 MiB pages)";
    let mut evidence_list = Vec::new();
    let mut reserved = Vec::new();
    for size in node.root.entries(DIR)? {
        if !size.starts_with("hugepages-") {
            continue;
        }
        let file = format!("{DIR}/{size}/nr_hugepages");
        let Some(value) = node.root.read(&file)? else {
            continue;
        };
        if value.parse::<u64>().is_ok_and(|n| n > 0) {
            reserved.push(format!(
                "{value} x {}",
                size.trim_start_matches("hugepages-")
            ));
        }
        evidence_list.push(ev(&file, value));
    }
    if evidence_list.is_empty() {
        evidence_list.push(ev(DIR, ABSENT));
    }
    Ok(if reserved.is_empty() {
        check(
            "hugepages_reserved",
            Status::Warn,
            "no hugepages reserved",
            evidence_list,
            remedy,
        )
    } else {
        check(
            "hugepages_reserved",
            Status::Pass,
            format!("hugepages reserved: {}", reserved.join(", ")),
            evidence_list,
            remedy,
        )
    })
}

/// A kernel thread the check looks at: one of the RCU threads, softirq threads or kworkers.
fn watched_kthread(comm: &str) -> bool {
    comm.starts_with("rcu") || comm.starts_with("ksoftirqd/") || comm.starts_with("kworker")
}

/// Kernel threads (`rcu*`, `ksoftirqd/*`, `kworker*`) allowed on more than one CPU, some of them
/// isolated: unbound threads the scheduler may put on an isolated CPU. Per-CPU threads bound to
/// their one CPU are by design and not reported.
fn kthread_affinity(node: &Node<'_>) -> Result<Check, RtError> {
    if node.rt_cpus.is_empty() {
        return Ok(node.nothing_to_check("kthread_affinity", Vec::new()));
    }
    let mut watched = 0usize;
    let mut offenders = Vec::new();
    for pid in node.root.numeric_entries("proc")? {
        let Some(stat) = node.root.read_lenient(&format!("proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if close < open {
            continue;
        }
        let comm = &stat[open + 1..close];
        if !watched_kthread(comm) {
            continue;
        }
        // After `pid (comm)`: state ppid pgrp session tty_nr tpgid flags.
        let flags = stat[close + 1..]
            .split_whitespace()
            .nth(6)
            .and_then(|flags| flags.parse::<u64>().ok());
        if flags.is_some_and(|flags| flags & PF_KTHREAD == 0) {
            continue; // a user process named like a kernel thread
        }
        let Some(status) = node.root.read_lenient(&format!("proc/{pid}/status")) else {
            continue;
        };
        let Some(cpus) = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .and_then(|list| cpu_list(list).ok())
        else {
            continue;
        };
        watched += 1;
        if cpus.len() > 1 && !cpus.is_disjoint(&node.rt_cpus) {
            offenders.push((pid, comm.to_string(), cpus));
        }
    }
    let remedy = format!(
        "kernel arguments isolcpus=managed_irq,domain,{rt} nohz_full={rt} rcu_nocbs={rt} keep \
         unbound kernel threads on the housekeeping CPUs; for unbound workqueues write the mask \
         of {hk} to /sys/devices/virtual/workqueue/cpumask",
        rt = node.rt_cpus,
        hk = node.housekeeping(),
    );
    if offenders.is_empty() {
        return Ok(check(
            "kthread_affinity",
            Status::Pass,
            format!(
                "no unbound kernel thread allowed on isolated CPUs {}",
                node.rt_cpus
            ),
            vec![ev(
                "proc/*/status",
                format!("{watched} kernel threads (rcu*, ksoftirqd/*, kworker*) checked"),
            )],
            remedy,
        ));
    }
    let mut evidence_list: Vec<Evidence> = offenders
        .iter()
        .take(5)
        .map(|(pid, comm, cpus)| {
            ev(
                &format!("proc/{pid}/status"),
                format!("{comm}: Cpus_allowed_list {cpus}"),
            )
        })
        .collect();
    if offenders.len() > 5 {
        evidence_list.push(ev(
            "proc/*/status",
            format!(
                "and {} more of {watched} kernel threads",
                offenders.len() - 5
            ),
        ));
    }
    Ok(check(
        "kthread_affinity",
        Status::Warn,
        format!(
            "{} unbound kernel threads may run on isolated CPUs {}",
            offenders.len(),
            node.rt_cpus
        ),
        evidence_list,
        remedy,
    ))
}

fn smt_siblings(node: &Node<'_>) -> Result<Check, RtError> {
    const FILE: &str = "topology/thread_siblings_list";
    let pattern = format!("{CPU}/cpu*/{FILE}");
    if node.rt_cpus.is_empty() {
        return Ok(node.nothing_to_check("smt_siblings", Vec::new()));
    }
    let values = per_rt_cpu(node, FILE)?;
    if values.is_empty() {
        return Ok(check(
            "smt_siblings",
            Status::Pass,
            "no CPU topology: SMT siblings unknown",
            vec![ev(&pattern, ABSENT)],
            "",
        ));
    }
    let mut shared = CpuSet::new();
    for (_, list) in &values {
        if let Ok(siblings) = cpu_list(list) {
            shared.extend(siblings.difference(&node.rt_cpus).iter());
        }
    }
    let evidence = vec![ev(&pattern, per_cpu(&values))];
    Ok(if shared.is_empty() {
        check(
            "smt_siblings",
            Status::Pass,
            "isolated CPUs hold whole cores",
            evidence,
            "",
        )
    } else {
        check(
            "smt_siblings",
            Status::Warn,
            format!("SMT siblings {shared} of isolated CPUs are not isolated"),
            evidence,
            format!(
                "isolate whole cores: add {shared} to isolcpus=, nohz_full= and rcu_nocbs= \
                 (or boot with nosmt)"
            ),
        )
    })
}
