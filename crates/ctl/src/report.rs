//! The node report: the model built from a discovered [`Topology`] and the placement
//! checkpoint's entries, and its two renderings, an aligned plain-text table for a person and
//! one JSON object for a machine. Pure functions: reading the node and the file is `main`'s.

use std::collections::{BTreeMap, BTreeSet};

use ingot_placement::{CheckpointEntry, Kind};
use ingot_topology::{CpuSet, Gpu, GpuVendor, PciClass, PciDevice, Topology};

/// How many characters of a container or pod id the table shows, as crictl does.
const SHORT_ID: usize = 13;

/// The counts a person looks at first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub sockets: usize,
    pub numa_nodes: usize,
    /// Physical cores: distinct (socket, die, core id), since core ids repeat across sockets.
    pub cores: usize,
    /// Online logical CPUs.
    pub threads: usize,
    /// Whether any online core runs more than one thread.
    pub smt: bool,
    pub online: CpuSet,
    pub isolated: CpuSet,
    pub nohz_full: CpuSet,
}

/// One container of the checkpoint, as the JSON shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Allocation {
    pub container_id: String,
    pub pod_id: String,
    pub cpus: CpuSet,
    pub mems: CpuSet,
    pub kind: Kind,
    pub notes: Vec<String>,
}

/// Everything the report shows. Serialises as the `--json` object; field names are an
/// interface.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub topology: Topology,
    pub summary: Summary,
    /// Every container of the checkpoint, in its order; empty when there is none.
    pub allocations: Vec<Allocation>,
    /// The union of the exclusive allocations.
    pub exclusive_cpus: CpuSet,
    /// Online CPUs not held exclusively: where shared containers run.
    pub shared_pool: CpuSet,
    /// False when there was no checkpoint at all (ingotd not running, or nothing placed yet),
    /// which the table says differently from a checkpoint without containers.
    #[serde(skip)]
    pub checkpoint_present: bool,
    /// The high-performance tuning ingotd holds ([`with_tuning`]).
    pub tuning: Tuned,
    /// Real-time readiness of the node ([`with_readiness`]); None where it was not assessed.
    pub readiness: Option<ingot_rt::Readiness>,
    /// The PCI functions pods hold ([`with_held_devices`]).
    pub held_devices: Vec<Held>,
}

/// One PCI function a pod holds, as ingotd's devices mirror (`devices.json` beside the
/// placement checkpoint) says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Held {
    pub address: String,
    pub pod_id: String,
    #[serde(default)]
    pub container_id: Option<String>,
    /// `netdev net1` (a VF's interface in the pod), `vfio`, `device`.
    pub how: String,
}

/// The report with the devices pods hold in it.
pub fn with_held_devices(report: Report, held_devices: Vec<Held>) -> Report {
    Report {
        held_devices,
        ..report
    }
}

/// The report with the node's real-time readiness in it.
pub fn with_readiness(report: Report, readiness: ingot_rt::Readiness) -> Report {
    Report {
        readiness: Some(readiness),
        ..report
    }
}

/// What ingotd's tuning mirror (`tuning.json` beside the placement checkpoint) says: which
/// containers tune which CPUs, and the host files that go back to their baseline when they end.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tuned {
    pub claims: Vec<ingot_tuning::Claim>,
    pub baselines: BTreeMap<std::path::PathBuf, String>,
}

/// The report with ingotd's tuning in it.
pub fn with_tuning(report: Report, tuning: Tuned) -> Report {
    Report { tuning, ..report }
}

/// Builds the report. `entries` is None where there is no checkpoint file.
pub fn build(topology: Topology, entries: Option<Vec<CheckpointEntry>>) -> Report {
    let checkpoint_present = entries.is_some();
    let allocations: Vec<Allocation> = entries
        .unwrap_or_default()
        .into_iter()
        .map(|entry| Allocation {
            container_id: entry.container_id,
            pod_id: entry.pod_id,
            cpus: entry.assignment.cpus,
            mems: entry.assignment.mems,
            kind: entry.assignment.kind,
            notes: entry.assignment.notes,
        })
        .collect();
    let exclusive_cpus = allocations
        .iter()
        .filter(|allocation| allocation.kind == Kind::Exclusive)
        .fold(CpuSet::new(), |all, allocation| all.union(&allocation.cpus));
    let online = topology.online();
    let shared_pool = online.difference(&exclusive_cpus);
    Report {
        summary: summarise(&topology),
        topology,
        allocations,
        exclusive_cpus,
        shared_pool,
        checkpoint_present,
        tuning: Tuned::default(),
        readiness: None,
        held_devices: Vec::new(),
    }
}

fn summarise(topology: &Topology) -> Summary {
    let sockets: BTreeSet<u32> = topology.cpus.iter().map(|cpu| cpu.socket_id).collect();
    let cores: BTreeSet<(u32, u32, u32)> = topology
        .cpus
        .iter()
        .map(|cpu| (cpu.socket_id, cpu.die_id, cpu.core_id))
        .collect();
    Summary {
        sockets: sockets.len(),
        numa_nodes: topology.numa_nodes.len(),
        cores: cores.len(),
        threads: topology.cpus.len(),
        smt: topology
            .cpus
            .iter()
            .any(|cpu| cpu.thread_siblings.len() > 1),
        online: topology.online(),
        isolated: topology.isolated.clone(),
        nohz_full: topology.nohz_full.clone(),
    }
}

/// The `--json` rendering, pretty-printed and ending in a newline.
pub fn render_json(report: &Report) -> serde_json::Result<String> {
    let mut text = serde_json::to_string_pretty(report)?;
    text.push('\n');
    Ok(text)
}

/// The table rendering.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    let summary = &report.summary;
    out.push_str("NODE\n");
    table(
        &mut out,
        "  ",
        vec![
            row(["sockets", &summary.sockets.to_string()]),
            row(["NUMA nodes", &summary.numa_nodes.to_string()]),
            row(["cores", &summary.cores.to_string()]),
            row(["threads", &summary.threads.to_string()]),
            row(["SMT", if summary.smt { "on" } else { "off" }]),
            row(["online CPUs", &list(&summary.online)]),
            row(["isolated CPUs", &list(&summary.isolated)]),
            row(["nohz_full CPUs", &list(&summary.nohz_full)]),
        ],
    );

    let devices = device_rows(&report.topology, &report.held_devices);
    for node in &report.topology.numa_nodes {
        out.push_str(&format!("\nNUMA NODE {}\n", node.id));
        let isolated = node.cpus.intersection(&report.topology.isolated);
        let cpus = if isolated.is_empty() {
            list(&node.cpus)
        } else {
            format!("{} (isolated {isolated})", list(&node.cpus))
        };
        let mut rows = vec![
            row(["CPUs", &cpus]),
            row([
                "memory",
                &format!(
                    "{} GiB total, {} GiB free",
                    gib(node.memory_total_kb),
                    gib(node.memory_free_kb)
                ),
            ]),
        ];
        rows.extend(node.hugepages.iter().map(|pages| {
            row([
                &format!("hugepages {}", pages.size_name()),
                &format!("{} total, {} free", pages.total, pages.free),
            ])
        }));
        let on_node: Vec<&DeviceRow> = devices
            .iter()
            .filter(|device| device.numa_node == Some(node.id))
            .collect();
        if on_node.is_empty() {
            rows.push(row(["devices", "none"]));
        }
        table(&mut out, "  ", rows);
        if !on_node.is_empty() {
            out.push_str("  devices\n");
            device_table(&mut out, &on_node);
        }
    }

    // Devices the kernel puts on no node (numa_node -1, as in most VMs) or on a node that has
    // neither CPUs nor memory would otherwise vanish from the report.
    let elsewhere: Vec<&DeviceRow> = devices
        .iter()
        .filter(|device| {
            device
                .numa_node
                .is_none_or(|id| report.topology.numa_node(id).is_none())
        })
        .collect();
    if !elsewhere.is_empty() {
        out.push_str("\nDEVICES WITHOUT A NUMA NODE\n");
        device_table(&mut out, &elsewhere);
    }

    out.push_str("\nALLOCATIONS\n");
    allocations_section(&mut out, report);
    out.push_str("\nTUNING\n");
    tuning_section(&mut out, &report.tuning);
    if let Some(readiness) = &report.readiness {
        out.push_str("\nREAL TIME\n");
        for line in ingot_rt::render_table(readiness).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// What one claim asks of its CPUs, in the annotations' words.
fn asked(tuning: &ingot_tuning::Tuning) -> String {
    let mut parts = Vec::new();
    if let Some(irq) = tuning.irq {
        parts.push(format!("irq-load-balancing {irq:?}").to_lowercase());
    }
    if let Some(c_states) = &tuning.c_states {
        parts.push(format!("c-states {}", c_states.resume_latency()));
    }
    if let Some(governor) = &tuning.governor {
        parts.push(format!("governor {governor}"));
    }
    if tuning.load_balancing_off {
        parts.push("no load balancing".into());
    }
    if tuning.quota_off {
        parts.push("no CFS quota".into());
    }
    if tuning.shared_cpus {
        parts.push("shared CPUs too".into());
    }
    parts.join(", ")
}

fn tuning_section(out: &mut String, tuned: &Tuned) {
    if tuned.claims.is_empty() && tuned.baselines.is_empty() {
        out.push_str("  no CPU tuned\n");
        return;
    }
    if !tuned.claims.is_empty() {
        let mut rows = vec![row(["CPUS", "CONTAINER", "TUNING"])];
        rows.extend(tuned.claims.iter().map(|claim| {
            row([
                &list(&claim.cpus),
                &short(&claim.owner),
                &asked(&claim.tuning),
            ])
        }));
        table(out, "  ", rows);
    }
    if !tuned.baselines.is_empty() {
        out.push_str("  restored when no container needs them:\n");
        let mut rows = vec![row(["FILE", "VALUE"])];
        rows.extend(
            tuned
                .baselines
                .iter()
                .map(|(path, value)| row([&path.display().to_string(), value])),
        );
        table(out, "    ", rows);
    }
}

fn allocations_section(out: &mut String, report: &Report) {
    if report.allocations.is_empty() {
        let why = if report.checkpoint_present {
            "the checkpoint holds no containers"
        } else {
            "ingotd not running or nothing placed"
        };
        out.push_str(&format!("  no allocations ({why})\n"));
    }
    let shared = report
        .allocations
        .iter()
        .filter(|allocation| allocation.kind == Kind::Shared)
        .count();
    let pool = match shared {
        0 => list(&report.shared_pool),
        1 => format!("{} (1 container)", list(&report.shared_pool)),
        n => format!("{} ({n} containers)", list(&report.shared_pool)),
    };
    table(
        out,
        "  ",
        vec![
            row(["exclusive CPUs", &list(&report.exclusive_cpus)]),
            row(["shared pool", &pool]),
        ],
    );

    // Exclusive first, then kubelet-pinned: the two kinds whose CPUs are fixed. Shared
    // containers all run on the pool above, so they are only counted.
    let pinned: Vec<&Allocation> = [Kind::Exclusive, Kind::Kubelet]
        .iter()
        .flat_map(|kind| {
            report
                .allocations
                .iter()
                .filter(move |allocation| allocation.kind == *kind)
        })
        .collect();
    if !pinned.is_empty() {
        let mut rows = vec![row(["CONTAINER", "POD", "CPUS", "MEMS", "KIND", "NOTES"])];
        rows.extend(pinned.iter().map(|allocation| {
            let mems = if allocation.mems.is_empty() {
                "all".to_string()
            } else {
                allocation.mems.to_string()
            };
            let notes = if allocation.notes.is_empty() {
                "-".to_string()
            } else {
                allocation.notes.join("; ")
            };
            row([
                &short(&allocation.container_id),
                &short(&allocation.pod_id),
                &list(&allocation.cpus),
                &mems,
                kind_name(allocation.kind),
                &notes,
            ])
        }));
        out.push('\n');
        table(out, "  ", rows);
    }

    // A checkpoint from another machine (or a `--root` that is not this node) can name CPUs
    // the topology does not have; say so rather than let the pool look right.
    let offline = report.exclusive_cpus.difference(&report.summary.online);
    if !offline.is_empty() {
        out.push_str(&format!(
            "\n  warning: exclusive CPUs {offline} are not online in this topology\n"
        ));
    }
    let mut seen = CpuSet::new();
    let mut overlap = CpuSet::new();
    for allocation in &report.allocations {
        if allocation.kind == Kind::Exclusive {
            overlap = overlap.union(&seen.intersection(&allocation.cpus));
            seen = seen.union(&allocation.cpus);
        }
    }
    if !overlap.is_empty() {
        out.push_str(&format!(
            "\n  warning: CPUs {overlap} are exclusive to more than one container\n"
        ));
    }
}

/// One device line of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DeviceRow {
    numa_node: Option<u32>,
    address: String,
    kind: &'static str,
    /// `vendor:device`.
    id: String,
    driver: String,
    detail: String,
}

/// The devices worth a line: GPUs, network and accelerator functions. A VF whose PF is listed
/// is folded into the PF's line (a PF can carry a hundred VFs); display functions that are not
/// GPUs (a BMC's VGA), storage and bridges are left to the JSON.
fn device_rows(topology: &Topology, held: &[Held]) -> Vec<DeviceRow> {
    let by_address: BTreeMap<&str, &PciDevice> = topology
        .pci_devices
        .iter()
        .map(|device| (device.address.as_str(), device))
        .collect();
    let gpu_of = |address: &str| topology.gpus.iter().find(|gpu| gpu.address == address);
    let mut rows = Vec::new();
    for device in &topology.pci_devices {
        let gpu = gpu_of(&device.address);
        let kind = match (gpu, device.class) {
            (Some(_), _) => "gpu",
            (None, PciClass::Network) => "network",
            (None, PciClass::Accelerator) => "accelerator",
            (None, PciClass::Storage) if device.class_code.starts_with("0108") => "nvme",
            (None, _) => continue,
        };
        if device
            .physfn
            .as_deref()
            .is_some_and(|pf| by_address.contains_key(pf))
        {
            continue;
        }
        let mut detail: Vec<String> = Vec::new();
        if let Some(gpu) = gpu {
            detail.push(format!("{} GPU", vendor_name(gpu.vendor)));
        }
        if !device.netdevs.is_empty() {
            detail.push(device.netdevs.join(","));
        }
        if let Some(pf) = &device.physfn {
            detail.push(format!("SR-IOV VF of {pf}"));
        }
        if let Some(pf) = sriov_pf(device, &by_address) {
            detail.push(pf);
        }
        // Who holds it, or (for a PF) which of its VFs pods hold.
        for holder in held
            .iter()
            .filter(|h| h.address == device.address || device.virtfns.contains(&h.address))
        {
            let of = if holder.address == device.address {
                String::new()
            } else {
                format!("VF {} ", holder.address)
            };
            let container = holder
                .container_id
                .as_deref()
                .map(|c| format!(" container {}", short(c)))
                .unwrap_or_default();
            detail.push(format!(
                "{of}held by pod {}{container} ({})",
                short(&holder.pod_id),
                holder.how
            ));
        }
        if let Some(id) = device
            .numa_node
            .filter(|id| topology.numa_node(*id).is_none())
        {
            detail.push(format!("numa_node {id}, not a node with CPUs or memory"));
        }
        rows.push(DeviceRow {
            numa_node: device.numa_node,
            address: device.address.clone(),
            kind,
            id: format!("{}:{}", device.vendor, device.device),
            driver: device.driver.clone().unwrap_or_else(|| "-".into()),
            detail: detail.join("; "),
        });
    }
    // Discovery derives GPUs from the PCI list, so each already has its line; a GPU without
    // one would still be shown.
    rows.extend(
        topology
            .gpus
            .iter()
            .filter(|gpu| !by_address.contains_key(gpu.address.as_str()))
            .map(gpu_row),
    );
    rows
}

fn gpu_row(gpu: &Gpu) -> DeviceRow {
    DeviceRow {
        numa_node: gpu.numa_node,
        address: gpu.address.clone(),
        kind: "gpu",
        id: "-".into(),
        driver: gpu.driver.clone().unwrap_or_else(|| "-".into()),
        detail: format!("{} GPU", vendor_name(gpu.vendor)),
    }
}

/// `SR-IOV PF, 3 of 128 VFs (2 iavf, 1 vfio-pci)` for a function that can have VFs.
fn sriov_pf(device: &PciDevice, by_address: &BTreeMap<&str, &PciDevice>) -> Option<String> {
    if device.sriov_totalvfs.is_none() && device.virtfns.is_empty() {
        return None;
    }
    let enabled = device.sriov_numvfs.map_or(device.virtfns.len(), |n| {
        usize::try_from(n).unwrap_or(usize::MAX)
    });
    let mut text = match device.sriov_totalvfs {
        Some(total) => format!("SR-IOV PF, {enabled} of {total} VFs"),
        None => format!("SR-IOV PF, {enabled} VFs"),
    };
    // Which drivers the VFs are bound to is what a person checks next (vfio-pci for a pod's
    // passthrough, the kernel driver for a netdev).
    let mut drivers: BTreeMap<&str, usize> = BTreeMap::new();
    for vf in &device.virtfns {
        let driver = by_address
            .get(vf.as_str())
            .map_or("not listed", |vf| vf.driver.as_deref().unwrap_or("unbound"));
        *drivers.entry(driver).or_default() += 1;
    }
    if !drivers.is_empty() {
        let counts: Vec<String> = drivers
            .iter()
            .map(|(driver, count)| format!("{count} {driver}"))
            .collect();
        text.push_str(&format!(" ({})", counts.join(", ")));
    }
    Some(text)
}

fn device_table(out: &mut String, devices: &[&DeviceRow]) {
    let mut rows = vec![row(["ADDRESS", "TYPE", "ID", "DRIVER", "DETAIL"])];
    rows.extend(devices.iter().map(|device| {
        row([
            &device.address,
            device.kind,
            &device.id,
            &device.driver,
            &device.detail,
        ])
    }));
    table(out, "    ", rows);
}

fn vendor_name(vendor: GpuVendor) -> &'static str {
    match vendor {
        GpuVendor::Nvidia => "NVIDIA",
        GpuVendor::Amd => "AMD",
        GpuVendor::Intel => "Intel",
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Kubelet => "kubelet",
        Kind::Exclusive => "exclusive",
        Kind::Shared => "shared",
    }
}

/// A CPU list, `none` when empty (an empty cell reads as a rendering bug).
fn list(set: &CpuSet) -> String {
    if set.is_empty() {
        "none".into()
    } else {
        set.to_string()
    }
}

/// KiB as GiB with one decimal.
fn gib(kb: u64) -> String {
    // Precision loss only past 2^53 KiB, far beyond any node's memory.
    format!("{:.1}", kb as f64 / f64::from(1u32 << 20))
}

/// The first [`SHORT_ID`] characters (characters, not bytes: ids come from the file).
fn short(id: &str) -> String {
    id.chars().take(SHORT_ID).collect()
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|cell| (*cell).to_string()).collect()
}

/// Appends `rows` with every column but the last padded to its widest cell, two spaces apart,
/// each line indented and without trailing spaces.
fn table(out: &mut String, indent: &str, rows: Vec<Vec<String>>) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::from(indent);
        for (column, cell) in row.iter().enumerate() {
            // Ids, notes and netdev names come from files; a control character in one must not
            // move the cursor or recolour the person's terminal.
            let cell: String = cell
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            line.push_str(&cell);
            if column + 1 < row.len() {
                let width = widths.get(column).copied().unwrap_or(0);
                let pad = width.saturating_sub(cell.chars().count()) + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tuning_tests {
    use super::*;

    #[test]
    fn the_tuning_section_shows_claims_and_what_goes_back() {
        let mut out = String::new();
        tuning_section(&mut out, &Tuned::default());
        assert_eq!(out, "  no CPU tuned\n");
        let tuned = Tuned {
            claims: vec![ingot_tuning::Claim {
                owner: "0123456789abcdef0123".into(),
                cpus: CpuSet::parse("2-3").expect("cpus"),
                tuning: ingot_tuning::Tuning {
                    governor: Some("performance".into()),
                    quota_off: true,
                    ..Default::default()
                },
            }],
            baselines: [(
                std::path::PathBuf::from("sys/devices/system/cpu/cpu2/cpufreq/scaling_governor"),
                "schedutil".to_string(),
            )]
            .into_iter()
            .collect(),
        };
        let mut out = String::new();
        tuning_section(&mut out, &tuned);
        assert!(out.contains("2-3"), "{out}");
        assert!(out.contains("0123456789abc"), "{out}");
        assert!(out.contains("governor performance, no CFS quota"), "{out}");
        assert!(out.contains("cpu2/cpufreq/scaling_governor"), "{out}");
        assert!(out.contains("schedutil"), "{out}");
    }
}
