//! NVIDIA CDI spec generation (`ingot cdi generate nvidia`): a `nvidia.com/gpu` spec for the GPUs
//! the driver lists under `/proc/driver/nvidia/gpus`, as `nvidia-ctk cdi generate` writes one.
//!
//! Every device is named twice, by index (PCI bus order, as nvidia-smi and nvidia-ctk number GPUs)
//! and by UUID, and carries its device node and, as annotations, its PCI address and NUMA node;
//! `all` has every GPU's node. What every device shares is in the spec-wide edits: the control
//! nodes, the driver's libraries, binaries and firmware as read-only bind mounts at their own
//! paths, and where the node has `nvidia-cdi-hook` (or `nvidia-ctk`) the hook that updates the
//! container's ld cache.
//!
//! Everything is read below a root (`/` for the node itself, a captured tree in tests), never
//! written; symlinks are followed as the node would follow them without leaving the root. The
//! spec names the node's own paths (`/dev/nvidia0`, not `<root>/dev/nvidia0`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use container_device_interface::specs::config::Spec;
use serde::Serialize;

use crate::cdi::PCI_ADDRESS_ANNOTATION;
use crate::DevicesError;

/// The kind of the generated spec's devices.
pub const KIND: &str = "nvidia.com/gpu";
/// A GPU device's annotation naming its NUMA node (absent where the node does not say).
pub const NUMA_NODE_ANNOTATION: &str = "ingot.dev/numa-node";

/// NVIDIA's PCI vendor id.
const NVIDIA_VENDOR: &str = "0x10de";
/// PCI base classes of GPUs: display controllers (VGA 0x0300, 3D 0x0302) and processing
/// accelerators (0x12, as some data-centre parts report themselves).
const GPU_CLASSES: &[u32] = &[0x03, 0x12];
/// The device nodes every GPU needs beside its own, where the node has them.
const CONTROL_NODES: &[&str] = &[
    "/dev/nvidiactl",
    "/dev/nvidia-uvm",
    "/dev/nvidia-uvm-tools",
    "/dev/nvidia-modeset",
];
/// Where the driver's libraries are looked for (beside what `/etc/ld.so.conf` names).
const LIBRARY_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu/nvidia/current",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu/nvidia/current",
    "/usr/lib64",
    "/usr/lib",
    "/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/lib64",
    "/lib",
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
];
/// Where the driver's binaries and the CDI hook are looked for, in this order.
const BINARY_DIRS: &[&str] = &[
    "/usr/bin",
    "/usr/local/bin",
    "/usr/local/nvidia/bin",
    "/usr/local/nvidia/toolkit",
];
const BINARIES: &[&str] = &[
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
];
const FIRMWARE_DIRS: &[&str] = &["/lib/firmware/nvidia", "/usr/lib/firmware/nvidia"];
const MOUNT_OPTIONS: &[&str] = &["ro", "nosuid", "nodev", "bind"];
/// As the kernel's MAXSYMLINKS.
const MAX_LINKS: u32 = 40;

/// A GPU the NVIDIA driver drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvidiaGpu {
    /// Its position in PCI bus order, as nvidia-smi and nvidia-ctk number GPUs.
    pub index: usize,
    /// `GPU-...`.
    pub uuid: String,
    /// The minor of its device node, `/dev/nvidia<minor>`.
    pub minor: u32,
    /// Its PCI function, `0000:3b:00.0`.
    pub pci_address: String,
    /// Its NUMA node; None where sysfs says -1 or has no such file.
    pub numa_node: Option<u32>,
    pub model: String,
}

/// The GPUs the driver lists under `<root>/proc/driver/nvidia/gpus`, in index order, each
/// checked against its PCI function in `<root>/sys/bus/pci/devices` (NVIDIA's, a display
/// controller; its NUMA node). No driver or no GPU is [`DevicesError::NoNvidiaGpu`].
pub fn gpus(root: &Path) -> Result<Vec<NvidiaGpu>, DevicesError> {
    let driver = root.join("proc/driver/nvidia");
    let listed = driver.join("gpus");
    let entries = match fs::read_dir(&listed) {
        Ok(entries) => entries,
        Err(err) if absent(&err) => {
            let reason = if driver.is_dir() {
                format!(
                    "the NVIDIA driver lists no GPU ({} does not exist)",
                    listed.display()
                )
            } else {
                format!(
                    "no NVIDIA driver ({} does not exist){}",
                    driver.display(),
                    unclaimed_gpus(root)
                )
            };
            return Err(DevicesError::NoNvidiaGpu {
                root: root.to_path_buf(),
                reason,
            });
        }
        Err(err) => return Err(DevicesError::io(listed, err)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| DevicesError::io(&listed, err))?;
        let path = entry.path().join("information");
        let text = fs::read_to_string(&path).map_err(|err| DevicesError::io(&path, err))?;
        let gpu = parse_information(&path, &text, &entry.file_name().to_string_lossy())?;
        if let Some(gpu) = gpu {
            found.push(gpu);
        }
    }
    if found.is_empty() {
        return Err(DevicesError::NoNvidiaGpu {
            root: root.to_path_buf(),
            reason: format!(
                "the NVIDIA driver lists no GPU in {}{}",
                listed.display(),
                unclaimed_gpus(root)
            ),
        });
    }
    found.sort_by_key(|(key, _)| *key);
    for pair in found.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(malformed(
                &listed,
                format!("two GPUs at {}", pair[0].1.pci_address),
            ));
        }
    }
    let mut gpus: Vec<NvidiaGpu> = Vec::with_capacity(found.len());
    for (index, (_, mut gpu)) in found.into_iter().enumerate() {
        if let Some(other) = gpus.iter().find(|other| other.minor == gpu.minor) {
            return Err(malformed(
                &listed,
                format!(
                    "GPUs {} and {} both have device minor {}",
                    other.pci_address, gpu.pci_address, gpu.minor
                ),
            ));
        }
        gpu.index = index;
        gpu.numa_node = check_pci_function(root, &gpu)?;
        gpus.push(gpu);
    }
    Ok(gpus)
}

/// The driver's version, from `<root>/proc/driver/nvidia/version` (`580.159.04`).
pub fn driver_version(root: &Path) -> Result<String, DevicesError> {
    let path = root.join("proc/driver/nvidia/version");
    let text = fs::read_to_string(&path).map_err(|err| DevicesError::io(&path, err))?;
    text.lines()
        .filter_map(|line| line.strip_prefix("NVRM version:"))
        .flat_map(str::split_whitespace)
        .find(|word| {
            word.contains('.')
                && word.chars().all(|c| c.is_ascii_digit() || c == '.')
                && word.starts_with(|c: char| c.is_ascii_digit())
        })
        .map(str::to_string)
        .ok_or_else(|| malformed(&path, "no driver version on an \"NVRM version:\" line"))
}

/// The CDI spec for the NVIDIA GPUs of the node under `root`, validated as the
/// `container-device-interface` crate validates a spec it reads. A GPU whose device node is
/// missing is [`DevicesError::MissingDeviceNode`]; other absent files are left out.
pub fn generate(root: &Path) -> Result<Spec, DevicesError> {
    let gpus = gpus(root)?;
    let version = driver_version(root)?;

    let mut devices = Vec::with_capacity(2 * gpus.len() + 1);
    let mut all = Vec::with_capacity(gpus.len());
    for gpu in &gpus {
        let node_path = format!("/dev/nvidia{}", gpu.minor);
        let node =
            device_node(root, &node_path)?.ok_or_else(|| DevicesError::MissingDeviceNode {
                path: under(root, Path::new(&node_path)),
                gpu: format!("{} ({}, {})", gpu.index, gpu.uuid, gpu.pci_address),
            })?;
        let mut annotations = BTreeMap::new();
        annotations.insert(PCI_ADDRESS_ANNOTATION.to_string(), gpu.pci_address.clone());
        if let Some(numa) = gpu.numa_node {
            annotations.insert(NUMA_NODE_ANNOTATION.to_string(), numa.to_string());
        }
        let edits = RawEdits {
            device_nodes: vec![node.clone()],
            ..RawEdits::default()
        };
        for name in [gpu.index.to_string(), gpu.uuid.clone()] {
            devices.push(RawDevice {
                name,
                annotations: annotations.clone(),
                container_edits: edits.clone(),
            });
        }
        all.push(node);
    }
    devices.push(RawDevice {
        name: "all".to_string(),
        annotations: BTreeMap::new(),
        container_edits: RawEdits {
            device_nodes: all,
            ..RawEdits::default()
        },
    });

    let mut common = RawEdits::default();
    for path in CONTROL_NODES {
        common.device_nodes.extend(device_node(root, path)?);
    }
    let hook = ldcache_hook_binary(root)?;
    let libraries = libraries(root, &version, hook.is_some())?;
    if libraries.is_empty() {
        tracing::warn!(root = %root.display(), %version, "no NVIDIA driver libraries found");
    }
    let mut mounted: Vec<String> = libraries.iter().filter_map(node_str).collect();
    for name in BINARIES {
        mounted.extend(
            find_file(root, BINARY_DIRS, name)?
                .as_deref()
                .and_then(node_str),
        );
    }
    mounted.extend(firmware_dir(root, &version)?.as_deref().and_then(node_str));
    common.mounts = mounted
        .into_iter()
        .map(|path| RawMount {
            host_path: path.clone(),
            container_path: path,
            options: MOUNT_OPTIONS.to_vec(),
        })
        .collect();
    if let (Some((binary, prefix)), false) = (hook, libraries.is_empty()) {
        let mut folders: Vec<String> = Vec::new();
        for dir in libraries
            .iter()
            .filter_map(|lib| lib.parent())
            .filter_map(node_str)
        {
            if !folders.contains(&dir) {
                folders.push(dir);
            }
        }
        let mut args: Vec<String> = prefix.iter().map(|arg| arg.to_string()).collect();
        for folder in folders {
            args.push("--folder".to_string());
            args.push(folder);
        }
        common.hooks.extend(node_str(&binary).map(|path| RawHook {
            hook_name: "createContainer",
            path,
            args,
        }));
    }

    build_spec(
        root,
        RawSpec {
            cdi_version: String::new(),
            kind: KIND,
            devices,
            container_edits: common,
        },
    )
}

/// Writes `spec` as pretty JSON to `output`: to a temporary file beside it, then renamed over
/// it, so a reader of the directory (a CDI registry) never sees half a spec.
pub fn write_spec(spec: &Spec, output: &Path) -> Result<(), DevicesError> {
    let mut json =
        serde_json::to_string_pretty(spec).map_err(|err| malformed(output, err.to_string()))?;
    json.push('\n');
    let name = output
        .file_name()
        .ok_or_else(|| malformed(output, "not a file name"))?;
    let dir = match output.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // Not a `.json`/`.yaml` name: a CDI registry watching the directory ignores it.
    let mut temp_name = OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = dir.join(temp_name);
    let _ = fs::remove_file(&temp);
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(json.as_bytes())?;
            file.sync_all()
        })
        .map_err(|err| DevicesError::io(&temp, err))
        .and_then(|()| fs::rename(&temp, output).map_err(|err| DevicesError::io(output, err)));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

// ---- the spec, in the CDI format (the crate's types keep their fields to themselves) ----

#[derive(Debug, Serialize)]
struct RawSpec {
    #[serde(rename = "cdiVersion")]
    cdi_version: String,
    kind: &'static str,
    devices: Vec<RawDevice>,
    #[serde(rename = "containerEdits")]
    container_edits: RawEdits,
}

#[derive(Debug, Serialize)]
struct RawDevice {
    name: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
    #[serde(rename = "containerEdits")]
    container_edits: RawEdits,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct RawEdits {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    device_nodes: Vec<RawNode>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    mounts: Vec<RawMount>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hooks: Vec<RawHook>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct RawNode {
    path: String,
    #[serde(rename = "type")]
    kind: &'static str,
    major: i64,
    minor: i64,
    /// The node's permission bits on the host.
    file_mode: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct RawMount {
    host_path: String,
    container_path: String,
    options: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct RawHook {
    hook_name: &'static str,
    path: String,
    args: Vec<String>,
}

/// `raw` as the crate's Spec, at the lowest CDI version its content needs, validated.
fn build_spec(root: &Path, mut raw: RawSpec) -> Result<Spec, DevicesError> {
    use container_device_interface::{spec::new_spec, version::minimum_required_version};
    let invalid = |reason: String| {
        malformed(
            root,
            format!("the generated CDI spec is invalid (a bug): {reason}"),
        )
    };
    let convert = |raw: &RawSpec| -> Result<Spec, DevicesError> {
        serde_json::to_value(raw)
            .and_then(serde_json::from_value)
            .map_err(|err| invalid(err.to_string()))
    };
    raw.cdi_version = "0.3.0".to_string();
    let version =
        minimum_required_version(&convert(&raw)?).map_err(|err| invalid(format!("{err:#}")))?;
    raw.cdi_version = version.to_string();
    let spec = convert(&raw)?;
    new_spec(&spec, &PathBuf::from("nvidia.json"), 0).map_err(|err| invalid(format!("{err:#}")))?;
    Ok(spec)
}

// ---- GPUs ----

type BusKey = (u32, u32, u32, u32);

/// One `information` file: the GPU and its bus order key, or None for a GPU the driver excludes
/// (`GPU Excluded: Yes`: NVML and nvidia-smi leave it out and give it no index).
fn parse_information(
    path: &Path,
    text: &str,
    dir_name: &str,
) -> Result<Option<(BusKey, NvidiaGpu)>, DevicesError> {
    let fields: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim(), value.trim()))
        .collect();
    let field = |name: &str| {
        fields
            .get(name)
            .copied()
            .filter(|value| !value.is_empty())
            .ok_or_else(|| malformed(path, format!("no {name:?} field")))
    };
    let uuid = field("GPU UUID")?;
    if !uuid.starts_with("GPU-") || !uuid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(malformed(path, format!("{uuid:?} is not a GPU UUID")));
    }
    let minor = field("Device Minor")?;
    let minor: u32 = minor
        .parse()
        .map_err(|_| malformed(path, format!("Device Minor {minor:?} is not a number")))?;
    let address = fields
        .get("Bus Location")
        .copied()
        .filter(|value| !value.is_empty())
        .unwrap_or(dir_name)
        .to_ascii_lowercase();
    let key = bus_key(&address)
        .ok_or_else(|| malformed(path, format!("{address:?} is not a PCI address")))?;
    if fields
        .get("GPU Excluded")
        .is_some_and(|v| v.eq_ignore_ascii_case("yes"))
    {
        tracing::info!(%address, uuid, "NVIDIA GPU excluded by the driver, left out");
        return Ok(None);
    }
    Ok(Some((
        key,
        NvidiaGpu {
            index: 0,
            uuid: uuid.to_string(),
            minor,
            pci_address: address,
            numa_node: None,
            model: fields.get("Model").copied().unwrap_or_default().to_string(),
        },
    )))
}

/// `dddd:bb:dd.f` as numbers, for bus order.
fn bus_key(address: &str) -> Option<BusKey> {
    let mut parts = address.split(':');
    let (domain, bus, slot) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (device, function) = slot.split_once('.')?;
    let hex = |s: &str| {
        (!s.is_empty() && s.len() <= 8)
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()
    };
    Some((hex(domain)?, hex(bus)?, hex(device)?, hex(function)?))
}

/// Checks that the GPU's PCI function is NVIDIA's and a display controller, and returns its
/// NUMA node. A tree without PCI devices at all (no sysfs) is not checked.
fn check_pci_function(root: &Path, gpu: &NvidiaGpu) -> Result<Option<u32>, DevicesError> {
    let devices = root.join("sys/bus/pci/devices");
    if !devices.is_dir() {
        tracing::warn!(path = %devices.display(), "no PCI devices: GPUs not checked, NUMA nodes unknown");
        return Ok(None);
    }
    // What sysfs says there contradicts the driver.
    let contradicts = |path: &Path, what: String| {
        malformed(
            path,
            format!("{what}, but the NVIDIA driver lists GPU {} there", gpu.uuid),
        )
    };
    let function = devices.join(&gpu.pci_address);
    let vendor_path = function.join("vendor");
    let Some(vendor) = read_attribute(&vendor_path)? else {
        return Err(contradicts(&function, "no such PCI function".into()));
    };
    if !vendor.eq_ignore_ascii_case(NVIDIA_VENDOR) {
        return Err(contradicts(
            &vendor_path,
            format!("vendor {vendor} is not NVIDIA's ({NVIDIA_VENDOR})"),
        ));
    }
    let class_path = function.join("class");
    if let Some(class) = read_attribute(&class_path)? {
        let value = parse_hex(&class)
            .ok_or_else(|| malformed(&class_path, format!("{class:?} is not a PCI class")))?;
        if !GPU_CLASSES.contains(&(value >> 16)) {
            return Err(contradicts(
                &class_path,
                format!("class {class} is neither a display controller nor an accelerator"),
            ));
        }
    }
    let numa_path = function.join("numa_node");
    let Some(numa) = read_attribute(&numa_path)? else {
        return Ok(None);
    };
    let numa: i64 = numa
        .parse()
        .map_err(|_| malformed(&numa_path, format!("{numa:?} is not a NUMA node")))?;
    Ok(u32::try_from(numa).ok())
}

/// Where the driver lists no GPU: the NVIDIA display functions sysfs has anyway, to say so.
fn unclaimed_gpus(root: &Path) -> String {
    let Ok(entries) = fs::read_dir(root.join("sys/bus/pci/devices")) else {
        return String::new();
    };
    let mut addresses: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let attribute = |name: &str| read_attribute(&entry.path().join(name)).ok().flatten();
            attribute("vendor").is_some_and(|v| v.eq_ignore_ascii_case(NVIDIA_VENDOR))
                && attribute("class")
                    .as_deref()
                    .and_then(parse_hex)
                    .is_some_and(|class| GPU_CLASSES.contains(&(class >> 16)))
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    if addresses.is_empty() {
        return String::new();
    }
    addresses.sort();
    format!(
        "; sysfs has NVIDIA GPU functions at {}: is the nvidia kernel module loaded, or are they bound to another driver?",
        addresses.join(", ")
    )
}

fn read_attribute(path: &Path) -> Result<Option<String>, DevicesError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(err) if absent(&err) => Ok(None),
        Err(err) => Err(DevicesError::io(path, err)),
    }
}

fn parse_hex(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    u32::from_str_radix(digits, 16).ok()
}

// ---- device nodes ----

/// The device node at `path` on the node, with its type, numbers and mode; None where absent.
fn device_node(root: &Path, path: &str) -> Result<Option<RawNode>, DevicesError> {
    let Some(real) = resolve(root, Path::new(path))? else {
        return Ok(None);
    };
    let host = under(root, &real);
    let meta = fs::metadata(&host).map_err(|err| DevicesError::io(&host, err))?;
    let kind = if meta.file_type().is_char_device() {
        "c"
    } else if meta.file_type().is_block_device() {
        "b"
    } else {
        return Err(malformed(&host, "not a device node"));
    };
    let (major, minor) = major_minor(meta.rdev());
    Ok(Some(RawNode {
        path: path.to_string(),
        kind,
        major: i64::from(major),
        minor: i64::from(minor),
        file_mode: meta.mode() & 0o777,
    }))
}

/// A `dev_t`'s numbers, as glibc's `major()`/`minor()` split it.
fn major_minor(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & 0xffff_f000);
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xffff_ff00);
    (
        u32::try_from(major).unwrap_or(u32::MAX),
        u32::try_from(minor).unwrap_or(u32::MAX),
    )
}

// ---- driver files ----

/// The driver's libraries, as node paths: in each library directory, every `lib*.so.<version>`,
/// and the driver's `lib*.so.<N>` (soname) files: the real library where it is a plain file, and
/// where it is a link, too, unless `ldcache_hook` (which makes the links in the container).
/// 32-bit ELF files are left out of a 64-bit build.
fn libraries(root: &Path, version: &str, ldcache_hook: bool) -> Result<Vec<PathBuf>, DevicesError> {
    let versioned = format!(".so.{version}");
    let mut found = Vec::new();
    for dir in library_dirs(root)? {
        let host_dir = under(root, &dir);
        let entries = match fs::read_dir(&host_dir) {
            Ok(entries) => entries,
            Err(err) if absent(&err) => continue,
            Err(err) => return Err(DevicesError::io(host_dir, err)),
        };
        let mut names: Vec<String> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|err| DevicesError::io(&host_dir, err))?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            let is_versioned = name.len() > versioned.len() + 3
                && name.starts_with("lib")
                && name.ends_with(&versioned);
            if !is_versioned && !is_driver_soname(&name) {
                continue;
            }
            let path = dir.join(&name);
            let host = host_dir.join(&name);
            let is_link = fs::symlink_metadata(&host)
                .map_err(|err| DevicesError::io(&host, err))?
                .file_type()
                .is_symlink();
            if !is_versioned && is_link && ldcache_hook {
                continue;
            }
            let Some(target) = resolve(root, &path)? else {
                tracing::debug!(path = %host.display(), "dangling library link skipped");
                continue;
            };
            let target = under(root, &target);
            if target.is_file() && native_elf(&target)? {
                found.push(path);
            }
        }
    }
    Ok(found)
}

/// `lib<stem>.so.<N>` of one of the driver's libraries (not the CUDA toolkit's `libcudart`).
fn is_driver_soname(name: &str) -> bool {
    let Some((stem, number)) = name.split_once(".so.") else {
        return false;
    };
    !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit())
        && stem.starts_with("lib")
        && (stem.contains("nvidia")
            || matches!(
                stem,
                "libcuda" | "libcudadebugger" | "libnvcuvid" | "libnvoptix"
            ))
}

/// False for an ELF file of the other word size; anything else (an empty test file) passes.
fn native_elf(path: &Path) -> Result<bool, DevicesError> {
    let mut header = [0u8; 5];
    let mut file = fs::File::open(path).map_err(|err| DevicesError::io(path, err))?;
    let mut read = 0;
    while read < header.len() {
        match file.read(&mut header[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(DevicesError::io(path, err)),
        }
    }
    if read < header.len() || &header[..4] != b"\x7fELF" {
        return Ok(true);
    }
    let native = if cfg!(target_pointer_width = "64") {
        2
    } else {
        1
    };
    Ok(header[4] == native)
}

/// The library directories that exist, each once (`/lib` a link to `usr/lib` is `/usr/lib`'s
/// twin): the usual ones, then what `/etc/ld.so.conf` names.
fn library_dirs(root: &Path) -> Result<Vec<PathBuf>, DevicesError> {
    let mut candidates: Vec<PathBuf> = LIBRARY_DIRS.iter().map(PathBuf::from).collect();
    ld_so_conf(root, Path::new("/etc/ld.so.conf"), 0, &mut candidates)?;
    let mut dirs: Vec<(PathBuf, PathBuf)> = Vec::new();
    for dir in candidates {
        let Some(real) = resolve(root, &dir)? else {
            continue;
        };
        if under(root, &real).is_dir() && !dirs.iter().any(|(_, seen)| *seen == real) {
            dirs.push((dir, real));
        }
    }
    Ok(dirs.into_iter().map(|(dir, _)| dir).collect())
}

/// The directories an ld.so.conf file names, following its `include`s.
fn ld_so_conf(
    root: &Path,
    file: &Path,
    depth: u32,
    out: &mut Vec<PathBuf>,
) -> Result<(), DevicesError> {
    if depth > 8 {
        return Ok(());
    }
    let Some(real) = resolve(root, file)? else {
        return Ok(());
    };
    let host = under(root, &real);
    let text = match fs::read_to_string(&host) {
        Ok(text) => text,
        Err(err) if absent(&err) || err.kind() == io::ErrorKind::IsADirectory => return Ok(()),
        Err(err) => return Err(DevicesError::io(host, err)),
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if let Some(patterns) = line.strip_prefix("include") {
            if !patterns.starts_with(char::is_whitespace) {
                continue;
            }
            for pattern in patterns.split_whitespace() {
                let pattern = Path::new("/etc").join(pattern);
                for included in glob(root, &pattern)? {
                    ld_so_conf(root, &included, depth + 1, out)?;
                }
            }
        } else if !line.starts_with("hwcap") {
            out.extend(
                line.split(|c: char| c.is_whitespace() || c == ',' || c == ':')
                    .filter(|dir| dir.starts_with('/'))
                    .map(PathBuf::from),
            );
        }
    }
    Ok(())
}

/// The files a pattern with `*`s in its last component matches, sorted.
fn glob(root: &Path, pattern: &Path) -> Result<Vec<PathBuf>, DevicesError> {
    let (Some(dir), Some(name)) = (
        pattern.parent(),
        pattern.file_name().and_then(|n| n.to_str()),
    ) else {
        return Ok(Vec::new());
    };
    if !name.contains('*') {
        return Ok(vec![pattern.to_path_buf()]);
    }
    let Some(real) = resolve(root, dir)? else {
        return Ok(Vec::new());
    };
    let host = under(root, &real);
    let entries = match fs::read_dir(&host) {
        Ok(entries) => entries,
        Err(err) if absent(&err) => return Ok(Vec::new()),
        Err(err) => return Err(DevicesError::io(host, err)),
    };
    let mut matched: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|candidate| wildcard_match(name, candidate))
        .map(|candidate| dir.join(candidate))
        .collect();
    matched.sort();
    Ok(matched)
}

fn wildcard_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// The first `dir/name` of `dirs` whose target passes `kind` (a file, a directory), as found
/// (not resolved).
fn find_in(
    root: &Path,
    dirs: &[&str],
    name: &str,
    kind: fn(&Path) -> bool,
) -> Result<Option<PathBuf>, DevicesError> {
    for dir in dirs {
        let path = Path::new(dir).join(name);
        if let Some(real) = resolve(root, &path)? {
            if kind(&under(root, &real)) {
                return Ok(Some(path));
            }
        }
    }
    Ok(None)
}

/// The first `dir/name` of `dirs` that is a file, as found (not resolved).
fn find_file(root: &Path, dirs: &[&str], name: &str) -> Result<Option<PathBuf>, DevicesError> {
    find_in(root, dirs, name, Path::is_file)
}

/// The binary of the ld cache hook and the arguments before its `--folder`s, as nvidia-ctk
/// writes them: `nvidia-cdi-hook update-ldcache`, or the older `nvidia-ctk hook update-ldcache`.
fn ldcache_hook_binary(
    root: &Path,
) -> Result<Option<(PathBuf, &'static [&'static str])>, DevicesError> {
    if let Some(path) = find_file(root, BINARY_DIRS, "nvidia-cdi-hook")? {
        return Ok(Some((path, &["nvidia-cdi-hook", "update-ldcache"])));
    }
    Ok(find_file(root, BINARY_DIRS, "nvidia-ctk")?
        .map(|path| (path, &["nvidia-ctk", "hook", "update-ldcache"][..])))
}

/// The GSP firmware directory of this driver version, where there is one.
fn firmware_dir(root: &Path, version: &str) -> Result<Option<PathBuf>, DevicesError> {
    find_in(root, FIRMWARE_DIRS, version, Path::is_dir)
}

// ---- paths below the root ----

/// Where the node's absolute `path` is on this machine.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The node's absolute `path` with every symlink followed as the node would, never leaving
/// `root`: an absolute target starts again at `root`, `..` stops there. None where something on
/// the way does not exist.
fn resolve(root: &Path, path: &Path) -> Result<Option<PathBuf>, DevicesError> {
    fn push(pending: &mut Vec<OsString>, path: &Path) {
        let parts: Vec<OsString> = path
            .components()
            .filter_map(|component| match component {
                Component::Normal(part) => Some(part.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect();
        pending.extend(parts.into_iter().rev());
    }
    let mut pending = Vec::new();
    push(&mut pending, path);
    let mut resolved = PathBuf::from("/");
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let host = under(root, &candidate);
        match fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(malformed(&host, "too many levels of symbolic links"));
                }
                let target = fs::read_link(&host).map_err(|err| DevicesError::io(&host, err))?;
                if target.has_root() {
                    resolved = PathBuf::from("/");
                }
                push(&mut pending, &target);
            }
            Ok(_) => resolved = candidate,
            Err(err) if absent(&err) => return Ok(None),
            Err(err) => return Err(DevicesError::io(host, err)),
        }
    }
    Ok(Some(resolved))
}

/// A node path as the spec writes it; a non-UTF-8 one is left out.
fn node_str(path: impl AsRef<Path>) -> Option<String> {
    let path = path.as_ref();
    let text = path.to_str().map(str::to_string);
    if text.is_none() {
        tracing::warn!(path = %path.display(), "not UTF-8, left out of the CDI spec");
    }
    text
}

fn absent(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> DevicesError {
    DevicesError::Malformed {
        path: path.into(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use container_device_interface::spec::{new_spec, validate_spec};
    use serde_json::Value;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::process::Command;

    const H100_UUID: &str = "GPU-616ab939-9bd6-ef19-7895-dba063c27559";
    const H100_VERSION: &str = "580.159.04";

    /// The real capture (`/work/shared/fixtures/nvidia-h100-vm`, beside the checkout).
    fn capture_dir() -> PathBuf {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/nvidia-h100-vm");
        assert!(
            dir.join("root").is_dir(),
            "the nvidia-h100-vm capture is missing at {}",
            dir.display()
        );
        dir
    }

    /// A node's tree in a temporary directory.
    struct Tree {
        dir: tempfile::TempDir,
    }

    /// One hand-made GPU.
    struct Fake {
        bus: &'static str,
        minor: u32,
        uuid: &'static str,
        numa: i32,
    }

    impl Tree {
        fn new() -> Tree {
            Tree {
                dir: tempfile::tempdir().expect("temp dir"),
            }
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        fn path(&self, path: &str) -> PathBuf {
            under(self.root(), Path::new(path))
        }

        fn write(&self, path: &str, contents: &str) {
            let path = self.path(path);
            fs::create_dir_all(path.parent().expect("a parent")).expect("create dirs");
            fs::write(&path, contents).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        }

        fn executable(&self, path: &str) {
            self.write(path, "#!/bin/sh\n");
            fs::set_permissions(self.path(path), fs::Permissions::from_mode(0o755)).expect("chmod");
        }

        fn link(&self, path: &str, target: &str) {
            let path = self.path(path);
            fs::create_dir_all(path.parent().expect("a parent")).expect("create dirs");
            symlink(target, &path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        }

        /// A device node (needs root, as the tests run).
        fn mknod(&self, path: &str, kind: char, major: u32, minor: u32, mode: u32) {
            let path = self.path(path);
            fs::create_dir_all(path.parent().expect("a parent")).expect("create dirs");
            let status = Command::new("mknod")
                .arg("-m")
                .arg(format!("{mode:o}"))
                .arg(&path)
                .arg(kind.to_string())
                .arg(major.to_string())
                .arg(minor.to_string())
                .status()
                .expect("run mknod");
            assert!(status.success(), "mknod {}", path.display());
        }

        fn driver(&self, version: &str) {
            self.write(
                "/proc/driver/nvidia/version",
                &format!("NVRM version: NVIDIA UNIX x86_64 Kernel Module  {version}  Release Build\nGCC version:  gcc 12\n"),
            );
        }

        /// What the driver and sysfs show of a GPU; its device node only `with_node`.
        fn gpu(&self, gpu: &Fake, with_node: bool) {
            self.write(
                &format!("/proc/driver/nvidia/gpus/{}/information", gpu.bus),
                &format!(
                    "Model: \t\t NVIDIA A100-SXM4-80GB\nIRQ:   \t\t 41\nGPU UUID: \t {}\nBus Type: \t PCIe\nBus Location: \t {}\nDevice Minor: \t {}\nGPU Excluded:\t No\n",
                    gpu.uuid, gpu.bus, gpu.minor
                ),
            );
            self.pci(gpu.bus, "0x10de", "0x030200", gpu.numa);
            if with_node {
                self.mknod(
                    &format!("/dev/nvidia{}", gpu.minor),
                    'c',
                    195,
                    gpu.minor,
                    0o666,
                );
            }
        }

        /// A PCI function, as sysfs shows it: a link into `/sys/devices`.
        fn pci(&self, address: &str, vendor: &str, class: &str, numa: i32) {
            let real = format!("/sys/devices/pci0000:00/{address}");
            self.write(&format!("{real}/vendor"), &format!("{vendor}\n"));
            self.write(&format!("{real}/class"), &format!("{class}\n"));
            self.write(&format!("{real}/numa_node"), &format!("{numa}\n"));
            self.link(
                &format!("/sys/bus/pci/devices/{address}"),
                &format!("../../../devices/pci0000:00/{address}"),
            );
        }

        /// The capture's tree: `root/` copied, the links of `links.txt` made again (a directory
        /// the capture holds at a link's path moves to the link's target), the /dev/nvidia*
        /// nodes of `cmd/dev.txt`, and empty files for the libraries and binaries of
        /// `cmd/nvidia-libs.txt`.
        fn capture(capture: &Path) -> Tree {
            let tree = Tree::new();
            copy_tree(&capture.join("root"), tree.root());
            let links = fs::read_to_string(capture.join("links.txt")).expect("links.txt");
            let links: Vec<(&str, &str)> = links
                .lines()
                .filter_map(|line| line.split_once(" -> "))
                .collect();
            for (at, (path, target)) in links.iter().enumerate() {
                let host = tree.path(path);
                let moved_to = lexical(&host.parent().expect("a parent").join(target));
                let has_children = links[at + 1..]
                    .iter()
                    .any(|(other, _)| other.starts_with(&format!("{path}/")));
                if fs::symlink_metadata(&host).is_ok_and(|meta| meta.is_dir()) {
                    fs::create_dir_all(moved_to.parent().expect("a parent")).expect("mkdir");
                    fs::rename(&host, &moved_to).expect("move a captured dir to its link's target");
                } else if has_children {
                    fs::create_dir_all(&moved_to).expect("mkdir a link's target");
                }
                tree.link(path, target);
            }
            let dev = fs::read_to_string(capture.join("cmd/dev.txt")).expect("dev.txt");
            let mut section = String::new();
            for line in dev.lines() {
                if line.starts_with('/') && line.ends_with(':') {
                    section = line.trim_end_matches(':').to_string();
                    continue;
                }
                let words: Vec<&str> = line.split_whitespace().collect();
                let [perms, _, _, _, major, minor, .., name] = words.as_slice() else {
                    continue;
                };
                let kind = perms.chars().next().expect("a type");
                if !matches!(kind, 'c' | 'b') || !name.starts_with("nvidia") {
                    continue;
                }
                let major: u32 = major.trim_end_matches(',').parse().expect("major");
                let minor: u32 = minor.parse().expect("minor");
                tree.mknod(
                    &format!("{section}/{name}"),
                    kind,
                    major,
                    minor,
                    mode_of(perms),
                );
            }
            let libs = fs::read_to_string(capture.join("cmd/nvidia-libs.txt")).expect("libs");
            for line in libs.lines() {
                if let Some((_, path)) = line.split_once(" => ") {
                    tree.write(path.trim(), "");
                } else if line.starts_with("-rwx") {
                    let path = line.split_whitespace().last().expect("a path");
                    tree.executable(path);
                }
            }
            tree
        }
    }

    fn copy_tree(from: &Path, to: &Path) {
        fs::create_dir_all(to).expect("create dir");
        for entry in fs::read_dir(from).expect("read the capture") {
            let entry = entry.expect("an entry");
            let (source, target) = (entry.path(), to.join(entry.file_name()));
            if entry.file_type().expect("file type").is_dir() {
                copy_tree(&source, &target);
            } else {
                fs::copy(&source, &target).expect("copy a file");
            }
        }
    }

    /// `..` and `.` taken away without touching the file system.
    fn lexical(path: &Path) -> PathBuf {
        let mut out = PathBuf::new();
        for component in path.components() {
            match component {
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir => {}
                other => out.push(other),
            }
        }
        out
    }

    /// `crw-rw-rw-` → 0o666.
    fn mode_of(perms: &str) -> u32 {
        perms
            .chars()
            .skip(1)
            .take(9)
            .fold(0, |mode, c| (mode << 1) | u32::from(c != '-'))
    }

    /// The spec as JSON, after checking it validates as the crate validates what it reads, and
    /// reads back the same from its JSON.
    fn checked(spec: &Spec) -> Value {
        validate_spec(spec).expect("the spec passes the schema");
        let read =
            new_spec(spec, &PathBuf::from("/etc/cdi/nvidia.json"), 0).expect("the spec validates");
        assert_eq!(read.get_vendor(), "nvidia.com");
        assert_eq!(read.get_class(), "gpu");
        let text = serde_json::to_string_pretty(spec).expect("JSON");
        assert_eq!(
            &serde_json::from_str::<Spec>(&text).expect("parse back"),
            spec
        );
        serde_json::to_value(spec).expect("JSON")
    }

    fn device<'a>(spec: &'a Value, name: &str) -> &'a Value {
        spec["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .find(|device| device["name"] == name)
            .unwrap_or_else(|| panic!("no device {name}"))
    }

    fn names(spec: &Value) -> Vec<&str> {
        spec["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .map(|device| device["name"].as_str().expect("a name"))
            .collect()
    }

    /// `(path, type, major, minor, mode)` of each node of some edits.
    fn nodes(edits: &Value) -> Vec<(String, String, i64, i64, u64)> {
        edits["deviceNodes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|node| {
                (
                    node["path"].as_str().expect("path").to_string(),
                    node["type"].as_str().expect("type").to_string(),
                    node["major"].as_i64().expect("major"),
                    node["minor"].as_i64().expect("minor"),
                    node["fileMode"].as_u64().expect("fileMode"),
                )
            })
            .collect()
    }

    fn node(path: &str, major: i64, minor: i64, mode: u64) -> (String, String, i64, i64, u64) {
        (path.to_string(), "c".to_string(), major, minor, mode)
    }

    /// The mounts' paths, each checked to be a read-only bind at its own path.
    fn mounts(spec: &Value) -> Vec<String> {
        spec["containerEdits"]["mounts"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|mount| {
                assert_eq!(mount["hostPath"], mount["containerPath"], "{mount}");
                assert_eq!(
                    mount["options"],
                    serde_json::json!(["ro", "nosuid", "nodev", "bind"]),
                    "{mount}"
                );
                mount["hostPath"].as_str().expect("hostPath").to_string()
            })
            .collect()
    }

    fn annotations(device: &Value) -> BTreeMap<String, String> {
        serde_json::from_value(device["annotations"].clone()).unwrap_or_default()
    }

    #[test]
    fn nvidia_h100_capture_gives_its_gpu_nodes_and_driver_files() {
        let tree = Tree::capture(&capture_dir());
        let root = tree.root();

        assert_eq!(driver_version(root).expect("version"), H100_VERSION);
        assert_eq!(
            gpus(root).expect("gpus"),
            vec![NvidiaGpu {
                index: 0,
                uuid: H100_UUID.to_string(),
                minor: 0,
                pci_address: "0000:00:06.0".to_string(),
                numa_node: None,
                model: "NVIDIA H100 80GB HBM3".to_string(),
            }]
        );

        let spec = checked(&generate(root).expect("a spec"));
        assert_eq!(spec["cdiVersion"], "0.6.0");
        assert_eq!(spec["kind"], "nvidia.com/gpu");
        assert_eq!(names(&spec), ["0", H100_UUID, "all"]);
        let gpu0 = vec![node("/dev/nvidia0", 195, 0, 0o666)];
        for name in ["0", H100_UUID, "all"] {
            assert_eq!(
                nodes(&device(&spec, name)["containerEdits"]),
                gpu0,
                "{name}"
            );
        }
        // sysfs says numa_node -1: no NUMA annotation.
        let expected: BTreeMap<String, String> = [(
            PCI_ADDRESS_ANNOTATION.to_string(),
            "0000:00:06.0".to_string(),
        )]
        .into();
        assert_eq!(annotations(device(&spec, "0")), expected);
        assert_eq!(annotations(device(&spec, H100_UUID)), expected);
        assert!(annotations(device(&spec, "all")).is_empty());

        // No nvidia-modeset there, and the MIG caps are not for whole GPUs.
        assert_eq!(
            nodes(&spec["containerEdits"]),
            vec![
                node("/dev/nvidiactl", 195, 255, 0o666),
                node("/dev/nvidia-uvm", 238, 0, 0o666),
                node("/dev/nvidia-uvm-tools", 238, 1, 0o666),
            ]
        );

        let mounts = mounts(&spec);
        let versioned: Vec<&str> = mounts
            .iter()
            .filter(|path| path.ends_with(&format!(".so.{H100_VERSION}")))
            .map(String::as_str)
            .collect();
        let lib64 = "/usr/local/nvidia/lib64";
        let expected_versioned: Vec<String> = [
            "eglcore",
            "glcore",
            "glsi",
            "glvkspirv",
            "gpucomp",
            "pkcs11-openssl3",
            "rtcore",
            "tls",
        ]
        .iter()
        .map(|lib| format!("{lib64}/libnvidia-{lib}.so.{H100_VERSION}"))
        .collect();
        assert_eq!(versioned, expected_versioned);
        // No hook to make the soname links there: the soname files are mounted, in both
        // directories ldconfig knows them in.
        for dir in ["/lib", lib64] {
            for lib in [
                "libcuda.so.1",
                "libnvidia-ml.so.1",
                "libnvidia-ptxjitcompiler.so.1",
            ] {
                assert!(mounts.contains(&format!("{dir}/{lib}")), "{dir}/{lib}");
            }
        }
        assert!(mounts.contains(&format!("{lib64}/libnvidia-nvvm.so.4")));
        assert!(mounts.contains(&format!("{lib64}/libGLX_nvidia.so.0")));
        // Neither the CUDA toolkit's libraries nor the unversioned .so links.
        assert!(!mounts
            .iter()
            .any(|m| m.contains("cudart") || m.ends_with(".so")));
        let binaries: Vec<&str> = mounts
            .iter()
            .filter(|path| path.starts_with("/usr/bin/"))
            .map(String::as_str)
            .collect();
        assert_eq!(
            binaries,
            [
                "/usr/bin/nvidia-smi",
                "/usr/bin/nvidia-debugdump",
                "/usr/bin/nvidia-persistenced",
                "/usr/bin/nvidia-cuda-mps-control",
                "/usr/bin/nvidia-cuda-mps-server",
            ]
        );
        assert!(mounts
            .iter()
            .all(|m| m.starts_with("/lib/") || m.starts_with(lib64) || m.starts_with("/usr/bin/")));
        // nvidia-ctk was not installed there: no hook.
        assert!(spec["containerEdits"].get("hooks").is_none());
    }

    #[test]
    fn nvidia_no_driver_or_no_gpu_is_an_error_naming_the_root() {
        let tree = Tree::new();
        tree.pci("0000:3b:00.0", "0x10de", "0x030200", 0);
        let err = generate(tree.root()).expect_err("no driver");
        let message = err.to_string();
        assert!(matches!(err, DevicesError::NoNvidiaGpu { .. }), "{err:?}");
        assert!(message.contains(&format!(
            "no NVIDIA GPU found under {}",
            tree.root().display()
        )));
        assert!(message.contains("no NVIDIA driver"), "{message}");
        assert!(message.contains("0000:3b:00.0"), "{message}");

        tree.driver("550.54.15");
        fs::create_dir_all(tree.path("/proc/driver/nvidia/gpus")).expect("mkdir");
        let err = generate(tree.root()).expect_err("no GPU");
        assert!(matches!(err, DevicesError::NoNvidiaGpu { .. }), "{err:?}");
        assert!(err.to_string().contains("lists no GPU"), "{err}");

        let empty = Tree::new();
        let err = gpus(empty.root()).expect_err("nothing at all");
        assert!(matches!(err, DevicesError::NoNvidiaGpu { .. }), "{err:?}");
    }

    #[test]
    fn nvidia_four_gpus_on_two_numa_nodes_are_numbered_in_bus_order() {
        let tree = Tree::new();
        tree.driver("550.54.15");
        let fakes = [
            Fake {
                bus: "0000:af:00.0",
                minor: 1,
                uuid: "GPU-dddddddd-0000-0000-0000-000000000004",
                numa: 1,
            },
            Fake {
                bus: "0000:3b:00.0",
                minor: 0,
                uuid: "GPU-bbbbbbbb-0000-0000-0000-000000000002",
                numa: 0,
            },
            Fake {
                bus: "0000:86:00.0",
                minor: 3,
                uuid: "GPU-cccccccc-0000-0000-0000-000000000003",
                numa: 1,
            },
            Fake {
                bus: "0000:17:00.0",
                minor: 2,
                uuid: "GPU-aaaaaaaa-0000-0000-0000-000000000001",
                numa: 0,
            },
        ];
        for fake in &fakes {
            tree.gpu(fake, true);
        }
        // Neither another vendor's function nor NVIDIA's audio function is a GPU.
        tree.pci("0000:00:00.0", "0x8086", "0x060000", 0);
        tree.pci("0000:af:00.1", "0x10de", "0x040300", 1);

        let found = gpus(tree.root()).expect("gpus");
        let summary: Vec<(usize, &str, u32, &str, Option<u32>)> = found
            .iter()
            .map(|g| {
                (
                    g.index,
                    g.pci_address.as_str(),
                    g.minor,
                    g.uuid.as_str(),
                    g.numa_node,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (0, "0000:17:00.0", 2, fakes[3].uuid, Some(0)),
                (1, "0000:3b:00.0", 0, fakes[1].uuid, Some(0)),
                (2, "0000:86:00.0", 3, fakes[2].uuid, Some(1)),
                (3, "0000:af:00.0", 1, fakes[0].uuid, Some(1)),
            ]
        );

        let spec = checked(&generate(tree.root()).expect("a spec"));
        let mut expected_names = Vec::new();
        for gpu in &found {
            expected_names.push(gpu.index.to_string());
            expected_names.push(gpu.uuid.clone());
        }
        expected_names.push("all".to_string());
        assert_eq!(names(&spec), expected_names);
        for gpu in &found {
            let own = vec![node(
                &format!("/dev/nvidia{}", gpu.minor),
                195,
                i64::from(gpu.minor),
                0o666,
            )];
            for name in [gpu.index.to_string(), gpu.uuid.clone()] {
                let device = device(&spec, &name);
                assert_eq!(nodes(&device["containerEdits"]), own, "{name}");
                let annotations = annotations(device);
                assert_eq!(annotations[PCI_ADDRESS_ANNOTATION], gpu.pci_address);
                assert_eq!(
                    annotations[NUMA_NODE_ANNOTATION],
                    gpu.numa_node.expect("a NUMA node").to_string()
                );
            }
        }
        let all: Vec<String> = nodes(&device(&spec, "all")["containerEdits"])
            .into_iter()
            .map(|(path, ..)| path)
            .collect();
        assert_eq!(
            all,
            [
                "/dev/nvidia2",
                "/dev/nvidia0",
                "/dev/nvidia3",
                "/dev/nvidia1"
            ]
        );
        // No control nodes, libraries or binaries in this tree: nothing shared but nothing wrong.
        assert!(spec["containerEdits"].get("deviceNodes").is_none());
    }

    #[test]
    fn nvidia_gpu_without_its_device_node_is_an_error_naming_it() {
        let tree = Tree::new();
        tree.driver("550.54.15");
        tree.gpu(
            &Fake {
                bus: "0000:3b:00.0",
                minor: 0,
                uuid: "GPU-aaaaaaaa-0000-0000-0000-000000000001",
                numa: 0,
            },
            true,
        );
        tree.gpu(
            &Fake {
                bus: "0000:86:00.0",
                minor: 1,
                uuid: "GPU-bbbbbbbb-0000-0000-0000-000000000002",
                numa: 1,
            },
            false,
        );
        let err = generate(tree.root()).expect_err("a missing node");
        assert!(
            matches!(err, DevicesError::MissingDeviceNode { .. }),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("/dev/nvidia1"), "{message}");
        assert!(
            message.contains("GPU-bbbbbbbb-0000-0000-0000-000000000002"),
            "{message}"
        );
    }

    #[test]
    fn nvidia_gpu_at_a_function_sysfs_calls_someone_elses_is_an_error() {
        let tree = Tree::new();
        tree.driver("550.54.15");
        let fake = Fake {
            bus: "0000:3b:00.0",
            minor: 0,
            uuid: "GPU-aaaaaaaa-0000-0000-0000-000000000001",
            numa: 0,
        };
        tree.gpu(&fake, true);
        tree.write("/sys/devices/pci0000:00/0000:3b:00.0/vendor", "0x8086\n");
        let err = gpus(tree.root()).expect_err("not NVIDIA's");
        assert!(err.to_string().contains("is not NVIDIA's"), "{err}");
        assert!(err.to_string().contains("0000:3b:00.0/vendor"), "{err}");
    }

    /// A packaged driver on a merged-/usr host: libraries with soname links, a hook, firmware,
    /// `nvidia-modeset`, a library directory from ld.so.conf.d.
    #[test]
    fn nvidia_packaged_driver_with_hook_firmware_and_merged_usr() {
        let version = "550.54.15";
        let tree = Tree::new();
        tree.driver(version);
        tree.gpu(
            &Fake {
                bus: "0000:3b:00.0",
                minor: 0,
                uuid: "GPU-aaaaaaaa-0000-0000-0000-000000000001",
                numa: 0,
            },
            true,
        );
        tree.mknod("/dev/nvidiactl", 'c', 195, 255, 0o666);
        tree.mknod("/dev/nvidia-modeset", 'c', 195, 254, 0o666);
        // Merged /usr, one link absolute: it resolves inside the root.
        tree.link("/lib", "usr/lib");
        tree.link("/lib64", "/usr/lib64");
        fs::create_dir_all(tree.path("/usr/lib64")).expect("mkdir");
        let dir = "/usr/lib/x86_64-linux-gnu";
        for lib in ["libcuda", "libnvidia-ml", "libnvidia-ptxjitcompiler"] {
            tree.write(&format!("{dir}/{lib}.so.{version}"), "");
            tree.link(&format!("{dir}/{lib}.so.1"), &format!("{lib}.so.{version}"));
        }
        tree.link(&format!("{dir}/libcuda.so"), "libcuda.so.1");
        // A 32-bit build of a driver library is left out.
        let mut elf32 = b"\x7fELF\x01\x01\x01".to_vec();
        elf32.resize(64, 0);
        fs::write(
            tree.path(&format!("/usr/lib/libnvidia-tls.so.{version}")),
            &elf32,
        )
        .expect("write");
        // A directory only ld.so.conf.d names.
        tree.write("/etc/ld.so.conf", "include /etc/ld.so.conf.d/*.conf\n");
        tree.write(
            "/etc/ld.so.conf.d/nvidia.conf",
            "# driver\n/opt/nvidia/lib\n",
        );
        tree.write(
            &format!("/opt/nvidia/lib/libnvidia-gpucomp.so.{version}"),
            "",
        );
        tree.executable("/usr/bin/nvidia-smi");
        tree.executable("/usr/bin/nvidia-cdi-hook");
        tree.executable("/usr/bin/nvidia-ctk");
        tree.write(
            &format!("/usr/lib/firmware/nvidia/{version}/gsp_ga10x.bin"),
            "",
        );

        let spec = checked(&generate(tree.root()).expect("a spec"));
        assert_eq!(
            nodes(&spec["containerEdits"]),
            vec![
                node("/dev/nvidiactl", 195, 255, 0o666),
                node("/dev/nvidia-modeset", 195, 254, 0o666),
            ]
        );
        // Each library once (not again through /lib), the soname links left to the hook.
        assert_eq!(
            mounts(&spec),
            [
                format!("{dir}/libcuda.so.{version}"),
                format!("{dir}/libnvidia-ml.so.{version}"),
                format!("{dir}/libnvidia-ptxjitcompiler.so.{version}"),
                format!("/opt/nvidia/lib/libnvidia-gpucomp.so.{version}"),
                "/usr/bin/nvidia-smi".to_string(),
                format!("/lib/firmware/nvidia/{version}"),
            ]
        );
        assert_eq!(
            spec["containerEdits"]["hooks"],
            serde_json::json!([{
                "hookName": "createContainer",
                "path": "/usr/bin/nvidia-cdi-hook",
                "args": ["nvidia-cdi-hook", "update-ldcache",
                         "--folder", dir, "--folder", "/opt/nvidia/lib"],
            }])
        );

        // Without nvidia-cdi-hook, nvidia-ctk's older form.
        fs::remove_file(tree.path("/usr/bin/nvidia-cdi-hook")).expect("rm");
        let spec = checked(&generate(tree.root()).expect("a spec"));
        assert_eq!(
            spec["containerEdits"]["hooks"][0]["args"],
            serde_json::json!([
                "nvidia-ctk",
                "hook",
                "update-ldcache",
                "--folder",
                dir,
                "--folder",
                "/opt/nvidia/lib"
            ])
        );
    }

    #[test]
    fn nvidia_resolve_stays_below_the_root() {
        let tree = Tree::new();
        tree.write("/usr/lib/x", "");
        tree.link("/lib", "/usr/lib");
        tree.link("/usr/up", "../../../../../usr/lib");
        tree.link("/loop", "/loop");
        let root = tree.root();
        assert_eq!(
            resolve(root, Path::new("/lib/x")).expect("resolve"),
            Some(PathBuf::from("/usr/lib/x"))
        );
        assert_eq!(
            resolve(root, Path::new("/usr/up/x")).expect("resolve"),
            Some(PathBuf::from("/usr/lib/x"))
        );
        assert_eq!(resolve(root, Path::new("/lib/y")).expect("resolve"), None);
        assert_eq!(
            resolve(root, Path::new("/usr/lib/x/y")).expect("resolve"),
            None
        );
        assert!(resolve(root, Path::new("/loop/x")).is_err());
    }

    #[test]
    fn nvidia_write_spec_replaces_the_file_whole() {
        let tree = Tree::capture(&capture_dir());
        let spec = generate(tree.root()).expect("a spec");
        let out = tempfile::tempdir().expect("temp dir");
        let path = out.path().join("nvidia.json");
        fs::write(&path, "old").expect("write");
        write_spec(&spec, &path).expect("written");
        let read = container_device_interface::spec::parse_spec(&path).expect("parses");
        assert_eq!(read, spec);
        let left: Vec<_> = fs::read_dir(out.path()).expect("ls").collect();
        assert_eq!(left.len(), 1, "no temporary file left");

        let err = write_spec(&spec, &out.path().join("no/such/dir/nvidia.json"))
            .expect_err("no such directory");
        assert!(err.to_string().contains("no/such/dir"), "{err}");
    }

    #[test]
    fn nvidia_information_and_bus_keys_parse() {
        assert_eq!(bus_key("0000:3b:00.0"), Some((0, 0x3b, 0, 0)));
        assert_eq!(bus_key("10000:e1:00.1"), Some((0x10000, 0xe1, 0, 1)));
        assert_eq!(bus_key("3b:00.0"), None);
        assert!(wildcard_match("*.conf", "nvidia.conf"));
        assert!(!wildcard_match("*.conf", "nvidia.conf.bak"));
        assert!(is_driver_soname("libcuda.so.1"));
        assert!(is_driver_soname("libGLX_nvidia.so.0"));
        assert!(!is_driver_soname("libcudart.so.12"));
        assert!(!is_driver_soname("libcuda.so.550.54.15"));
        let path = Path::new("/proc/driver/nvidia/gpus/x/information");
        let excluded =
            "GPU UUID: GPU-a\nDevice Minor: 0\nBus Location: 0000:01:00.0\nGPU Excluded: Yes\n";
        assert_eq!(
            parse_information(path, excluded, "x").expect("parses"),
            None
        );
        let err =
            parse_information(path, "Device Minor: 0\n", "0000:01:00.0").expect_err("no UUID");
        assert!(err.to_string().contains("GPU UUID"), "{err}");
    }
}
