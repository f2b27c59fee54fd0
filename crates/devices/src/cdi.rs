//! The CDI registry: the specs in the CDI spec directories, read again whenever a file in them
//! changes, and the edits the devices a container asks for make to its OCI spec.
//!
//! Specs are parsed and validated with the `container-device-interface` crate, one file at a time
//! (the crate's own directory scan fails as a whole on one bad file, and names neither the file nor
//! the device), so a broken or ambiguous spec is named in the error of the request that needs it
//! and nothing else is affected. As in the CDI reference implementation, a later directory has
//! the higher priority: a device in `/var/run/cdi` overrides one of the same name in `/etc/cdi`;
//! the same name twice in one directory is ambiguous and refused.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use container_device_interface::container_edits::ContainerEdits;
use container_device_interface::device::Device;
use container_device_interface::spec::read_spec;
use oci_spec::runtime::Spec;

use crate::DevicesError;

/// The annotation prefix under which a device plugin asks for CDI devices (`cdi.k8s.io/<key>`:
/// comma-separated qualified names).
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";
/// A device's annotation naming the PCI function behind it (set by `ingot cdi generate`).
pub const PCI_ADDRESS_ANNOTATION: &str = "ingot.dev/pci-address";

/// The devices a container asks for: the CRI's `CDI_devices` field first, then the
/// `cdi.k8s.io/*` annotations by key, each name once. A name that is not a qualified CDI device
/// name (`vendor.com/class=name`) is refused, naming where it came from.
pub fn requested(
    cdi_devices: &[String],
    annotations: &HashMap<String, String>,
) -> Result<Vec<String>, DevicesError> {
    let mut names: Vec<String> = Vec::new();
    let mut add = |name: &str, source: &str| -> Result<(), DevicesError> {
        let name = name.trim();
        if !is_qualified_name(name) {
            return Err(DevicesError::InvalidName {
                name: name.to_string(),
                source_field: source.to_string(),
            });
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
        Ok(())
    };
    for name in cdi_devices {
        add(name, "CDI_devices")?;
    }
    let mut keys: Vec<&String> = annotations
        .keys()
        .filter(|k| k.starts_with(ANNOTATION_PREFIX))
        .collect();
    keys.sort();
    for key in keys {
        for name in annotations[key].split(',').filter(|n| !n.trim().is_empty()) {
            add(name, &format!("annotation {key}"))?;
        }
    }
    Ok(names)
}

/// Whether `name` is `vendor/class=name` as CDI defines them: vendor and class of letters, digits,
/// `_`, `-` and `.`, starting with a letter and ending with a letter or digit (the vendor may have
/// dots, the class none of `/`); the name also may have `:` and starts with a letter or digit.
/// (The crate's own check prints to stdout, which a daemon must not.)
pub fn is_qualified_name(name: &str) -> bool {
    fn part(s: &str, first: fn(char) -> bool, extra: &[char]) -> bool {
        let mut chars = s.chars();
        chars.next().is_some_and(first)
            && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c) || extra.contains(&c))
    }
    let Some((kind, device)) = name.split_once('=') else {
        return false;
    };
    let Some((vendor, class)) = kind.split_once('/') else {
        return false;
    };
    part(vendor, |c| c.is_ascii_alphabetic(), &[])
        && part(class, |c| c.is_ascii_alphabetic(), &[])
        && part(device, |c| c.is_ascii_alphanumeric(), &[':'])
}

/// The parts of a CDI container edit that ingot reads itself. The crate keeps these fields
/// private, so they are read from the edit's serialized form.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct EditsView {
    #[serde(default)]
    device_nodes: Vec<NodeView>,
    #[serde(default)]
    mounts: Vec<MountView>,
    #[serde(default)]
    net_devices: Vec<NetView>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeView {
    path: String,
    host_path: Option<String>,
    r#type: Option<String>,
    major: Option<i64>,
    minor: Option<i64>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct MountView {
    host_path: String,
    container_path: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetView {
    host_interface_name: String,
    name: String,
}

fn view(edits: &ContainerEdits) -> EditsView {
    serde_json::to_value(&edits.container_edits)
        .ok()
        .and_then(|value| serde_json::from_value(value).ok())
        .unwrap_or_default()
}

/// One resolved device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDevice {
    /// Its qualified name.
    pub name: String,
    /// The spec file it came from.
    pub spec_file: PathBuf,
    /// The PCI function behind it, where its spec names one.
    pub pci_address: Option<String>,
}

/// What a container's devices do to its spec.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub devices: Vec<ResolvedDevice>,
    edits: ContainerEdits,
}

impl Resolved {
    /// Whether no device was asked for.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Injects the devices' edits into `spec`: device nodes (with their device-cgroup rules),
    /// mounts, environment, hooks, additional GIDs and network devices.
    pub fn inject(&self, spec: &mut Spec) -> Result<(), DevicesError> {
        if self.is_empty() {
            return Ok(());
        }
        let mut edits = self.edits.clone();
        edits.apply(spec).map_err(|err| DevicesError::Cdi {
            devices: self.names(),
            reason: format!("{err:#}"),
        })
    }

    /// The devices' host network interfaces, with the name each gets in the pod.
    pub fn net_devices(&self) -> Vec<(String, String)> {
        view(&self.edits)
            .net_devices
            .into_iter()
            .map(|d| (d.host_interface_name, d.name))
            .collect()
    }

    fn names(&self) -> String {
        self.devices
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A device as read, with the file it came from.
#[derive(Clone)]
struct Entry {
    device: Device,
    file: PathBuf,
    priority: usize,
}

/// The specs as last read.
#[derive(Default)]
struct Snapshot {
    /// Every spec file with its modification time and size, and each directory's modification
    /// time: when any differs, the specs are read again.
    fingerprint: Vec<(PathBuf, Option<SystemTime>, u64)>,
    devices: BTreeMap<String, Entry>,
    /// Qualified names defined twice at the same priority, with the files.
    ambiguous: BTreeMap<String, Vec<PathBuf>>,
    /// Spec files that do not parse or validate, with the reason.
    broken: Vec<(PathBuf, String)>,
}

/// The CDI spec directories and what they hold.
pub struct Registry {
    dirs: Vec<PathBuf>,
    snapshot: Mutex<Snapshot>,
}

impl Registry {
    /// A registry over `dirs`, lowest priority first. Nothing is read until it is used.
    pub fn new(dirs: Vec<PathBuf>) -> Registry {
        Registry {
            dirs,
            snapshot: Mutex::new(Snapshot::default()),
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The qualified names of every device the specs define, sorted.
    pub fn list(&self) -> Vec<String> {
        self.with_current(|snapshot| snapshot.devices.keys().cloned().collect())
    }

    /// Spec files that failed to parse or validate, with the reason.
    pub fn broken(&self) -> Vec<(PathBuf, String)> {
        self.with_current(|snapshot| snapshot.broken.clone())
    }

    /// Resolves `names` (qualified, as [`requested`] gives them) into the edits they make. An
    /// unknown device is refused naming the directories and any spec file of its kind that does
    /// not parse; an ambiguous one naming both files; two devices that put different things at
    /// one path in the container naming both.
    pub fn resolve(&self, names: &[String]) -> Result<Resolved, DevicesError> {
        if names.is_empty() {
            return Ok(Resolved::default());
        }
        self.with_current(|snapshot| resolve_in(snapshot, &self.dirs, names))
    }

    fn with_current<T>(&self, f: impl FnOnce(&Snapshot) -> T) -> T {
        let mut guard = match self.snapshot.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let fingerprint = fingerprint(&self.dirs);
        if guard.fingerprint != fingerprint || guard.fingerprint.is_empty() {
            *guard = read(&self.dirs, fingerprint);
        }
        f(&guard)
    }
}

fn is_spec_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("json" | "yaml")
    )
}

/// The spec files under `dir` (recursively, as the reference implementation reads them), sorted.
fn spec_files(dir: &Path, out: &mut Vec<PathBuf>, dirs: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    dirs.push(dir.to_path_buf());
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            spec_files(&path, out, dirs);
        } else if is_spec_file(&path) {
            out.push(path);
        }
    }
}

fn fingerprint(dirs: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut result = Vec::new();
    for dir in dirs {
        let mut files = Vec::new();
        let mut seen_dirs = Vec::new();
        spec_files(dir, &mut files, &mut seen_dirs);
        for path in seen_dirs.into_iter().chain(files) {
            let meta = std::fs::metadata(&path).ok();
            result.push((
                path,
                meta.as_ref().and_then(|m| m.modified().ok()),
                meta.map_or(0, |m| m.len()),
            ));
        }
    }
    // A marker, so that "no directory exists" is a fingerprint too and is not read again each time.
    result.push((PathBuf::new(), None, 0));
    result
}

fn read(dirs: &[PathBuf], fingerprint: Vec<(PathBuf, Option<SystemTime>, u64)>) -> Snapshot {
    let mut snapshot = Snapshot {
        fingerprint,
        ..Snapshot::default()
    };
    for (priority, dir) in dirs.iter().enumerate() {
        let mut files = Vec::new();
        spec_files(dir, &mut files, &mut Vec::new());
        for file in files {
            let spec = match read_spec(&file, i32::try_from(priority).unwrap_or(i32::MAX)) {
                Ok(spec) => spec,
                Err(err) => {
                    tracing::warn!(file = %file.display(), error = %format!("{err:#}"), "CDI spec ignored");
                    snapshot.broken.push((file, format!("{err:#}")));
                    continue;
                }
            };
            for device in spec.get_devices().into_values() {
                let name = device.get_qualified_name();
                let entry = Entry {
                    device,
                    file: file.clone(),
                    priority,
                };
                match snapshot.devices.get(&name) {
                    Some(old) if old.priority == priority => {
                        let files = snapshot.ambiguous.entry(name.clone()).or_default();
                        if files.is_empty() {
                            files.push(old.file.clone());
                        }
                        files.push(file.clone());
                    }
                    _ => {
                        // A later directory overrides an earlier one, and no longer ambiguous.
                        snapshot.ambiguous.remove(&name);
                        snapshot.devices.insert(name, entry);
                    }
                }
            }
        }
    }
    tracing::debug!(
        devices = snapshot.devices.len(),
        broken = snapshot.broken.len(),
        "CDI specs read"
    );
    snapshot
}

/// The kind (`vendor/class`) of a qualified device name.
fn kind_of(name: &str) -> &str {
    name.split_once('=').map_or(name, |(kind, _)| kind)
}

fn resolve_in(
    snapshot: &Snapshot,
    dirs: &[PathBuf],
    names: &[String],
) -> Result<Resolved, DevicesError> {
    let mut resolved = Resolved::default();
    let mut spec_files_done: Vec<PathBuf> = Vec::new();
    // Container path → (device, what is put there), to find two devices that disagree.
    let mut claimed: BTreeMap<String, (String, String)> = BTreeMap::new();
    for name in names {
        if let Some(files) = snapshot.ambiguous.get(name) {
            return Err(DevicesError::Ambiguous {
                name: name.clone(),
                files: files.clone(),
            });
        }
        let Some(entry) = snapshot.devices.get(name) else {
            let kind = kind_of(name);
            let broken: Vec<String> = snapshot
                .broken
                .iter()
                .filter(|(file, _)| spec_kind(file).is_none_or(|k| k == kind))
                .map(|(file, reason)| format!("{}: {reason}", file.display()))
                .collect();
            return Err(DevicesError::UnknownDevice {
                name: name.clone(),
                dirs: dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                broken: if broken.is_empty() {
                    String::new()
                } else {
                    format!("; spec files that failed to load: {}", broken.join("; "))
                },
            });
        };
        let mut spec = entry.device.get_spec();
        let device_edits = entry.device.edits();
        let spec_edits = if spec_files_done.contains(&entry.file) {
            None
        } else {
            spec_files_done.push(entry.file.clone());
            spec.edits()
        };
        for edits in spec_edits.iter().chain(std::iter::once(&device_edits)) {
            claim_paths(&mut claimed, name, &entry.file, edits)?;
            resolved
                .edits
                .append(edits.clone())
                .map_err(|err| DevicesError::Cdi {
                    devices: name.clone(),
                    reason: format!("{} ({err:#})", entry.file.display()),
                })?;
        }
        resolved.devices.push(ResolvedDevice {
            name: name.clone(),
            spec_file: entry.file.clone(),
            pci_address: device_annotation(&entry.device, PCI_ADDRESS_ANNOTATION),
        });
    }
    Ok(resolved)
}

/// Records what `edits` put at each container path, refusing a path another device already fills
/// differently.
fn claim_paths(
    claimed: &mut BTreeMap<String, (String, String)>,
    name: &str,
    file: &Path,
    edits: &ContainerEdits,
) -> Result<(), DevicesError> {
    let edits = view(edits);
    let nodes = edits.device_nodes.into_iter().map(|node| {
        (
            node.path.clone(),
            format!(
                "device {} ({:?} {:?}:{:?})",
                node.host_path.as_deref().unwrap_or(&node.path),
                node.r#type,
                node.major,
                node.minor
            ),
        )
    });
    let mounts = edits
        .mounts
        .into_iter()
        .map(|m| (m.container_path, format!("mount of {}", m.host_path)));
    let netdevs = edits
        .net_devices
        .into_iter()
        .map(|d| (format!("netdev {}", d.name), d.host_interface_name));
    for (path, what) in nodes.chain(mounts).chain(netdevs) {
        match claimed.get(&path) {
            Some((other, other_what)) if other != name && *other_what != what => {
                return Err(DevicesError::Conflict {
                    path,
                    first: other.clone(),
                    second: format!("{name} ({})", file.display()),
                });
            }
            _ => {
                claimed.insert(path, (name.to_string(), what));
            }
        }
    }
    Ok(())
}

/// A device-level annotation. The crate keeps the field private, so it is read from the device's
/// serialized form.
fn device_annotation(device: &Device, key: &str) -> Option<String> {
    let value = serde_json::to_value(&device.cdi_device).ok()?;
    value
        .get("annotations")?
        .get(key)?
        .as_str()
        .map(str::to_string)
}

/// The `kind` a spec file declares, read loosely (for a file that does not validate).
fn spec_kind(file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let line = line.trim().trim_start_matches(['{', ',']).trim();
        let rest = line
            .strip_prefix("\"kind\"")
            .or_else(|| line.strip_prefix("kind"))?;
        let value = rest.trim_start().strip_prefix(':')?.trim();
        Some(
            value
                .trim_end_matches(',')
                .trim()
                .trim_matches(['"', '\''])
                .to_string(),
        )
    })
}

#[cfg(test)]
#[path = "cdi_tests.rs"]
mod tests;
