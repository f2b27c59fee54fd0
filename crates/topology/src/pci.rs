//! PCI functions from `sys/bus/pci/devices/<address>`: ids and class, NUMA node, bound driver,
//! IOMMU group, network interfaces and SR-IOV links; and which of them are GPUs.

use std::path::Path;

use crate::{
    sysfs::{
        entry_names, link_name, malformed, numbered_entries, parse_number, read, read_optional,
        read_optional_number,
    },
    Gpu, GpuVendor, PciClass, PciDevice, TopologyError,
};

/// Every PCI function, by address; none where the node has no PCI bus (no directory).
pub(crate) fn read_pci_devices(root: &Path) -> Result<Vec<PciDevice>, TopologyError> {
    let devices_dir = root.join("sys/bus/pci/devices");
    let Some(addresses) = entry_names(&devices_dir)? else {
        return Ok(Vec::new());
    };
    // Addresses are fixed-width lowercase hex, so sorting names sorts by domain, bus, slot and
    // function; entry_names has sorted them.
    addresses
        .into_iter()
        .map(|address| read_pci_device(&devices_dir.join(&address), address))
        .collect()
}

/// One function. `dir` is the entry under `bus/pci/devices`, in real sysfs a symlink into
/// `devices/pci...`: paths through it follow it, and the links inside it are read as names.
fn read_pci_device(dir: &Path, address: String) -> Result<PciDevice, TopologyError> {
    let class_code = read_hex_id(&dir.join("class"), 6)?;
    Ok(PciDevice {
        vendor: read_hex_id(&dir.join("vendor"), 4)?,
        device: read_hex_id(&dir.join("device"), 4)?,
        class: PciClass::from_class_code(&class_code),
        class_code,
        numa_node: read_numa_node(&dir.join("numa_node"))?,
        driver: link_name(&dir.join("driver"))?,
        iommu_group: read_iommu_group(&dir.join("iommu_group"))?,
        netdevs: entry_names(&dir.join("net"))?.unwrap_or_default(),
        physfn: link_name(&dir.join("physfn"))?,
        virtfns: read_virtfns(dir)?,
        sriov_totalvfs: read_optional_number(&dir.join("sriov_totalvfs"))?,
        sriov_numvfs: read_optional_number(&dir.join("sriov_numvfs"))?,
        address,
    })
}

/// `vendor`, `device`, `class`: `0x8086` → `8086`, checked to be `digits` hex digits.
fn read_hex_id(path: &Path, digits: usize) -> Result<String, TopologyError> {
    let text = read(path)?;
    let hex = normalized_hex(&text);
    if hex.len() != digits || !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(malformed(
            path,
            format!("{:?} is not {digits} hex digits", text.trim()),
        ));
    }
    Ok(hex)
}

/// `numa_node`: -1 where the platform does not say (most VMs, single-node machines).
fn read_numa_node(path: &Path) -> Result<Option<u32>, TopologyError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    match parse_number::<i64>(path, &text)? {
        -1 => Ok(None),
        node => u32::try_from(node)
            .map(Some)
            .map_err(|_| malformed(path, format!("{node} is not a NUMA node"))),
    }
}

fn read_iommu_group(path: &Path) -> Result<Option<u32>, TopologyError> {
    link_name(path)?
        .map(|group| parse_number(path, &group))
        .transpose()
}

/// A PF's VFs: `virtfnN` links by N (so `virtfn10` comes after `virtfn2`).
fn read_virtfns(dir: &Path) -> Result<Vec<String>, TopologyError> {
    let Some(links) = numbered_entries(dir, "virtfn", "")? else {
        return Ok(Vec::new());
    };
    let mut virtfns = Vec::with_capacity(links.len());
    for (_, link) in links {
        // A VF removed between listing and reading is gone; that is no error.
        if let Some(address) = link_name(&link)? {
            virtfns.push(address);
        }
    }
    Ok(virtfns)
}

/// A PCI id as sysfs writes it or a caller may hold it (`0x10DE\n`, `10de`) in the form
/// [`PciDevice`] keeps: no `0x`, lowercase.
fn normalized_hex(id: &str) -> String {
    let trimmed = id.trim();
    trimmed
        .strip_prefix("0x")
        .unwrap_or(trimmed)
        .to_ascii_lowercase()
}

impl PciClass {
    /// From a class code's base class (its first two hex digits): `020000` → Network.
    pub fn from_class_code(class_code: &str) -> PciClass {
        match normalized_hex(class_code).get(..2) {
            Some("01") => PciClass::Storage,
            Some("02") => PciClass::Network,
            Some("03") => PciClass::Display,
            Some("12") => PciClass::Accelerator,
            _ => PciClass::Other,
        }
    }
}

impl GpuVendor {
    /// The GPU vendor of a function with this vendor id and class code, None where it is not a
    /// GPU ingot knows: Nvidia and AMD display (03) or processing-accelerator (12) functions,
    /// Intel display functions (Intel's class 12 functions are NPUs, not GPUs).
    pub fn from_pci(vendor: &str, class_code: &str) -> Option<GpuVendor> {
        let class = PciClass::from_class_code(class_code);
        match (normalized_hex(vendor).as_str(), class) {
            ("10de", PciClass::Display | PciClass::Accelerator) => Some(GpuVendor::Nvidia),
            ("1002", PciClass::Display | PciClass::Accelerator) => Some(GpuVendor::Amd),
            ("8086", PciClass::Display) => Some(GpuVendor::Intel),
            _ => None,
        }
    }
}

impl Gpu {
    /// The GPU a PCI function is, if it is one.
    pub fn from_pci_device(device: &PciDevice) -> Option<Gpu> {
        Some(Gpu {
            vendor: GpuVendor::from_pci(&device.vendor, &device.class_code)?,
            address: device.address.clone(),
            numa_node: device.numa_node,
            driver: device.driver.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_by_base_class() {
        assert_eq!(PciClass::from_class_code("020000"), PciClass::Network);
        assert_eq!(PciClass::from_class_code("0x030200"), PciClass::Display);
        assert_eq!(PciClass::from_class_code("010802"), PciClass::Storage);
        assert_eq!(PciClass::from_class_code("120000"), PciClass::Accelerator);
        assert_eq!(PciClass::from_class_code("060400"), PciClass::Other);
        assert_eq!(PciClass::from_class_code("ffff00"), PciClass::Other);
        assert_eq!(PciClass::from_class_code(""), PciClass::Other);
        assert_eq!(PciClass::from_class_code("é"), PciClass::Other);
    }

    #[test]
    fn gpu_vendors() {
        assert_eq!(
            GpuVendor::from_pci("10de", "030200"),
            Some(GpuVendor::Nvidia)
        );
        assert_eq!(
            GpuVendor::from_pci("10de", "120000"),
            Some(GpuVendor::Nvidia)
        );
        assert_eq!(
            GpuVendor::from_pci("0x1002", "038000"),
            Some(GpuVendor::Amd)
        );
        assert_eq!(GpuVendor::from_pci("1002", "120000"), Some(GpuVendor::Amd));
        assert_eq!(
            GpuVendor::from_pci("8086", "030000"),
            Some(GpuVendor::Intel)
        );
        // An Intel NPU, an Nvidia audio function, an ASPEED BMC's VGA.
        assert_eq!(GpuVendor::from_pci("8086", "120000"), None);
        assert_eq!(GpuVendor::from_pci("10de", "040300"), None);
        assert_eq!(GpuVendor::from_pci("1a03", "030000"), None);
    }
}
