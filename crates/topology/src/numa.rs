//! NUMA nodes: their CPUs, memory, hugepages and distances from `sys/devices/system/node/nodeN`,
//! or, on a kernel built without NUMA (no such directory), the one node 0 the rest of ingot can
//! still place on, from `proc/meminfo` and `sys/kernel/mm/hugepages`.

use std::path::Path;

use crate::{
    sysfs::{id_from, malformed, numbered_entries, parse_number, read, read_list, read_number},
    CpuSet, Hugepages, NumaNode, TopologyError,
};

/// The distance the kernel gives a node to itself (`LOCAL_DISTANCE`).
const LOCAL_DISTANCE: u32 = 10;

/// Every node with CPUs or memory, by id. `online` limits each node's CPUs to online ones.
pub(crate) fn read_numa_nodes(
    root: &Path,
    online: &CpuSet,
) -> Result<Vec<NumaNode>, TopologyError> {
    let node_dir = root.join("sys/devices/system/node");
    let Some(node_dirs) = numbered_entries(&node_dir, "node", "")? else {
        return Ok(vec![read_single_node(root, online)?]);
    };
    let mut nodes = Vec::new();
    for (number, dir) in node_dirs {
        let node = read_node(&dir, id_from(&dir, number)?, online)?;
        // A node with neither (its memory offlined, its CPUs unplugged) offers nothing to place
        // on; its distances still sit at its index in the others' vectors.
        if !node.cpus.is_empty() || node.memory_total_kb > 0 {
            nodes.push(node);
        }
    }
    Ok(nodes)
}

fn read_node(dir: &Path, id: u32, online: &CpuSet) -> Result<NumaNode, TopologyError> {
    let meminfo_path = dir.join("meminfo");
    let meminfo = read(&meminfo_path)?;
    Ok(NumaNode {
        id,
        // The node's list can hold CPUs that are present but offline.
        cpus: read_list(&dir.join("cpulist"))?.intersection(online),
        memory_total_kb: meminfo_kb(&meminfo_path, &meminfo, "MemTotal")?,
        memory_free_kb: meminfo_kb(&meminfo_path, &meminfo, "MemFree")?,
        hugepages: read_hugepages(&dir.join("hugepages"))?,
        distances: read_distances(&dir.join("distance"))?,
    })
}

/// A kernel without CONFIG_NUMA: all online CPUs and all memory on node 0.
fn read_single_node(root: &Path, online: &CpuSet) -> Result<NumaNode, TopologyError> {
    let meminfo_path = root.join("proc/meminfo");
    let meminfo = read(&meminfo_path)?;
    Ok(NumaNode {
        id: 0,
        cpus: online.clone(),
        memory_total_kb: meminfo_kb(&meminfo_path, &meminfo, "MemTotal")?,
        memory_free_kb: meminfo_kb(&meminfo_path, &meminfo, "MemFree")?,
        hugepages: read_hugepages(&root.join("sys/kernel/mm/hugepages"))?,
        distances: vec![LOCAL_DISTANCE],
    })
}

/// `hugepages-<size>kB/{nr_hugepages,free_hugepages}` under `dir`, smallest size first; none
/// where the kernel has no hugetlbfs (no directory).
fn read_hugepages(dir: &Path) -> Result<Vec<Hugepages>, TopologyError> {
    let Some(sizes) = numbered_entries(dir, "hugepages-", "kB")? else {
        return Ok(Vec::new());
    };
    sizes
        .into_iter()
        .map(|(size_kb, size_dir)| {
            Ok(Hugepages {
                size_kb,
                total: read_number(&size_dir.join("nr_hugepages"))?,
                free: read_number(&size_dir.join("free_hugepages"))?,
            })
        })
        .collect()
}

/// `nodeN/distance`: `10 21`, the distance to node i at index i.
fn read_distances(path: &Path) -> Result<Vec<u32>, TopologyError> {
    let text = read(path)?;
    let distances = text
        .split_whitespace()
        .map(|word| parse_number(path, word))
        .collect::<Result<Vec<u32>, _>>()?;
    if distances.is_empty() {
        return Err(malformed(path, "no distances"));
    }
    Ok(distances)
}

/// A field of a meminfo file in KiB: `MemTotal:   16314072 kB` in `proc/meminfo`,
/// `Node 0 MemTotal:   16314072 kB` in a node's.
fn meminfo_kb(path: &Path, meminfo: &str, field: &str) -> Result<u64, TopologyError> {
    let label = format!("{field}:");
    for line in meminfo.lines() {
        let mut words = line.split_whitespace();
        if !words.any(|word| word == label) {
            continue;
        }
        return match (words.next(), words.next()) {
            (Some(value), Some("kB")) => parse_number(path, value),
            _ => Err(malformed(
                path,
                format!("{line:?} is not `{label} <number> kB`"),
            )),
        };
    }
    Err(malformed(path, format!("no {label} line")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_fields_of_a_node_and_of_proc() {
        let path = Path::new("/meminfo");
        let node = "Node 1 MemTotal:       16314072 kB\nNode 1 MemFree:          123 kB\n";
        assert_eq!(
            meminfo_kb(path, node, "MemTotal").expect("total"),
            16_314_072
        );
        assert_eq!(meminfo_kb(path, node, "MemFree").expect("free"), 123);
        let proc = "MemTotal:        8000 kB\nMemFree:  7000 kB\nMemAvailable: 7500 kB\n";
        assert_eq!(meminfo_kb(path, proc, "MemFree").expect("free"), 7000);
    }

    #[test]
    fn meminfo_without_the_field_or_its_unit_is_malformed() {
        let path = Path::new("/node0/meminfo");
        for bad in [
            "MemFree: 1 kB\n",
            "MemTotal: 1\n",
            "MemTotal: x kB\n",
            "MemTotal: 1 MB\n",
        ] {
            let err = meminfo_kb(path, bad, "MemTotal").expect_err(bad);
            assert!(
                matches!(&err, TopologyError::Malformed { path: p, .. } if p == path),
                "{bad}: {err}"
            );
        }
    }
}
