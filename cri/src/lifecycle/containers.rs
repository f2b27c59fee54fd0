//! Containers: the image's layers mounted as an overlay rootfs, the spec built from the CRI
//! config (`ingot_oci::cri`) and passed through the spec steps, and the task run by the pod's
//! shim, which writes the CRI log itself. Exits are followed by a task asleep in the shim's Wait.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use containerd_shim_protos::api;
use ingot_oci::{
    cri::{self as spec, ImageConfig, PodFiles, PodNamespaces, SeccompChoice},
    steps::{Phase, StepInput},
};
use k8s_cri::v1;
use prost::Message;

use crate::{
    convert, host,
    lifecycle::{new_id, now_ns, Manager},
    shim_client::ShimClient,
    store::{ContainerRecord, ContainerState, PodRecord, PodState},
    CriError,
};
/// The stdio URI scheme under which the shim writes a CRI-format log (the shim's `crilog`).
const CRI_LOG_SCHEME: &str = "cri-log://";

struct Prepared {
    id: String,
    bundle: PathBuf,
    snapshot: PathBuf,
    stop_signal: u32,
}

/// The log of a container the kubelet gave no log path.
pub fn own_log(bundle: &Path) -> PathBuf {
    bundle.join("output.log")
}

/// The fifo in its bundle a container created with `stdin` reads from.
const INIT_STDIN: &str = "stdin";

/// Its path.
pub fn init_stdin(bundle: &Path) -> PathBuf {
    bundle.join(INIT_STDIN)
}

/// What set-up decided beside the bundle.
struct Built {
    stop_signal: u32,
    /// The high-performance tuning its pod's annotations ask of it.
    tuning: Option<ingot_tuning::Tuning>,
    /// Exclusive CPUs were allocated: the shared containers and ingot's threads must move.
    shared_pool_changed: bool,
    /// The RT runtime raised for it on the way down to its pod's cgroup.
    rt_budget: Option<host::rt_budget::Grant>,
    /// VFs bound to vfio-pci for it, unbound at its removal.
    vfio: Vec<String>,
    /// Its own PCI functions.
    pci_devices: Vec<String>,
    /// Host interfaces its CDI devices and SR-IOV VFs put into the pod.
    net_devices: Vec<crate::store::PodNetdev>,
    /// The image layer directories its rootfs stacks.
    layers: Vec<PathBuf>,
}

/// Mounts the rootfs, runs the spec steps and writes config.json; blocking. On error the caller
/// cleans up (the bundle and the placement).
fn prepare_bundle(
    manager: &Manager,
    id: &str,
    pod: &PodRecord,
    config: &v1::ContainerConfig,
    image: &ingot_image::ImageRecord,
    bundle: &Path,
    snapshot: &Path,
) -> Result<Built, CriError> {
    // Devices first: a request that cannot be met costs nothing.
    let cdi = resolve_cdi(manager, config)?;
    let sandbox = convert::pod_config(pod);
    let container_name = config.metadata.as_ref().map_or("", |m| m.name.as_str());
    let vfs = super::netdevs::sriov_vfs(manager, pod, &sandbox.annotations, container_name)?;
    // Unbound again if anything below fails.
    let vfio = super::netdevs::bind_vfio(&manager.devices_root(), &vfs.vfio)?;
    let image_config = ImageConfig::from_document(&image.config)?;
    let layers = manager.images.layer_dirs(image)?;
    // Held from here (the image may be removed meanwhile); the caller's clean-up releases them.
    manager.images.hold(id, layers.clone());
    let rootfs = bundle.join("rootfs");
    host::rootfs::mount_rootfs(&layers, snapshot, &rootfs)?;

    let context = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    #[allow(deprecated)]
    let apparmor = context.is_some_and(|c| c.apparmor.is_some() || !c.apparmor_profile.is_empty());
    if apparmor {
        tracing::info!(container = %id, "AppArmor profile ignored: ingot applies no AppArmor profiles");
    }
    let request = spec::user_request(config, &image_config)?;
    let read_in_image = |name: &str| std::fs::read_to_string(rootfs.join(name)).unwrap_or_default();
    let user = spec::resolve_user(
        &request,
        &read_in_image("etc/passwd"),
        &read_in_image("etc/group"),
    )?;
    let mut devices = config
        .devices
        .iter()
        .map(host::devices::host_device)
        .collect::<Result<Vec<_>, _>>()?;
    devices.extend(vfio.devices.iter().cloned());
    if context.is_some_and(|c| c.privileged) {
        // The host's devices, as containerd gives them; the CRI's own take their paths.
        let asked: Vec<String> = devices.iter().map(|d| d.container_path.clone()).collect();
        devices.extend(
            host::devices::host_devices()
                .into_iter()
                .filter(|d| !asked.contains(&d.container_path)),
        );
    }
    let seccomp = match spec::seccomp_choice(context)? {
        SeccompChoice::Unconfined => None,
        SeccompChoice::RuntimeDefault => Some(spec::default_seccomp_profile()),
        SeccompChoice::Localhost(path) => {
            let text = std::fs::read(&path).map_err(|err| {
                CriError::invalid(
                    "linux.security_context.seccomp",
                    format!("localhost profile {}: {err}", path.display()),
                )
            })?;
            Some(serde_json::from_slice(&text).map_err(|err| {
                CriError::invalid(
                    "linux.security_context.seccomp",
                    format!("localhost profile {} is not JSON: {err}", path.display()),
                )
            })?)
        }
    };
    for mount in &config.mounts {
        let host = Path::new(&mount.host_path);
        if !host.exists() {
            // As containerd: a missing host directory is created.
            std::fs::create_dir_all(host)
                .map_err(CriError::io(format!("create {}", host.display())))?;
        }
    }
    // The container's own PID mode when it gives one, else the pod's.
    let pid_mode = context
        .and_then(|c| c.namespace_options.as_ref())
        .map(|n| n.pid)
        .or_else(|| {
            sandbox
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref())
                .and_then(|s| s.namespace_options.as_ref())
                .map(|n| n.pid)
        })
        .unwrap_or(v1::NamespaceMode::Pod as i32);
    let namespaces = PodNamespaces {
        network: pod.net.clone(),
        ipc: pod.ipc.clone(),
        uts: pod.uts.clone(),
        pid: (pid_mode == v1::NamespaceMode::Pod as i32)
            .then(|| {
                pod.pid_holder
                    .map(|pid| PathBuf::from(format!("/proc/{pid}/ns/pid")))
            })
            .flatten(),
        host_pid: pid_mode == v1::NamespaceMode::Node as i32,
    };
    let files = PodFiles {
        hostname: Some(pod.dir.join("hostname")),
        hosts: Some(pod.dir.join("hosts")),
        resolv_conf: Some(pod.dir.join("resolv.conf")),
        shm: pod.shm.clone(),
    };
    // The name RunPodSandbox resolved and wrote (the node's for a host-network pod).
    let hostname = std::fs::read_to_string(pod.dir.join("hostname")).unwrap_or_default();
    let cgroups_path = format!("{}/{}", pod.cgroup_parent.trim_end_matches('/'), id);
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.as_str())
        .unwrap_or_default();
    let mut built = spec::container_spec(&spec::ContainerInput {
        id,
        sandbox_id: &pod.id,
        config,
        sandbox: &sandbox,
        image: &image_config,
        image_name,
        rootfs: &rootfs,
        namespaces: &namespaces,
        files: &files,
        hostname: hostname.trim_end(),
        cgroups_path: &cgroups_path,
        user: &user,
        devices: &devices,
        seccomp: seccomp.as_ref(),
        bounding: spec::own_bounding_set(),
    })?;
    let resources = config.linux.as_ref().and_then(|l| l.resources.as_ref());
    let node = manager.node_for(resources)?;
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or("");
    let mut tuning =
        super::tuning::for_container(manager, &pod.runtime_handler, &sandbox.annotations, name)?;
    let pci_devices = own_pci_devices(manager, &config.devices, &cdi, &vfs.addresses);
    if let Some(device_irqs) = tuning.as_mut().and_then(|t| t.device_irqs.as_mut()) {
        device_irqs.devices = pci_devices.clone();
        if device_irqs.devices.is_empty() {
            return Err(CriError::invalid(
                "config.annotations",
                format!(
                    "{}: container {name:?} has no PCI device of its own (an SR-IOV VF, a CDI \
                     device with a PCI address, a VFIO group)",
                    ingot_tuning::DEVICE_IRQS
                ),
            ));
        }
    }
    let is_realtime =
        super::tuning::is_realtime(manager, &pod.runtime_handler, &sandbox.annotations);
    let realtime =
        super::tuning::realtime_settings(manager, is_realtime, &sandbox.annotations, name)?;
    let effects = manager.run_spec_steps(
        &mut built,
        &StepInput {
            pod_id: &pod.id,
            container_id: id,
            resources,
            devices: &config.devices,
            node: &node,
            phase: Phase::Create,
            tuning: tuning.as_ref(),
            cdi: Some(&cdi),
            pci_addresses: &vfs.addresses,
            realtime: realtime.as_ref(),
        },
    )?;
    if is_realtime
        && !effects.assignment.as_ref().is_some_and(|a| {
            matches!(
                a.kind,
                ingot_placement::Kind::Kubelet | ingot_placement::Kind::Exclusive
            )
        })
    {
        return Err(CriError::FailedPrecondition {
            what: format!("container {name:?} of real-time pod {}", pod.id),
            reason: "a real-time container needs whole CPUs of its own: Guaranteed with an \
                     integer CPU limit, and the kubelet's static CPU manager or ingot's \
                     `placement.policy = \"exclusive\"`"
                .into(),
        });
    }
    if let (Some(tuning), Some(assignment)) = (&effects.tuning, &effects.assignment) {
        // What the host cannot do (a governor its CPUs lack) is refused before anything runs.
        let claim = ingot_tuning::Claim {
            owner: id.to_string(),
            cpus: assignment.cpus.clone(),
            tuning: tuning.clone(),
        };
        ingot_tuning::check(
            &ingot_tuning::Host::new(super::tuning::root(manager)),
            &claim,
        )
        .map_err(|err| {
            let annotation = match &err {
                ingot_tuning::TuningError::GovernorUnavailable { .. } => {
                    format!("{}: ", ingot_tuning::CPU_FREQ_GOVERNOR)
                }
                ingot_tuning::TuningError::Unsupported { feature, .. } => format!("{feature}: "),
                _ => String::new(),
            };
            CriError::InvalidArgument {
                field: "config.annotations",
                reason: format!("{annotation}{err}"),
            }
        })?;
    }
    for note in &effects.notes {
        tracing::info!(container = %id, pod = %pod.id, %note, "placement");
    }
    if let Some(assignment) = &effects.assignment {
        tracing::debug!(container = %id, cpus = %assignment.cpus, mems = %assignment.mems, kind = ?assignment.kind, "placed");
    }
    placement_file(&mut built, bundle)?;
    // The pod's interfaces are moved by ingotd ([`super::netdevs::give`]), not by the
    // runtime: the pod's namespace outlives the container.
    if let Some(linux) = built.linux_mut() {
        linux.set_net_devices(None);
    }
    let mut net_devices = super::netdevs::from_cdi(pod, &cdi)?;
    net_devices.extend(vfs.netdevs);
    let path = bundle.join("config.json");
    let json = serde_json::to_vec_pretty(&built).map_err(|err| CriError::Io {
        context: format!("encode {}", path.display()),
        source: err.into(),
    })?;
    std::fs::write(&path, json).map_err(CriError::io(format!("write {}", path.display())))?;
    // Last: nothing after it fails, so a grant is released only by the create's own failure
    // paths and by removal.
    let rt_budget = match &realtime {
        Some(settings) if settings.rt_runtime_us > 0 => host::rt_budget::grant(
            &manager.config.host_root,
            &pod.cgroup_parent,
            &manager.config.cgroup_parent,
            settings.rt_runtime_us,
        )?,
        _ => None,
    };
    Ok(Built {
        pci_devices,
        vfio: vfio.keep(),
        net_devices,
        rt_budget,
        stop_signal: signal_number(&image_config.stop_signal),
        shared_pool_changed: effects.shared_pool_changed,
        tuning: effects.tuning,
        layers,
    })
}

/// The CDI devices a container asks for (the CRI's `CDI_devices`, then `cdi.k8s.io/*`
/// annotations), resolved from the spec directories as they are now.
fn resolve_cdi(
    manager: &Manager,
    config: &v1::ContainerConfig,
) -> Result<ingot_devices::cdi::Resolved, CriError> {
    let names: Vec<String> = config.cdi_devices.iter().map(|d| d.name.clone()).collect();
    let names = ingot_devices::cdi::requested(&names, &config.annotations).map_err(|err| {
        CriError::invalid(
            if matches!(&err, ingot_devices::DevicesError::InvalidName { source_field, .. } if source_field == "CDI_devices")
            {
                "config.CDI_devices"
            } else {
                "config.annotations"
            },
            err.to_string(),
        )
    })?;
    let resolved = manager
        .cdi
        .resolve(&names)
        .map_err(|err| CriError::invalid("config.CDI_devices", err.to_string()))?;
    for device in &resolved.devices {
        tracing::info!(device = %device.name, spec = %device.spec_file.display(), "CDI device");
    }
    Ok(resolved)
}

/// `SIGTERM`, `TERM` or `15` → 15; unknown → SIGTERM.
fn signal_number(name: &str) -> u32 {
    if let Ok(n) = name.parse::<u32>() {
        return n;
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<nix::sys::signal::Signal>()
        .map(|s| s as u32)
        .unwrap_or(libc::SIGTERM as u32)
}

/// Unmounts and removes the container's bundle and writable layer, and releases the image
/// layers it held (those its image's removal kept for it go now).
fn cleanup_bundle(prepared: &Prepared, images: &ingot_image::ImageStore) {
    host::rootfs::unmount_rootfs(&prepared.bundle.join("rootfs"));
    let _ = std::fs::remove_dir_all(&prepared.bundle);
    let _ = std::fs::remove_dir_all(&prepared.snapshot);
    images.release(&prepared.id);
}

pub async fn create(
    manager: &Arc<Manager>,
    request: v1::CreateContainerRequest,
) -> Result<String, CriError> {
    let config = request
        .config
        .ok_or_else(|| CriError::invalid("config", "is required"))?;
    if request.pod_sandbox_id.is_empty() {
        return Err(CriError::invalid("pod_sandbox_id", "is required"));
    }
    let image_name = config
        .image
        .as_ref()
        .map(|i| i.image.trim().to_string())
        .unwrap_or_default();
    let image = manager
        .images
        .resolve(&image_name)?
        .ok_or_else(|| CriError::NotFound {
            what: format!("image {image_name:?}"),
        })?;

    let pod_id = manager.pod(&request.pod_sandbox_id)?.id;
    let _lifecycle = manager.lock_pod(&pod_id).await;
    let mut pod = manager.pod(&pod_id)?;
    if pod.state != PodState::Ready {
        return Err(CriError::FailedPrecondition {
            what: format!("pod sandbox {}", pod.id),
            reason: "is not ready".into(),
        });
    }
    let key = convert::container_name_key(&config);
    if let Some(existing) = manager
        .containers_of(&pod.id)
        .into_iter()
        .find(|c| convert::container_name_key(&convert::container_config(c)) == key)
    {
        return Err(CriError::AlreadyExists {
            what: format!(
                "container name {key:?} in pod {} (reserved by {})",
                pod.id, existing.id
            ),
        });
    }
    let sandbox = convert::pod_config(&pod);
    let log_path = (!config.log_path.is_empty() && !sandbox.log_directory.is_empty())
        .then(|| Path::new(&sandbox.log_directory).join(&config.log_path));

    let id = new_id()?;
    let prepared = Prepared {
        id: id.clone(),
        bundle: manager.config.state.join("containers").join(&id),
        snapshot: manager.config.root.join("containers").join(&id),
        stop_signal: 0,
    };
    let worker = Arc::clone(manager);
    let (bundle, snapshot) = (prepared.bundle.clone(), prepared.snapshot.clone());
    let (task_id, task_pod, task_config, task_image) =
        (id.clone(), pod.clone(), config.clone(), image.clone());
    let timer = std::time::Instant::now();
    let built = tokio::task::spawn_blocking(move || {
        prepare_bundle(
            &worker,
            &task_id,
            &task_pod,
            &task_config,
            &task_image,
            &bundle,
            &snapshot,
        )
    })
    .await
    .map_err(CriError::join("container set-up"))
    .and_then(|r| r);
    let built = match built {
        Ok(built) => built,
        Err(err) => {
            cleanup_bundle(&prepared, &manager.images);
            manager.release_placement(&id);
            return Err(err);
        }
    };
    let prepared = Prepared {
        stop_signal: built.stop_signal,
        ..prepared
    };

    let bundle_time = timer.elapsed();
    let created = async {
        super::netdevs::give(manager, &mut pod, &built.net_devices).await?;
        let shim = manager.ensure_shim(&mut pod).await?;
        let shim_time = timer.elapsed();
        // Without a log path from the kubelet, output goes to a log in the bundle, where
        // Attach follows it (as it follows the kubelet's).
        let output = format!(
            "{CRI_LOG_SCHEME}{}",
            log_path
                .clone()
                .unwrap_or_else(|| own_log(&prepared.bundle))
                .display()
        );
        // A container that keeps stdin open reads it from a fifo in its bundle, which Attach
        // writes to.
        let stdin = if config.stdin {
            super::exec::fifo(&prepared.bundle, INIT_STDIN)?
                .display()
                .to_string()
        } else {
            String::new()
        };
        let task = api::CreateTaskRequest {
            id: id.clone(),
            bundle: prepared.bundle.display().to_string(),
            terminal: config.tty,
            stdin,
            stdout: output.clone(),
            stderr: if config.tty { String::new() } else { output },
            ..Default::default()
        };
        let pid = shim.create(&task).await?;
        tracing::debug!(container = %id, bundle = ?bundle_time, shim = ?shim_time, created = ?timer.elapsed(), "create timings");
        Ok::<_, CriError>((shim, pid))
    }
    .await;
    let (shim, pid) = match created {
        Ok(done) => done,
        Err(err) => {
            tracing::warn!(
                pod = %pod.id,
                container = %id,
                shim_log = %super::shim_log(&pod.dir).display(),
                "the pod's shim could not create the container; its log has the details"
            );
            cleanup_bundle(&prepared, &manager.images);
            abandon_placement(manager, &id).await;
            release_rt_budget(manager, built.rt_budget.as_ref()).await;
            super::netdevs::unbind_vfio(&manager.devices_root(), &built.vfio);
            return Err(err);
        }
    };
    let record = ContainerRecord {
        id: id.clone(),
        pod_id: pod.id.clone(),
        config: config.encode_to_vec(),
        image_ref: image_name,
        image_id: image
            .repo_digests
            .first()
            .cloned()
            .unwrap_or_else(|| image.id.clone()),
        state: ContainerState::Created,
        created_at: now_ns(),
        started_at: 0,
        finished_at: 0,
        exit_code: 0,
        reason: String::new(),
        message: String::new(),
        pid,
        log_path,
        bundle: prepared.bundle.clone(),
        snapshot: prepared.snapshot.clone(),
        stop_signal: prepared.stop_signal,
        tuning: built.tuning.clone(),
        rt_budget: built.rt_budget.clone(),
        vfio: built.vfio.clone(),
        pci_devices: built.pci_devices.clone(),
        layers: built.layers.clone(),
    };
    if let Err(err) = manager.save_container(record.clone()) {
        let _ = shim.delete(&id, "").await;
        cleanup_bundle(&prepared, &manager.images);
        abandon_placement(manager, &id).await;
        release_rt_budget(manager, built.rt_budget.as_ref()).await;
        super::netdevs::unbind_vfio(&manager.devices_root(), &built.vfio);
        return Err(err);
    }
    if built.shared_pool_changed {
        let follow = std::time::Instant::now();
        manager.follow_shared_pool().await;
        tracing::debug!(container = %id, follow = ?follow.elapsed(), saved = ?timer.elapsed(), "shared pool followed");
    }
    if let Some(tuning) = &record.tuning {
        // Before it starts: its CPUs are quiet when its first instruction runs.
        super::tuning::apply_cgroups(
            &manager.config.host_root,
            &pod.cgroup_parent,
            &id,
            tuning,
            manager.config.placement.reserved.len(),
        );
        manager.retune().await;
    }
    if !record.pci_devices.is_empty() || !pod.netdevs.is_empty() {
        manager.mirror_devices();
    }
    tracing::info!(container = %id, pod = %pod.id, "container created");
    manager.event(&record, v1::ContainerEventType::ContainerCreatedEvent);
    Ok(id)
}

/// The PCI functions a container is given: its SR-IOV VFs, its CDI devices' PCI addresses,
/// and the functions of the VFIO groups among its devices.
fn own_pci_devices(
    manager: &Manager,
    devices: &[v1::Device],
    cdi: &ingot_devices::cdi::Resolved,
    vfs: &[String],
) -> Vec<String> {
    let groups: Vec<u32> = devices
        .iter()
        .filter_map(|d| d.host_path.strip_prefix("/dev/vfio/")?.parse().ok())
        .collect();
    let mut out: Vec<String> = vfs
        .iter()
        .cloned()
        .chain(cdi.devices.iter().filter_map(|d| d.pci_address.clone()))
        .chain(
            manager
                .topology
                .pci_devices
                .iter()
                .filter(|p| p.iommu_group.is_some_and(|g| groups.contains(&g)))
                .map(|p| p.address.clone()),
        )
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Where a container with CPUs of its own finds them as a file, besides its environment.
pub const PLACEMENT_FILE: &str = "/etc/ingot/placement.env";

/// The placement environment the spec steps gave the container, also as a file (read-only, in
/// its bundle) for processes that do not inherit the environment.
fn placement_file(spec: &mut oci_spec::runtime::Spec, bundle: &Path) -> Result<(), CriError> {
    use ingot_oci::steps::{CPUS_ENV, HOUSEKEEPING_ENV, MEMS_ENV};
    let env = spec
        .process()
        .as_ref()
        .and_then(|p| p.env().clone())
        .unwrap_or_default();
    let lines: Vec<&String> = env
        .iter()
        .filter(|e| {
            [CPUS_ENV, MEMS_ENV, HOUSEKEEPING_ENV]
                .iter()
                .any(|k| e.strip_prefix(k).is_some_and(|rest| rest.starts_with('=')))
        })
        .collect();
    if lines.is_empty() {
        return Ok(());
    }
    let file = bundle.join("placement.env");
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, text).map_err(CriError::io(format!("write {}", file.display())))?;
    let mut mount = oci_spec::runtime::Mount::default();
    mount
        .set_destination(PathBuf::from(PLACEMENT_FILE))
        .set_typ(Some("bind".into()))
        .set_source(Some(file))
        .set_options(Some(vec![
            "rbind".into(),
            "ro".into(),
            "nosuid".into(),
            "nodev".into(),
        ]));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(mount);
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// Gives back the RT runtime raised for a container whose cgroup is gone.
async fn release_rt_budget(manager: &Manager, grant: Option<&host::rt_budget::Grant>) {
    if let Some(grant) = grant.cloned() {
        let root = manager.config.host_root.clone();
        let released =
            tokio::task::spawn_blocking(move || host::rt_budget::release(&root, &grant)).await;
        if let Err(err) = released {
            tracing::warn!(error = %err, "RT runtime release did not finish");
        }
    }
}

/// Releases a container's placement after a failed create, moving the shared pool back when its
/// exclusive CPUs return to it.
async fn abandon_placement(manager: &Arc<Manager>, id: &str) {
    if manager.release_placement(id) {
        manager.follow_shared_pool().await;
    }
}

/// The container's record, read again under its pod's lifecycle lock (which the caller holds
/// while the guard lives).
async fn locked(
    manager: &Manager,
    id: &str,
) -> Result<(tokio::sync::OwnedMutexGuard<()>, ContainerRecord), CriError> {
    let container = manager.container(id)?;
    let guard = manager.lock_pod(&container.pod_id).await;
    Ok((guard, manager.container(&container.id)?))
}

pub async fn start(manager: &Arc<Manager>, id: &str) -> Result<(), CriError> {
    let (_lifecycle, mut container) = locked(manager, id).await?;
    if container.state != ContainerState::Created {
        return Err(CriError::FailedPrecondition {
            what: format!("container {}", container.id),
            reason: format!("is {:?}, not Created", container.state),
        });
    }
    let pod = manager.pod(&container.pod_id)?;
    let shim = super::shim_for(manager, &container)?;
    let timer = std::time::Instant::now();
    match shim.start(&container.id, "").await {
        Ok(pid) => {
            let shim_time = timer.elapsed();
            container.pid = pid;
            container.state = ContainerState::Running;
            container.started_at = now_ns();
            manager.save_container(container.clone())?;
            tracing::debug!(container = %container.id, shim = ?shim_time, saved = ?timer.elapsed(), "start timings");
            manager.watch_exit(&pod, &container.id);
            tracing::info!(container = %container.id, pid, "container started");
            manager.event(&container, v1::ContainerEventType::ContainerStartedEvent);
            Ok(())
        }
        Err(err) => {
            tracing::warn!(
                pod = %pod.id,
                container = %container.id,
                shim_log = %super::shim_log(&pod.dir).display(),
                "the pod's shim could not start the container; its log has the details"
            );
            // A container that failed to start is exited, with the reason, as containerd does.
            container.state = ContainerState::Exited;
            container.exit_code = 128;
            container.finished_at = now_ns();
            container.reason = "StartError".into();
            container.message = err.to_string();
            manager.save_container(container)?;
            Err(err)
        }
    }
}

/// Waits for the container's exit, recording it; false when `limit` passed first.
async fn wait_exit(
    manager: &Manager,
    shim: &ShimClient,
    id: &str,
    limit: Option<Duration>,
) -> Result<bool, CriError> {
    let wait = shim.wait(id, "");
    let result = match limit {
        Some(limit) => match tokio::time::timeout(limit, wait).await {
            Ok(result) => result,
            Err(_) => return Ok(false),
        },
        None => wait.await,
    };
    match result {
        Ok(exit) => {
            manager.record_exit(id, exit.exit_status, exit.exited_at.as_ref(), "");
            Ok(true)
        }
        Err(CriError::Shim {
            code: tonic::Code::NotFound,
            ..
        }) => {
            manager.record_exit(id, 255, None, "the shim no longer knows the container");
            Ok(true)
        }
        Err(err) => Err(err),
    }
}

pub async fn stop(manager: &Arc<Manager>, id: &str, timeout: i64) -> Result<(), CriError> {
    let stopped = stop_container(manager, id, timeout).await;
    // A stopped container's tuning is given back (its CPUs may go to another at once).
    if manager.container(id).is_ok_and(|c| c.tuning.is_some()) {
        manager.retune().await;
    }
    stopped
}

async fn stop_container(manager: &Arc<Manager>, id: &str, timeout: i64) -> Result<(), CriError> {
    let container = match manager.container(id) {
        Ok(container) => container,
        // As StopPodSandbox: stopping what is gone succeeds.
        Err(CriError::NotFound { .. }) => return Ok(()),
        Err(err) => return Err(err),
    };
    if container.state != ContainerState::Running {
        if container.state == ContainerState::Created {
            // Never started: nothing runs; it counts as exited.
            manager.record_exit(&container.id, 0, None, "");
        }
        return Ok(());
    }
    let shim = super::shim_for(manager, &container)?;
    if !shim.alive().await {
        // The shim is gone (the node rebooted, or it was killed): so is the container.
        manager.record_exit(&container.id, 255, None, "the pod's shim is gone");
        return Ok(());
    }
    if timeout > 0 {
        let signal = if container.stop_signal == 0 {
            libc::SIGTERM as u32
        } else {
            container.stop_signal
        };
        match shim.kill(&container.id, "", signal, false).await {
            Ok(()) => {
                let limit = Duration::from_secs(u64::try_from(timeout).unwrap_or(0));
                if wait_exit(manager, &shim, &container.id, Some(limit)).await? {
                    return Ok(());
                }
            }
            Err(CriError::Shim {
                code: tonic::Code::NotFound | tonic::Code::FailedPrecondition,
                ..
            }) => {}
            Err(err) => return Err(err),
        }
    }
    match shim
        .kill(&container.id, "", libc::SIGKILL as u32, true)
        .await
    {
        Ok(())
        | Err(CriError::Shim {
            code: tonic::Code::NotFound | tonic::Code::FailedPrecondition,
            ..
        }) => {}
        Err(err) => return Err(err),
    }
    wait_exit(manager, &shim, &container.id, None).await?;
    tracing::info!(container = %container.id, "container stopped");
    Ok(())
}

pub async fn remove(manager: &Arc<Manager>, id: &str) -> Result<(), CriError> {
    let (_lifecycle, container) = match locked(manager, id).await {
        Ok(found) => found,
        // Removing what is already gone succeeds, as the CRI asks.
        Err(CriError::NotFound { .. }) => return Ok(()),
        Err(err) => return Err(err),
    };
    remove_locked(manager, container).await
}

/// RemoveContainer with the pod's lifecycle lock held: stops it if it runs, deletes it in the
/// shim, removes its bundle and writable layer, then its record.
pub(crate) async fn remove_locked(
    manager: &Arc<Manager>,
    container: ContainerRecord,
) -> Result<(), CriError> {
    if container.state == ContainerState::Running {
        stop(manager, &container.id, 0).await?;
    }
    let container = manager.container(&container.id)?;
    let deleted = match super::shim_for(manager, &container) {
        Ok(shim) => match shim.delete(&container.id, "").await {
            Ok(_)
            | Err(CriError::Shim {
                code: tonic::Code::NotFound,
                ..
            }) => true,
            Err(CriError::Shim {
                code: tonic::Code::Unavailable,
                ..
            }) => false,
            Err(err) => return Err(err),
        },
        Err(_) => false,
    };
    if !deleted {
        // No shim to ask: the runtime state and cgroups go the way containerd removes what a
        // dead shim left, through the shim binary's `delete` action.
        manager.delete_without_shim(&container).await;
    }
    let prepared = Prepared {
        id: container.id.clone(),
        bundle: container.bundle.clone(),
        snapshot: container.snapshot.clone(),
        stop_signal: 0,
    };
    let images = Arc::clone(&manager.images);
    tokio::task::spawn_blocking(move || cleanup_bundle(&prepared, &images))
        .await
        .map_err(CriError::join("container removal"))?;
    release_rt_budget(manager, container.rt_budget.as_ref()).await;
    super::netdevs::unbind_vfio(&manager.devices_root(), &container.vfio);
    let before = manager.assignment(&container.id);
    let isolated = container
        .tuning
        .as_ref()
        .is_some_and(|t| t.load_balancing_off);
    if let (true, Some(assignment), Ok(pod)) =
        (isolated, before.as_ref(), manager.pod(&container.pod_id))
    {
        // The partition went with the container's cgroup; its ancestors give its CPUs back.
        super::tuning::release_partition(
            &manager.config.host_root,
            &pod.cgroup_parent,
            &container.id,
            &assignment.cpus,
        );
    }
    let pool_changed = manager.release_placement(&container.id);
    if let Err(err) = manager.forget_container(&container.id) {
        // The container is still on record: so is where it runs.
        if manager.reinstate_placement(&container.id, &container.pod_id, before) {
            manager.follow_shared_pool().await;
        }
        return Err(err);
    }
    if pool_changed {
        manager.follow_shared_pool().await;
    }
    if container.tuning.is_some() {
        manager.retune().await;
    }
    if !container.pci_devices.is_empty() {
        manager.mirror_devices();
    }
    tracing::info!(container = %container.id, "container removed");
    manager.event(&container, v1::ContainerEventType::ContainerDeletedEvent);
    Ok(())
}

pub async fn update_resources(
    manager: &Arc<Manager>,
    request: v1::UpdateContainerResourcesRequest,
) -> Result<(), CriError> {
    let resources = spec::resources(request.linux.as_ref())?;
    let (_lifecycle, mut container) = locked(manager, &request.container_id).await?;
    if !matches!(
        container.state,
        ContainerState::Created | ContainerState::Running
    ) {
        return Err(CriError::FailedPrecondition {
            what: format!("container {}", container.id),
            reason: format!(
                "is {:?}; only created or running ones can be updated",
                container.state
            ),
        });
    }
    let shim = super::shim_for(manager, &container)?;
    // The same steps as at create: a kubelet cpuset replaces the placement exactly, hugepage
    // sizes are checked against the node.
    let mut update = oci_spec::runtime::Spec::default();
    let mut linux = oci_spec::runtime::Linux::default();
    linux.set_resources(Some(resources));
    update.set_linux(Some(linux));
    let node = manager.node_for(request.linux.as_ref())?;
    let before = manager.assignment(&container.id);
    let effects = manager.run_spec_steps(
        &mut update,
        &StepInput {
            pod_id: &container.pod_id,
            container_id: &container.id,
            resources: request.linux.as_ref(),
            devices: &[],
            node: &node,
            phase: Phase::Update,
            tuning: container.tuning.as_ref(),
            cdi: None,
            pci_addresses: &[],
            realtime: None,
        },
    )?;
    let resources = update
        .linux()
        .as_ref()
        .and_then(|l| l.resources().clone())
        .unwrap_or_default();
    let updated = shim.update_resources(&container.id, &resources).await;
    if let Err(err) = updated {
        // A refused update may have changed some controllers before the one that failed: the
        // cpuset goes back to where placement has the container, and so does placement.
        if let Some(previous) = &before {
            restore_cpuset(&shim, &container.id, previous).await;
        }
        if manager.reinstate_placement(&container.id, &container.pod_id, before) {
            manager.follow_shared_pool().await;
        }
        return Err(err);
    }
    if effects.shared_pool_changed {
        manager.follow_shared_pool().await;
    }
    // The new values are what ContainerStatus reports from now on.
    let mut config = convert::container_config(&container);
    if let Some(linux) = request.linux {
        config.linux.get_or_insert_with(Default::default).resources = Some(linux);
    }
    container.config = config.encode_to_vec();
    manager.save_container(container)?;
    Ok(())
}

/// Writes a container's cpuset back (a cpuset-only update, which the shim applies itself).
async fn restore_cpuset(shim: &ShimClient, id: &str, assignment: &ingot_placement::Assignment) {
    if let Err(err) = shim
        .update_cpuset(id, &assignment.cpus, Some(&assignment.mems))
        .await
    {
        tracing::warn!(container = %id, error = %err, "cpuset not restored after a failed update");
    }
}

pub async fn reopen_log(manager: &Arc<Manager>, id: &str) -> Result<(), CriError> {
    let (container, shim) = super::running(manager, id)?;
    if container.log_path.is_none() {
        return Err(CriError::FailedPrecondition {
            what: format!("container {}", container.id),
            reason: "has no log path".into(),
        });
    }
    shim.update(&api::UpdateTaskRequest {
        id: container.id.clone(),
        annotations: HashMap::from([("io.ingot.reopen-log".to_string(), "true".to_string())]),
        ..Default::default()
    })
    .await
}
