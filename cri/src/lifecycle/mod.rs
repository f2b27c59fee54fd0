//! The lifecycle layer: pods, containers, exec and stats in the order the CRI asks, with the
//! records (in memory, and committed to the store before an RPC answers), the per-pod locks that
//! order lifecycle changes, the reservations of pod names being created, the pod shims, container
//! exit tracking, container events, placement, and recovery when ingotd starts again. Called by
//! `rpc`; calls the store, the shim client, `host` and `ingot_oci`'s spec steps.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::Read,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{SystemTime, UNIX_EPOCH},
};

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use ingot_image::ImageStore;
use ingot_oci::steps::{StepEffects, StepInput};
use ingot_placement::Placement;
use ingot_topology::{CpuSet, Topology};
use k8s_cri::v1;
use tokio::sync::broadcast;

use crate::{
    config::Config,
    convert,
    shim_client::ShimClient,
    store::{ContainerRecord, ContainerState, PodRecord, Store},
    CriError,
};

pub mod containers;
mod exec;
pub mod netdevs;
pub mod pod_metrics;
pub mod pods;
mod recovery;
pub mod stats;
pub mod stream;
pub mod tuning;

pub use exec::exec_sync;
/// The containerd namespace ingotd's shims serve.
pub const SHIM_NAMESPACE: &str = "ingot";

const SHIM_BINARY: &str = "containerd-shim-ingot-v2";

/// The variable naming a shim's log file (the shim's `shimlog::LOG_ENV`).
const SHIM_LOG_ENV: &str = "INGOT_SHIM_LOG";

/// The variable naming the shim's inherited listening socket (the shim's `LISTEN_FD_ENV`),
/// always fd 3.
const SHIM_LISTEN_FD_ENV: &str = "INGOT_SHIM_LISTEN_FD";
const SHIM_LISTEN_FD: i32 = 3;

/// A pod shim's socket name: the pod id's first 32 characters (128 random bits), short enough
/// for a unix socket path under any state directory.
fn shim_socket_name(pod_id: &str) -> &str {
    pod_id.get(..32).unwrap_or(pod_id)
}

/// A pod shim's log, `<pod dir>/shim.log`.
pub fn shim_log(pod_dir: &Path) -> PathBuf {
    pod_dir.join("shim.log")
}

/// The placement checkpoint's copy under the runtime state directory.
pub const PLACEMENT_MIRROR: &str = "placement.json";

/// Restores placement from the store's checkpoint, dropping what the node no longer allows and
/// containers the store no longer has.
fn open_placement(
    store: &Store,
    topology: &Topology,
    config: &Config,
    containers: &BTreeMap<String, ContainerRecord>,
) -> Result<Placement, CriError> {
    let mut placement = match store.placement()? {
        Some(checkpoint) => {
            let (placement, dropped) =
                Placement::restore(topology, config.placement.clone(), &checkpoint)?;
            for reason in dropped {
                tracing::warn!(%reason, "placement record dropped at start");
            }
            placement
        }
        None => Placement::new(topology, config.placement.clone())?,
    };
    let gone: Vec<String> = placement
        .assignments()
        .map(|(id, _)| id.to_string())
        .filter(|id| !containers.contains_key(id))
        .collect();
    for id in gone {
        tracing::info!(container = %id, "placement released: the container is gone");
        placement.release(&id);
    }
    // Only exclusive CPUs are checkpointed at once; where the others run follows from their
    // records: the kubelet's cpuset in their config, else the shared pool.
    for (id, container) in containers {
        if placement.assignment(id).is_some() {
            continue;
        }
        let resources = convert::container_config(container)
            .linux
            .and_then(|l| l.resources)
            .unwrap_or_default();
        let list = |text: &str| {
            ingot_topology::CpuSet::parse(text)
                .ok()
                .filter(|set| !set.is_empty())
        };
        let request = ingot_placement::Request {
            pod_id: container.pod_id.clone(),
            container_id: id.clone(),
            kubelet_cpus: list(&resources.cpuset_cpus),
            kubelet_mems: list(&resources.cpuset_mems),
            ..Default::default()
        };
        if let Err(err) = placement.allocate(&request) {
            tracing::warn!(container = %id, error = %err, "placement not restored");
        }
    }
    store.put_placement(&placement.checkpoint())?;
    Ok(placement)
}

/// The exclusive allocations, by container.
type ExclusiveRecords = Vec<(String, CpuSet)>;

/// A checkpoint to commit with the next record, and the exclusive allocations it holds.
type PendingCheckpoint = (Vec<u8>, ExclusiveRecords);

/// The part of placement a crash must not lose: the exclusive allocations.
fn exclusive_records(placement: &Placement) -> ExclusiveRecords {
    placement
        .assignments()
        .filter(|(_, a)| a.kind == ingot_placement::Kind::Exclusive)
        .map(|(id, a)| (id.to_string(), a.cpus.clone()))
        .collect()
}

/// Suffix of a shim's own working directory beside its containers' state (the shim's
/// `bootstrap::SHIM_DIR_SUFFIX`; ingotd does not link the shim).
pub(crate) const SHIM_DIR_SUFFIX: &str = ".shim";

pub struct Manager {
    pub config: Config,
    pub store: Store,
    pub images: Arc<ImageStore>,
    pods: Mutex<BTreeMap<String, PodRecord>>,
    containers: Mutex<BTreeMap<String, ContainerRecord>>,
    /// One lock per pod, held across every lifecycle change of the pod or its containers
    /// (RunPodSandbox, Create/Start/Remove/UpdateContainer, Stop/RemovePodSandbox, which hold
    /// it while their containers stop): calls on one pod are ordered, calls on different pods
    /// run in parallel. StopContainer and ExecSync wait on processes and take none.
    pod_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Names of pods whose RunPodSandbox is in flight (as containerd's name registrar): a
    /// second RunPodSandbox of the same name fails at once instead of racing the first.
    reserved_pod_names: Mutex<HashSet<String>>,
    events: broadcast::Sender<v1::ContainerEventResponse>,
    shim_binary: PathBuf,
    /// The shim zygote, started with the first pod's shim.
    zygote: Mutex<ZygoteSlot>,
    /// The node as discovered at start, under `config.host_root`.
    pub topology: Topology,
    /// Where every container runs; checkpointed in the store after every change.
    placement: Mutex<Placement>,
    /// The housekeeping CPUs ingot's processes were last pinned to; a new shim or pod-init
    /// inherits them from ingotd, so only a change re-pins the others.
    pinned: Mutex<Option<CpuSet>>,
    /// Shim pids by shim address, asked once (Connect).
    shim_pids: Mutex<HashMap<String, u32>>,
    /// The exclusive allocations the store holds.
    committed_exclusive: Mutex<ExclusiveRecords>,
    /// One host-tuning reconcile at a time.
    tuning_lock: tokio::sync::Mutex<()>,
    /// The CDI specs of `config.cdi_spec_dirs`, read again when they change.
    pub cdi: ingot_devices::cdi::Registry,
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A fresh 64-hex-digit id, like containerd's.
pub fn new_id() -> Result<String, CriError> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(CriError::io("read /dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Finds a record by full id or unique prefix (as crictl's short ids are).
fn find<'a, T>(map: &'a BTreeMap<String, T>, id: &str, what: &str) -> Result<&'a T, CriError> {
    if id.is_empty() {
        return Err(CriError::NotFound {
            what: format!("{what} \"\""),
        });
    }
    if let Some(record) = map.get(id) {
        return Ok(record);
    }
    let mut matches = map
        .range(id.to_string()..)
        .take_while(|(k, _)| k.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some((_, record)), None) => Ok(record),
        (Some(_), Some(_)) => Err(CriError::InvalidArgument {
            field: "id",
            reason: format!("{id:?} matches more than one {what}"),
        }),
        _ => Err(CriError::NotFound {
            what: format!("{what} {id:?}"),
        }),
    }
}

pub(crate) fn shim_for(
    manager: &Manager,
    container: &ContainerRecord,
) -> Result<ShimClient, CriError> {
    let pod = manager.pod(&container.pod_id)?;
    manager
        .shim_of(&pod)
        .ok_or_else(|| CriError::FailedPrecondition {
            what: format!("container {}", container.id),
            reason: "its pod has no shim".into(),
        })
}

pub(crate) fn running(
    manager: &Manager,
    id: &str,
) -> Result<(ContainerRecord, ShimClient), CriError> {
    let container = manager.container(id)?;
    if container.state != ContainerState::Running {
        return Err(CriError::FailedPrecondition {
            what: format!("container {}", container.id),
            reason: format!("is {:?}, not running", container.state),
        });
    }
    let shim = shim_for(manager, &container)?;
    Ok((container, shim))
}

/// A pod name held for an in-flight RunPodSandbox; released on drop.
/// Where the shim zygote stands.
#[derive(Debug)]
enum ZygoteSlot {
    NotStarted,
    Running(crate::host::zygote::Zygote),
    /// It could not be started: shims start by exec.
    Failed,
}

impl Manager {
    pub fn open(config: Config, images: Arc<ImageStore>) -> Result<Arc<Self>, CriError> {
        let store = Store::open_moving(&config.state, &config.root)?;
        let pods = store
            .pods()?
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect();
        let containers = store
            .containers()?
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        let topology = ingot_topology::discover(&config.host_root)?;
        let placement = open_placement(&store, &topology, &config, &containers)?;
        let committed_exclusive = exclusive_records(&placement);
        let (events, _) = broadcast::channel(256);
        let shim_binary = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join(SHIM_BINARY)))
            .filter(|path| path.is_file())
            .unwrap_or_else(|| PathBuf::from(SHIM_BINARY));
        let layers = config.root.join("containers");
        for dir in [
            config.state.join("pods"),
            config.state.join("containers"),
            layers.clone(),
        ] {
            std::fs::create_dir_all(&dir)
                .map_err(CriError::io(format!("create {}", dir.display())))?;
        }
        match crate::host::rootfs::spread_subdirectories(&layers) {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(dir = %layers.display(), "no top-directory attribute here")
            }
            Err(err) => {
                tracing::info!(dir = %layers.display(), error = %err, "writable layers not spread")
            }
        }
        let cdi = ingot_devices::cdi::Registry::new(config.cdi_spec_dirs.clone());
        let manager = Arc::new(Manager {
            cdi,
            config,
            store,
            images,
            pods: Mutex::new(pods),
            containers: Mutex::new(containers),
            pod_locks: Mutex::default(),
            reserved_pod_names: Mutex::default(),
            events,
            shim_binary,
            zygote: Mutex::new(ZygoteSlot::NotStarted),
            topology,
            placement: Mutex::new(placement),
            pinned: Mutex::default(),
            shim_pids: Mutex::default(),
            committed_exclusive: Mutex::new(committed_exclusive),
            tuning_lock: tokio::sync::Mutex::new(()),
        });
        manager.mirror_placement(&lock(&manager.placement));
        Ok(manager)
    }

    /// Runs the spec steps for a container. What placement decided is committed with the
    /// container's record ([`Manager::save_container`]); until then a crash forgets both.
    pub fn run_spec_steps(
        &self,
        spec: &mut oci_spec::runtime::Spec,
        input: &StepInput<'_>,
    ) -> Result<StepEffects, CriError> {
        let timer = std::time::Instant::now();
        let mut placement = lock(&self.placement);
        let before = placement.clone();
        let effects = ingot_oci::steps::run(spec, input, &mut placement)?;
        let stepped = timer.elapsed();
        // Committed with the container's record; the mirror shows it now.
        if *placement != before {
            self.mirror_placement(&placement);
        }
        tracing::debug!(container = %input.container_id, steps = ?stepped, checkpointed = ?timer.elapsed(), "spec steps");
        Ok(effects)
    }

    /// Where a container runs now, to put back with [`Manager::reinstate_placement`] when a
    /// change cannot be completed.
    pub fn assignment(&self, container_id: &str) -> Option<ingot_placement::Assignment> {
        lock(&self.placement).assignment(container_id).cloned()
    }

    /// Puts a container's placement back as it was (None: it had none); true when the shared
    /// pool changed. Other containers placed meanwhile keep theirs.
    pub fn reinstate_placement(
        &self,
        container_id: &str,
        pod_id: &str,
        previous: Option<ingot_placement::Assignment>,
    ) -> bool {
        let mut placement = lock(&self.placement);
        let pool = placement.shared_pool();
        match previous {
            None => {
                placement.release(container_id);
            }
            Some(assignment) => {
                if let Err(err) = placement.reinstate(container_id, pod_id, assignment) {
                    tracing::warn!(container = %container_id, error = %err, "placement not put back");
                }
            }
        }
        self.mirror_placement(&placement);
        placement.shared_pool() != pool
    }

    /// Forgets where a container ran; true when the shared pool changed.
    pub fn release_placement(&self, container_id: &str) -> bool {
        let mut placement = lock(&self.placement);
        let pool = placement.shared_pool();
        if placement.release(container_id).is_none() {
            return false;
        }
        self.mirror_placement(&placement);
        placement.shared_pool() != pool
    }

    /// A copy of the placement for `ingot node report`, which cannot open the store while
    /// ingotd holds it.
    fn mirror_placement(&self, placement: &Placement) {
        self.write_mirror(PLACEMENT_MIRROR, &placement.checkpoint());
    }

    /// Replaces the state directory's `name` (a mirror `ingot node report` reads) with `bytes`
    /// whole: written beside it, then renamed. A failure is logged: the store is the record.
    pub(crate) fn write_mirror(&self, name: &str, bytes: &[u8]) {
        let mirror = self.config.state.join(name);
        let partial = mirror.with_extension("json.partial");
        if let Err(err) =
            std::fs::write(&partial, bytes).and_then(|()| std::fs::rename(&partial, &mirror))
        {
            tracing::warn!(path = %mirror.display(), error = %err, "mirror not written");
        }
    }

    /// [`Manager::write_mirror`] of a JSON document.
    pub(crate) fn write_json_mirror(&self, name: &str, document: &impl serde::Serialize) {
        match serde_json::to_vec_pretty(document) {
            Ok(bytes) => self.write_mirror(name, &bytes),
            Err(err) => tracing::warn!(mirror = name, error = %err, "mirror not encoded"),
        }
    }

    /// The node for a container's spec steps: as discovered, with the NUMA nodes' free
    /// hugepages read again when the container asks for hugepages.
    pub fn node_for(
        &self,
        resources: Option<&v1::LinuxContainerResources>,
    ) -> Result<std::borrow::Cow<'_, Topology>, CriError> {
        if !resources.is_some_and(|r| r.hugepage_limits.iter().any(|l| l.limit > 0)) {
            return Ok(std::borrow::Cow::Borrowed(&self.topology));
        }
        let mut node = self.topology.clone();
        ingot_topology::refresh_memory(&self.config.host_root, &mut node)?;
        Ok(std::borrow::Cow::Owned(node))
    }

    /// `<host root>/proc`.
    pub fn proc_root(&self) -> PathBuf {
        self.config.host_root.join("proc")
    }

    /// The CPUs ingot's own threads may run on now.
    pub fn housekeeping_cpus(&self) -> CpuSet {
        lock(&self.placement).housekeeping_cpus()
    }

    /// After exclusive CPUs came or went: ingot's own processes move to the housekeeping CPUs,
    /// and every running shared container's cpuset follows the shared pool (as the kubelet's
    /// static policy updates its shared containers).
    pub async fn follow_shared_pool(&self) {
        let (pool, shared) = {
            let placement = lock(&self.placement);
            (placement.shared_pool(), placement.shared_containers())
        };
        if lock(&self.pinned).as_ref() != Some(&self.housekeeping_cpus()) {
            self.pin_housekeeping().await;
        }
        for id in shared {
            let Ok(container) = self.container(&id) else {
                continue;
            };
            if !matches!(
                container.state,
                ContainerState::Created | ContainerState::Running
            ) {
                continue;
            }
            let Some(shim) = self
                .pod(&container.pod_id)
                .ok()
                .and_then(|p| self.shim_of(&p))
            else {
                continue;
            };
            match shim.update_cpuset(&id, &pool, None).await {
                Ok(()) => {
                    tracing::info!(container = %id, cpus = %pool, "shared container follows the shared pool")
                }
                Err(err) => {
                    tracing::warn!(container = %id, error = %err, "shared container's cpuset not updated")
                }
            }
        }
    }

    /// The pid of the pod's shim, asked of the shim once and remembered.
    async fn shim_pid(&self, pod: &PodRecord) -> Option<u32> {
        let address = pod.shim.clone()?;
        if let Some(pid) = lock(&self.shim_pids).get(&address).copied() {
            return Some(pid);
        }
        let pid = self.shim_of(pod)?.shim_pid().await.ok()?;
        lock(&self.shim_pids).insert(address, pid);
        Some(pid)
    }

    /// The pids of the pods' shims that answer.
    pub async fn shim_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for pod in self.pods() {
            pids.extend(self.shim_pid(&pod).await);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Pins ingotd, every pod shim and every pod-init holder to the housekeeping CPUs.
    pub async fn pin_housekeeping(&self) {
        let cpus = self.housekeeping_cpus();
        let proc_root = self.proc_root();
        let mut pids = vec![std::process::id()];
        pids.extend(self.zygote_pid());
        for pod in self.pods() {
            pids.extend(pod.pid_holder);
            pids.extend(self.shim_pid(&pod).await);
        }
        *lock(&self.pinned) = Some(cpus.clone());
        for pid in pids {
            if let Err(err) = crate::host::affinity::pin_process(&proc_root, pid, &cpus) {
                tracing::warn!(pid, %cpus, error = %err, "not pinned to the housekeeping CPUs");
            }
        }
        tracing::debug!(%cpus, "ingot's processes pinned to the housekeeping CPUs");
    }

    /// Takes the lifecycle lock of the pod with this (full) id.
    pub async fn lock_pod(&self, pod_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let pod_lock = Arc::clone(lock(&self.pod_locks).entry(pod_id.to_string()).or_default());
        pod_lock.lock_owned().await
    }

    /// Reserves a pod name for a RunPodSandbox: AlreadyExists while another RunPodSandbox of
    /// the name is in flight or a recorded pod holds it (`owner` finds that one). The
    /// reservation ends when the returned guard is dropped; by then the pod's record (if it
    /// was made) holds the name.
    pub fn reserve_pod_name(
        &self,
        name: String,
        owner: impl FnOnce() -> Option<String>,
    ) -> Result<NameReservation<'_>, CriError> {
        let mut reserved = lock(&self.reserved_pod_names);
        if reserved.contains(&name) {
            return Err(CriError::AlreadyExists {
                what: format!("pod sandbox name {name:?} (being created by another call)"),
            });
        }
        if let Some(id) = owner() {
            return Err(CriError::AlreadyExists {
                what: format!("pod sandbox name {name:?} (reserved by {id})"),
            });
        }
        reserved.insert(name.clone());
        Ok(NameReservation {
            names: &self.reserved_pod_names,
            name,
        })
    }

    pub fn pod(&self, id: &str) -> Result<PodRecord, CriError> {
        find(&lock(&self.pods), id, "pod sandbox").cloned()
    }

    pub fn container(&self, id: &str) -> Result<ContainerRecord, CriError> {
        find(&lock(&self.containers), id, "container").cloned()
    }

    /// Where PCI devices are read and bound.
    pub fn devices_root(&self) -> std::path::PathBuf {
        self.config
            .devices_root
            .clone()
            .unwrap_or_else(|| self.config.host_root.clone())
    }

    pub fn pods(&self) -> Vec<PodRecord> {
        lock(&self.pods).values().cloned().collect()
    }

    pub fn containers(&self) -> Vec<ContainerRecord> {
        lock(&self.containers).values().cloned().collect()
    }

    pub fn containers_of(&self, pod_id: &str) -> Vec<ContainerRecord> {
        lock(&self.containers)
            .values()
            .filter(|c| c.pod_id == pod_id)
            .cloned()
            .collect()
    }

    /// Commits, then makes visible.
    pub fn save_pod(&self, pod: PodRecord) -> Result<(), CriError> {
        self.store.put_pod(&pod)?;
        lock(&self.pods).insert(pod.id.clone(), pod);
        Ok(())
    }

    pub fn forget_pod(&self, id: &str) -> Result<(), CriError> {
        self.store.delete_pod(id)?;
        if let Some(address) = lock(&self.pods).remove(id).and_then(|pod| pod.shim) {
            lock(&self.shim_pids).remove(&address);
        }
        // A call still waiting on the lock re-reads the pod after it and finds it gone.
        self.forget_pod_lock(id);
        Ok(())
    }

    /// Drops the lifecycle lock of a pod that is gone (or never got a record).
    pub fn forget_pod_lock(&self, id: &str) {
        lock(&self.pod_locks).remove(id);
    }

    /// Commits a container's record, with the placement checkpoint in the same transaction
    /// when exclusive CPUs changed hands since the last commit: an allocation is durable
    /// exactly when the container that holds it is.
    pub fn save_container(&self, container: ContainerRecord) -> Result<(), CriError> {
        let checkpoint = self.pending_checkpoint();
        self.store
            .put_container(&container, checkpoint.as_ref().map(|(c, _)| c.as_slice()))?;
        self.checkpoint_committed(checkpoint);
        lock(&self.containers).insert(container.id.clone(), container);
        Ok(())
    }

    /// Removes a container's record (release its placement first: the checkpoint that no longer
    /// holds it goes in the same transaction).
    pub fn forget_container(&self, id: &str) -> Result<(), CriError> {
        let checkpoint = self.pending_checkpoint();
        self.store
            .delete_container(id, checkpoint.as_ref().map(|(c, _)| c.as_slice()))?;
        self.checkpoint_committed(checkpoint);
        lock(&self.containers).remove(id);
        Ok(())
    }

    /// The checkpoint to commit with the next record, when the exclusive allocations differ
    /// from the committed ones.
    fn pending_checkpoint(&self) -> Option<PendingCheckpoint> {
        let placement = lock(&self.placement);
        let exclusive = exclusive_records(&placement);
        (*lock(&self.committed_exclusive) != exclusive).then(|| (placement.checkpoint(), exclusive))
    }

    fn checkpoint_committed(&self, checkpoint: Option<PendingCheckpoint>) {
        if let Some((_, exclusive)) = checkpoint {
            *lock(&self.committed_exclusive) = exclusive;
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<v1::ContainerEventResponse> {
        self.events.subscribe()
    }

    /// Publishes a container event (nobody listening is fine).
    pub fn event(&self, container: &ContainerRecord, kind: v1::ContainerEventType) {
        let pod_status = self
            .pod(&container.pod_id)
            .ok()
            .map(|pod| convert::pod_status(&pod));
        // Every container of the pod, as containerd sends them: the kubelet's evented PLEG
        // takes the pod's whole state from one event.
        let mut statuses: Vec<v1::ContainerStatus> = self
            .containers_of(&container.pod_id)
            .iter()
            .filter(|other| other.id != container.id)
            .map(convert::container_status)
            .collect();
        statuses.insert(0, convert::container_status(container));
        let _ = self.events.send(v1::ContainerEventResponse {
            container_id: container.id.clone(),
            container_event_type: kind as i32,
            created_at: now_ns(),
            pod_sandbox_status: pod_status,
            containers_statuses: statuses,
        });
    }

    pub fn shim_of(&self, pod: &PodRecord) -> Option<ShimClient> {
        pod.shim.as_deref().map(ShimClient::new)
    }

    /// The pod's shim, started (from the first container's bundle) when it has none running.
    pub async fn ensure_shim(&self, pod: &mut PodRecord) -> Result<ShimClient, CriError> {
        if let Some(shim) = self.shim_of(pod) {
            if shim.alive().await {
                return Ok(shim);
            }
        }
        let address = self.start_shim(&pod.id, &pod.dir).await?;
        pod.shim = Some(address.clone());
        self.save_pod(pod.clone())?;
        Ok(ShimClient::new(&address))
    }

    /// Starts the pod's shim, serving on `<state>/shim/s/<pod>`, logging to [`shim_log`];
    /// returns its address. A shim already serving there is kept, as a shim's `start` action
    /// keeps it.
    ///
    /// ingotd does what `start` does for containerd (bind the socket, start the server in a
    /// session of its own) itself, with posix_spawn: one process start per pod instead of two,
    /// no copy of ingotd, and no bundle directory for the shim.
    pub async fn start_shim(&self, pod_id: &str, pod_dir: &Path) -> Result<String, CriError> {
        let shim_root = self.config.state.join("shim");
        let log_path = shim_log(pod_dir);
        let sockets = shim_root.join("s");
        let path = sockets.join(shim_socket_name(pod_id));
        let address = format!("unix://{}", path.display());
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Ok(address);
        }
        for dir in [&sockets, pod_dir] {
            std::fs::create_dir_all(dir)
                .map_err(CriError::io(format!("create {}", dir.display())))?;
        }
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).map_err(CriError::io(
            format!("bind the shim socket {}", path.display()),
        ))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(CriError::io(format!("open {}", log_path.display())))?;
        let devnull = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(CriError::io("open /dev/null"))?;
        let daemon_socket = self.config.socket_path()?.display().to_string();
        let listen_fd = SHIM_LISTEN_FD.to_string();
        let spawned = {
            use std::os::fd::AsFd;
            let spawn = crate::host::spawn::Spawn {
                program: &self.shim_binary,
                args: &[
                    "-namespace",
                    SHIM_NAMESPACE,
                    "-id",
                    pod_id,
                    "-address",
                    &daemon_socket,
                    "-socket",
                    &address,
                ],
                env: &[
                    ("INGOT_SHIM_ROOT", shim_root.as_os_str()),
                    (SHIM_LOG_ENV, log_path.as_os_str()),
                    (SHIM_LISTEN_FD_ENV, std::ffi::OsStr::new(&listen_fd)),
                ],
                env_remove: &["TTRPC_ADDRESS"],
                fds: &[
                    (0, devnull.as_fd()),
                    (1, devnull.as_fd()),
                    (2, log.as_fd()),
                    (SHIM_LISTEN_FD, listener.as_fd()),
                ],
            };
            self.spawn_shim(&spawn, &daemon_socket)
        };
        drop(listener);
        match spawned {
            Ok(()) => {}
            Err(err) => {
                let _ = std::fs::remove_file(&path);
                tracing::warn!(
                    pod = %pod_id,
                    shim_log = %log_path.display(),
                    "the pod's shim did not start; its log may have the details"
                );
                return Err(CriError::Shim {
                    method: "start",
                    code: tonic::Code::Internal,
                    message: format!(
                        "start {} for pod {pod_id}: {err}",
                        self.shim_binary.display()
                    ),
                });
            }
        }
        tracing::info!(pod = %pod_id, %address, "pod shim started");
        // A first connection now, kept for the pod's first CreateContainer: the shim starts
        // its threads for it while the pod's network is still being set up.
        if !ShimClient::new(&address).alive().await {
            tracing::warn!(pod = %pod_id, %address, "the new shim does not accept connections yet");
        }
        Ok(address)
    }

    /// Starts a shim: forked by the zygote (started with the first pod's shim), else by exec
    /// as ingotd's child, reaped whenever it exits (a shim started by containerd's `start` is
    /// re-parented instead). A zygote that fails is replaced by a new one.
    fn spawn_shim(
        &self,
        spawn: &crate::host::spawn::Spawn<'_>,
        daemon_socket: &str,
    ) -> std::io::Result<()> {
        {
            let mut slot = lock(&self.zygote);
            // A zygote that failed (killed, say) is replaced once, at once.
            for _attempt in 0..2 {
                if matches!(*slot, ZygoteSlot::NotStarted) {
                    *slot = match crate::host::zygote::Zygote::start(
                        &self.shim_binary,
                        daemon_socket,
                    ) {
                        Ok(zygote) => {
                            tracing::info!(pid = zygote.pid(), "shim zygote started");
                            ZygoteSlot::Running(zygote)
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "no shim zygote: shims start by exec");
                            ZygoteSlot::Failed
                        }
                    };
                }
                let ZygoteSlot::Running(zygote) = &*slot else {
                    break;
                };
                match zygote.spawn(spawn) {
                    Ok(pid) => {
                        tracing::debug!(pid, "shim forked by the zygote");
                        return Ok(());
                    }
                    Err(err) => {
                        tracing::warn!(pid = zygote.pid(), error = %err, "the shim zygote failed");
                        *slot = ZygoteSlot::NotStarted;
                    }
                }
            }
        }
        let pid = spawn.start()?;
        crate::host::spawn::reap_in_background(pid);
        Ok(())
    }

    /// The shim zygote's pid, while it runs.
    fn zygote_pid(&self) -> Option<u32> {
        match &*lock(&self.zygote) {
            ZygoteSlot::Running(zygote) => u32::try_from(zygote.pid()).ok(),
            _ => None,
        }
    }

    /// Removes a container's runtime state and cgroups when its shim is gone, with the shim
    /// binary's `delete` action (as containerd cleans up after a dead shim).
    pub async fn delete_without_shim(&self, container: &ContainerRecord) {
        let Ok(socket) = self.config.socket_path() else {
            return;
        };
        let result = tokio::process::Command::new(&self.shim_binary)
            .args(["-namespace", SHIM_NAMESPACE, "-id", &container.id])
            .arg("-address")
            .arg(socket)
            .arg("-bundle")
            .arg(&container.bundle)
            .arg("delete")
            .env("INGOT_SHIM_ROOT", self.config.state.join("shim"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .output()
            .await;
        match result {
            Ok(output) if output.status.success() => {}
            Ok(output) => tracing::warn!(
                container = %container.id,
                status = %output.status,
                stderr = %String::from_utf8_lossy(&output.stderr).trim(),
                "shim delete"
            ),
            Err(err) => tracing::warn!(container = %container.id, error = %err, "shim delete"),
        }
    }

    /// Records a container's exit (once; later calls change nothing) and publishes it.
    /// `exited_at` is the shim's exit time; without one, now.
    pub fn record_exit(&self, id: &str, code: u32, exited_at: Option<&Timestamp>, message: &str) {
        let updated = {
            let mut containers = lock(&self.containers);
            let Some(container) = containers.get_mut(id) else {
                return;
            };
            if container.state == ContainerState::Exited {
                return;
            }
            container.state = ContainerState::Exited;
            container.exit_code = i32::try_from(code).unwrap_or(255);
            container.finished_at = exited_at
                .map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
                .filter(|ns| *ns > 0)
                .unwrap_or_else(now_ns);
            container.reason = if !message.is_empty() {
                "Unknown".into()
            } else if self.oom_killed(container) {
                "OOMKilled".into()
            } else if code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            };
            container.message = message.to_string();
            container.clone()
        };
        if let Err(err) = self.store.put_container(&updated, None) {
            tracing::error!(container = %id, error = %err, "persist container exit");
        }
        tracing::info!(container = %id, exit_code = code, "container exited");
        self.event(&updated, v1::ContainerEventType::ContainerStoppedEvent);
    }

    /// Whether the kernel OOM-killed in the container's memory cgroup (v1 `oom_kill` count or
    /// v2 `memory.events`).
    fn oom_killed(&self, container: &ContainerRecord) -> bool {
        let Ok(pod) = find(&lock(&self.pods), &container.pod_id, "pod sandbox").cloned() else {
            return false;
        };
        let relative = format!("{}/{}", pod.cgroup_parent, container.id);
        crate::host::cgroups::oom_killed(&self.config.host_root, &relative)
    }

    /// Follows a running container until it exits (one task, asleep in the shim's Wait).
    pub fn watch_exit(self: &Arc<Self>, pod: &PodRecord, id: &str) {
        let Some(shim) = self.shim_of(pod) else {
            return;
        };
        let manager = Arc::clone(self);
        let id = id.to_string();
        tokio::spawn(async move {
            match shim.wait(&id, "").await {
                Ok(exit) => {
                    manager.record_exit(&id, exit.exit_status, exit.exited_at.as_ref(), "");
                }
                Err(CriError::Shim {
                    code: tonic::Code::NotFound,
                    ..
                }) => {}
                Err(err) => {
                    tracing::warn!(container = %id, error = %err, "lost the container's shim");
                    manager.record_exit(&id, 255, None, &format!("the pod's shim is gone: {err}"));
                }
            }
            if manager.container(&id).is_ok_and(|c| c.tuning.is_some()) {
                manager.retune().await;
            }
        });
    }
}

pub struct NameReservation<'a> {
    names: &'a Mutex<HashSet<String>>,
    name: String,
}

impl Drop for NameReservation<'_> {
    fn drop(&mut self) {
        lock(self.names).remove(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_by_id_or_unique_prefix() {
        let map: BTreeMap<String, u32> = [("abc1".to_string(), 1), ("abd2".to_string(), 2)]
            .into_iter()
            .collect();
        assert_eq!(*find(&map, "abc1", "pod").expect("exact"), 1);
        assert_eq!(*find(&map, "abd", "pod").expect("prefix"), 2);
        assert!(matches!(
            find(&map, "ab", "pod"),
            Err(CriError::InvalidArgument { .. })
        ));
        assert!(matches!(
            find(&map, "zz", "pod"),
            Err(CriError::NotFound { .. })
        ));
        assert!(matches!(
            find(&map, "", "pod"),
            Err(CriError::NotFound { .. })
        ));
        assert_eq!(new_id().expect("id").len(), 64);
    }
}
