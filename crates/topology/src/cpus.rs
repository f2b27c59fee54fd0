//! Online CPUs and the hardware they share, from `sys/devices/system/cpu`: thread siblings,
//! core, die, cluster and socket (`cpuN/topology`), the L3 cache (`cpuN/cache/index*`), and the
//! CPUs the kernel keeps away from the scheduler (`isolated`) or from the tick (`nohz_full`).

use std::path::{Path, PathBuf};

use crate::{
    sysfs::{
        malformed, numbered_entries, parse_list, parse_number, read_list, read_number,
        read_optional, read_optional_number,
    },
    Cpu, CpuSet, TopologyError,
};

fn cpu_dir(root: &Path) -> PathBuf {
    root.join("sys/devices/system/cpu")
}

/// `cpu/online`. Required: every kernel writes it, and a node without it cannot be placed on.
pub(crate) fn read_online(root: &Path) -> Result<CpuSet, TopologyError> {
    let path = cpu_dir(root).join("online");
    let online = read_list(&path)?;
    if online.is_empty() {
        return Err(malformed(&path, "no CPU is online"));
    }
    Ok(online)
}

/// `cpu/isolated` (isolcpus=).
pub(crate) fn read_isolated(root: &Path) -> Result<CpuSet, TopologyError> {
    read_kernel_cpu_mask(&cpu_dir(root).join("isolated"))
}

/// `cpu/nohz_full` (nohz_full=).
pub(crate) fn read_nohz_full(root: &Path) -> Result<CpuSet, TopologyError> {
    read_kernel_cpu_mask(&cpu_dir(root).join("nohz_full"))
}

/// A list the kernel writes only when configured: absent without the config option, and
/// `(null)` on kernels that print an unallocated mask (nohz_full built in, not asked for).
fn read_kernel_cpu_mask(path: &Path) -> Result<CpuSet, TopologyError> {
    match read_optional(path)? {
        None => Ok(CpuSet::new()),
        Some(text) if text.trim() == "(null)" => Ok(CpuSet::new()),
        Some(text) => parse_list(path, &text),
    }
}

/// One online CPU; `numa_node` comes from the node directories, which only the caller reads.
pub(crate) fn read_cpu(root: &Path, id: u32, numa_node: u32) -> Result<Cpu, TopologyError> {
    let dir = cpu_dir(root).join(format!("cpu{id}"));
    let topology = dir.join("topology");
    Ok(Cpu {
        id,
        core_id: read_number(&topology.join("core_id"))?,
        // die_id exists only on x86 and s390 (and only since 5.2): elsewhere there is one die.
        die_id: read_optional_level_id(&topology.join("die_id"))?.unwrap_or(0),
        cluster_id: read_optional_level_id(&topology.join("cluster_id"))?,
        socket_id: read_number(&topology.join("physical_package_id"))?,
        numa_node,
        l3_id: read_l3_id(&dir.join("cache"))?,
        thread_siblings: read_list(&topology.join("thread_siblings_list"))?,
    })
}

/// `die_id` and `cluster_id`: arm64 writes -1 where the firmware describes no such level,
/// which means the same as the file being absent.
fn read_optional_level_id(path: &Path) -> Result<Option<u32>, TopologyError> {
    match read_optional(path)? {
        None => Ok(None),
        Some(text) if text.trim() == "-1" => Ok(None),
        Some(text) => parse_number(path, &text).map(Some),
    }
}

/// The L3 of a CPU: the first `cache/indexN` whose `level` is 3. Its `id` where the kernel
/// writes one; older kernels and DT-described arm64 caches have none, and there the lowest CPU
/// sharing it names it, which is as unique as an id (no CPU shares two L3s).
fn read_l3_id(cache_dir: &Path) -> Result<Option<u32>, TopologyError> {
    let Some(indexes) = numbered_entries(cache_dir, "index", "")? else {
        return Ok(None);
    };
    for (_, index) in indexes {
        if read_number::<u32>(&index.join("level"))? != 3 {
            continue;
        }
        if let Some(id) = read_optional_number(&index.join("id"))? {
            return Ok(Some(id));
        }
        let shared_path = index.join("shared_cpu_list");
        return match read_list(&shared_path)?.first() {
            Some(lowest) => Ok(Some(lowest)),
            None => Err(malformed(&shared_path, "an L3 that no CPU shares")),
        };
    }
    Ok(None)
}
