//! ingotd's state: pods and containers in redb under the runtime state directory (`/run/ingot`).
//! Every change is committed before the RPC that made it answers, so a daemon killed at any
//! point restarts knowing every pod and container it acknowledged.
//!
//! Nothing here outlives the boot: the pods' namespaces, shims and cgroups are gone after a
//! reboot, the records name directories under the runtime state, the placement is the pods',
//! and the tuning baselines are dropped at the first start after a reboot. So the store lives on
//! `/run`'s tmpfs, as CRI-O wipes its pods and containers at a reboot: its commits cost no disk
//! flush, and what a reboot leaves under the root (the writable layers) no record owns, so
//! recovery removes it. The images, which do outlive it, are kept under the root.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::CriError;

const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
/// Node-wide records, one per key: the placement checkpoint.
const NODE: TableDefinition<&str, &[u8]> = TableDefinition::new("node");
/// Host files ingot tuned, by path under the host root: the value each held before.
const TUNING_BASELINES: TableDefinition<&str, &[u8]> = TableDefinition::new("tuning_baselines");
/// The boot the tuning baselines were recorded in (a reboot resets the files).
const BOOT_ID_KEY: &str = "tuning_boot_id";
const PLACEMENT_KEY: &str = "placement";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    Ready,
    NotReady,
}

/// One pod sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    /// The PodSandboxConfig as the kubelet sent it (protobuf).
    pub config: Vec<u8>,
    pub runtime_handler: String,
    pub created_at: i64,
    pub state: PodState,
    /// `/run/ingot/pods/<id>`: pinned namespaces, hostname, hosts, resolv.conf, shm.
    pub dir: PathBuf,
    /// Pinned namespace files; None where the pod uses the host's.
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub host_pid: bool,
    /// The pod's /dev/shm mount, when it has its own IPC namespace.
    pub shm: Option<PathBuf>,
    /// PID 1 of the pod's shared PID namespace (`ingotd --pod-init`), when it shares one.
    #[serde(default)]
    pub pid_holder: Option<u32>,
    /// The CNI ADD result, for DEL; None when no network was attached.
    pub cni_result: Option<String>,
    pub ips: Vec<String>,
    /// Parent of the pod's container cgroups; `owns_cgroup` when ingotd chose it or made it
    /// (it did not exist at RunPodSandbox), and so removes it.
    pub cgroup_parent: String,
    pub owns_cgroup: bool,
    /// The pod's shim (`unix:///...`), once its first container is created.
    pub shim: Option<String>,
    /// Host interfaces moved into the pod's network namespace, moved back when it stops.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub netdevs: Vec<PodNetdev>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// A host interface a pod was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetdev {
    /// Its name in ingotd's namespace, and in the pod's.
    pub host_name: String,
    pub pod_name: String,
    /// What the pod asked for.
    pub mtu: Option<u32>,
    pub mac: Option<String>,
    /// A VF's VLAN, set through its PF: (PF interface, VF index, VLAN id).
    #[serde(default)]
    pub vlan: Option<(String, u32, u16)>,
    /// What it had before, put back when it returns.
    pub original_mtu: Option<u32>,
    pub original_mac: Option<String>,
    /// The device that brought it (a CDI name or an SR-IOV VF's PCI address).
    pub source: String,
}

/// One container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    /// The ContainerConfig as the kubelet sent it (protobuf).
    pub config: Vec<u8>,
    /// The image as requested and as resolved.
    pub image_ref: String,
    pub image_id: String,
    pub state: ContainerState,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub pid: u32,
    /// Absolute log path, when the kubelet asked for logs.
    pub log_path: Option<PathBuf>,
    /// Bundle (config.json, rootfs mount point) and the writable layer.
    pub bundle: PathBuf,
    pub snapshot: PathBuf,
    /// The signal the image asks to be stopped with.
    pub stop_signal: u32,
    /// The high-performance tuning its annotations ask for (CRI-O's), on its exclusive CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuning: Option<ingot_tuning::Tuning>,
    /// The RT runtime raised for it on the way down to its pod's cgroup, given back at removal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rt_budget: Option<crate::host::rt_budget::Grant>,
    /// SR-IOV VFs ingot bound to vfio-pci for it, given back at removal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vfio: Vec<String>,
    /// The PCI functions it was given (VFs, CDI devices with an address, VFIO groups'), for
    /// `ingot node report`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pci_devices: Vec<String>,
    /// The image layer directories its rootfs stacks, bottom first: they stay while it exists,
    /// even when its image is removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<PathBuf>,
}

/// The state store's file name.
const STORE_FILE: &str = "state.redb";

/// The page cache of the state store.
const STORE_CACHE_BYTES: usize = 1 << 20;

pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// The store in `state`. A store an earlier ingotd kept in `legacy` (its root directory) is
    /// moved here first, so the pods it records survive the upgrade.
    pub fn open_moving(state: &Path, legacy: &Path) -> Result<Self, CriError> {
        std::fs::create_dir_all(state)
            .map_err(CriError::io(format!("create {}", state.display())))?;
        let path = state.join(STORE_FILE);
        let old = legacy.join(STORE_FILE);
        if old != path && old.exists() {
            // Copied beside its place, then renamed into it: a crash leaves either no store
            // here (the copy is made again) or a whole one (the old file is then only removed).
            if !path.exists() {
                let partial = state.join(format!("{STORE_FILE}.moving"));
                std::fs::copy(&old, &partial)
                    .and_then(|_| std::fs::File::open(&partial)?.sync_all())
                    .map_err(CriError::io(format!(
                        "copy {} to {}",
                        old.display(),
                        partial.display()
                    )))?;
                std::fs::rename(&partial, &path).map_err(CriError::io(format!(
                    "rename {} to {}",
                    partial.display(),
                    path.display()
                )))?;
                tracing::info!(from = %old.display(), to = %path.display(), "state store moved");
            }
            std::fs::remove_file(&old)
                .map_err(CriError::io(format!("remove {}", old.display())))?;
        }
        Self::open(state)
    }

    pub fn open(dir: &Path) -> Result<Self, CriError> {
        std::fs::create_dir_all(dir).map_err(CriError::io(format!("create {}", dir.display())))?;
        let path = dir.join(STORE_FILE);
        let err = |message: String| CriError::Store {
            path: path.display().to_string(),
            message,
        };
        // redb caches up to 1 GiB of pages by default, which a long-lived daemon's resident
        // memory keeps after a day of pods; the records are small and read once at start.
        let db = redb::Builder::new()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(&path)
            .map_err(|e| err(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| err(e.to_string()))?;
        txn.open_table(PODS).map_err(|e| err(e.to_string()))?;
        txn.open_table(CONTAINERS).map_err(|e| err(e.to_string()))?;
        txn.open_table(NODE).map_err(|e| err(e.to_string()))?;
        txn.open_table(TUNING_BASELINES)
            .map_err(|e| err(e.to_string()))?;
        txn.commit().map_err(|e| err(e.to_string()))?;
        Ok(Store { db, path })
    }

    fn err(&self, message: impl std::fmt::Display) -> CriError {
        CriError::Store {
            path: self.path.display().to_string(),
            message: message.to_string(),
        }
    }

    fn all<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, CriError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(table).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.err(e))? {
            let (_, value) = entry.map_err(|e| self.err(e))?;
            out.push(serde_json::from_slice(value.value()).map_err(|e| self.err(e))?);
        }
        Ok(out)
    }

    /// Writes `record` under `id` in `table`, and the placement checkpoint in the same
    /// transaction when one is given.
    fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        id: &str,
        record: &T,
        placement: Option<&[u8]>,
    ) -> Result<(), CriError> {
        let value = serde_json::to_vec(record).map_err(|e| self.err(e))?;
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(table).map_err(|e| self.err(e))?;
            table
                .insert(id, value.as_slice())
                .map_err(|e| self.err(e))?;
        }
        self.put_checkpoint(&txn, placement)?;
        txn.commit().map_err(|e| self.err(e))
    }

    fn put_checkpoint(
        &self,
        txn: &redb::WriteTransaction,
        placement: Option<&[u8]>,
    ) -> Result<(), CriError> {
        if let Some(checkpoint) = placement {
            let mut table = txn.open_table(NODE).map_err(|e| self.err(e))?;
            table
                .insert(PLACEMENT_KEY, checkpoint)
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn delete(
        &self,
        table: TableDefinition<&str, &[u8]>,
        id: &str,
        placement: Option<&[u8]>,
    ) -> Result<(), CriError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(table).map_err(|e| self.err(e))?;
            table.remove(id).map_err(|e| self.err(e))?;
        }
        self.put_checkpoint(&txn, placement)?;
        txn.commit().map_err(|e| self.err(e))
    }

    pub fn pods(&self) -> Result<Vec<PodRecord>, CriError> {
        self.all(PODS)
    }

    pub fn containers(&self) -> Result<Vec<ContainerRecord>, CriError> {
        self.all(CONTAINERS)
    }

    pub fn put_pod(&self, pod: &PodRecord) -> Result<(), CriError> {
        self.put(PODS, &pod.id, pod, None)
    }

    /// The container's record, with the placement checkpoint in the same commit when given.
    pub fn put_container(
        &self,
        container: &ContainerRecord,
        placement: Option<&[u8]>,
    ) -> Result<(), CriError> {
        self.put(CONTAINERS, &container.id, container, placement)
    }

    pub fn delete_pod(&self, id: &str) -> Result<(), CriError> {
        self.delete(PODS, id, None)
    }

    pub fn delete_container(&self, id: &str, placement: Option<&[u8]>) -> Result<(), CriError> {
        self.delete(CONTAINERS, id, placement)
    }

    /// The placement checkpoint, when one was saved.
    pub fn placement(&self) -> Result<Option<Vec<u8>>, CriError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(NODE).map_err(|e| self.err(e))?;
        let value = table.get(PLACEMENT_KEY).map_err(|e| self.err(e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// The baselines of the host files tuning changed, by path.
    pub fn tuning_baselines(&self) -> Result<BTreeMap<PathBuf, String>, CriError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(TUNING_BASELINES).map_err(|e| self.err(e))?;
        let mut out = BTreeMap::new();
        for entry in table.iter().map_err(|e| self.err(e))? {
            let (path, value) = entry.map_err(|e| self.err(e))?;
            out.insert(
                PathBuf::from(path.value()),
                String::from_utf8_lossy(value.value()).into_owned(),
            );
        }
        Ok(out)
    }

    /// Records a file's baseline, committed before the file is written.
    pub fn record_tuning_baseline(&self, path: &Path, baseline: &str) -> Result<(), CriError> {
        let key = path.to_string_lossy();
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(TUNING_BASELINES).map_err(|e| self.err(e))?;
            table
                .insert(key.as_ref(), baseline.as_bytes())
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    pub fn forget_tuning_baseline(&self, path: &Path) -> Result<(), CriError> {
        let key = path.to_string_lossy();
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(TUNING_BASELINES).map_err(|e| self.err(e))?;
            table.remove(key.as_ref()).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// The boot id saved with the tuning baselines.
    pub fn tuning_boot_id(&self) -> Result<Option<String>, CriError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(NODE).map_err(|e| self.err(e))?;
        let value = table.get(BOOT_ID_KEY).map_err(|e| self.err(e))?;
        Ok(value.map(|v| String::from_utf8_lossy(v.value()).into_owned()))
    }

    pub fn put_tuning_boot_id(&self, boot_id: &str) -> Result<(), CriError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(NODE).map_err(|e| self.err(e))?;
            table
                .insert(BOOT_ID_KEY, boot_id.as_bytes())
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    pub fn put_placement(&self, checkpoint: &[u8]) -> Result<(), CriError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(NODE).map_err(|e| self.err(e))?;
            table
                .insert(PLACEMENT_KEY, checkpoint)
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(id: &str) -> PodRecord {
        PodRecord {
            id: id.into(),
            config: vec![1, 2, 3],
            runtime_handler: String::new(),
            created_at: 1,
            state: PodState::Ready,
            dir: PathBuf::from("/run/ingot/pods").join(id),
            net: None,
            ipc: None,
            uts: None,
            host_pid: false,
            shm: None,
            pid_holder: None,
            cni_result: None,
            ips: vec!["10.0.0.2".into()],
            cgroup_parent: "/ingot/p".into(),
            owns_cgroup: true,
            shim: None,
            netdevs: Vec::new(),
        }
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        store.put_pod(&pod("a")).expect("put");
        store.put_pod(&pod("b")).expect("put");
        let mut changed = pod("a");
        changed.state = PodState::NotReady;
        store.put_pod(&changed).expect("update");
        store.delete_pod("b").expect("delete");
        store.delete_pod("missing").expect("delete missing");
        drop(store);
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.pods().expect("pods"), vec![changed]);
        assert!(store.containers().expect("containers").is_empty());
        assert_eq!(store.placement().expect("placement"), None);
        store.put_placement(b"{}").expect("put placement");
        drop(store);
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.placement().expect("placement"), Some(b"{}".to_vec()));
    }

    #[test]
    fn a_store_under_the_root_moves_to_the_runtime_state() {
        let root = tempfile::tempdir().expect("tempdir");
        let state = tempfile::tempdir().expect("tempdir");
        let store = Store::open(root.path()).expect("open the old store");
        store.put_pod(&pod("a")).expect("put");
        drop(store);
        // A move a crash interrupted left a partial copy: it is made again.
        std::fs::write(state.path().join("state.redb.moving"), b"partial").expect("write");

        let store = Store::open_moving(state.path(), root.path()).expect("move");
        assert_eq!(store.pods().expect("pods"), vec![pod("a")]);
        assert!(
            !root.path().join(STORE_FILE).exists(),
            "the old store is left"
        );
        assert!(!state.path().join("state.redb.moving").exists());
        store.put_pod(&pod("b")).expect("put");
        drop(store);

        // A crash after the rename, before the old file was removed: the moved store stands.
        let old = Store::open(root.path()).expect("open an old store again");
        old.put_pod(&pod("stale")).expect("put");
        drop(old);
        let store = Store::open_moving(state.path(), root.path()).expect("reopen");
        let mut ids: Vec<String> = store
            .pods()
            .expect("pods")
            .into_iter()
            .map(|p| p.id)
            .collect();
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
        assert!(!root.path().join(STORE_FILE).exists());

        // One directory for both is no move.
        drop(store);
        let store = Store::open_moving(state.path(), state.path()).expect("same directory");
        assert_eq!(store.pods().expect("pods").len(), 2);
    }
}
