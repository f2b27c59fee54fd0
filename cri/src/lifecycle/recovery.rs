//! Recovery when ingotd starts again: exits that happened while it was away are recorded, live
//! containers followed again, and what no record owns (pod directories, pod-inits, bundles,
//! writable layers, cgroups) is removed.

use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::{host, lifecycle::Manager, shim_client::ShimClient, store::ContainerState};

impl Manager {
    /// After a restart: containers that were running are checked against their shims (exits
    /// that happened meanwhile are recorded, live ones followed again), and what no record owns
    /// (pod directories, bundles, writable layers) is removed.
    pub async fn recover(self: &Arc<Self>) {
        self.hold_image_layers();
        for container in self.containers() {
            if !matches!(
                container.state,
                ContainerState::Running | ContainerState::Created
            ) {
                continue;
            }
            let Ok(pod) = self.pod(&container.pod_id) else {
                self.record_exit(&container.id, 255, None, "its pod sandbox is gone");
                continue;
            };
            let Some(shim) = self.shim_of(&pod) else {
                continue;
            };
            match shim.state(&container.id).await {
                Ok(state) => {
                    use containerd_shim_protos::api::Status;
                    match state.status.enum_value() {
                        Ok(Status::STOPPED) => {
                            self.record_exit(
                                &container.id,
                                state.exit_status,
                                state.exited_at.as_ref(),
                                "",
                            );
                        }
                        Ok(Status::RUNNING | Status::PAUSED | Status::PAUSING) => {
                            self.watch_exit(&pod, &container.id);
                        }
                        _ => {}
                    }
                }
                Err(err) => {
                    tracing::warn!(container = %container.id, error = %err, "container lost while ingotd was down");
                    self.record_exit(
                        &container.id,
                        255,
                        None,
                        &format!("lost while ingotd was down: {err}"),
                    );
                }
            }
        }
        self.clean_orphan_containers().await;
        self.clean_orphans();
        // The host's tuned files follow the containers that survived (an ingotd killed between
        // two writes left some half-way; a reboot reset them all).
        self.recover_tuning().await;
        self.watch_irqs();
        self.mirror_devices();
    }

    /// Every container's image layers are held (a record made before containers recorded
    /// them holds its image's), then layer directories nothing holds go: an image removed
    /// while a container used it, and the container removed later, or never, by an ingotd
    /// that ended meanwhile.
    fn hold_image_layers(&self) {
        for container in self.containers() {
            let layers = if container.layers.is_empty() {
                match self.images.resolve(&container.image_id) {
                    Ok(Some(image)) => self.images.layer_paths(&image),
                    _ => continue,
                }
            } else {
                container.layers.clone()
            };
            self.images.hold(&container.id, layers);
        }
        if let Err(err) = self.images.remove_unreferenced_layers() {
            tracing::warn!(error = %err, "unused image layers not removed");
        }
    }

    /// Containers the shims still run but no record owns (ingotd died between a shim call and
    /// the commit of its record) are killed and deleted through whichever shim knows them; then
    /// shims no pod record names are shut down.
    async fn clean_orphan_containers(&self) {
        let shim_root = self.config.state.join("shim");
        let names = |dir: PathBuf| -> Vec<String> {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let known_containers: Vec<String> = super::lock(&self.containers).keys().cloned().collect();
        let known_shims: Vec<PathBuf> = super::lock(&self.pods)
            .values()
            .filter_map(|p| p.shim.as_deref())
            .map(|a| PathBuf::from(a.strip_prefix("unix://").unwrap_or(a)))
            .collect();
        let sockets: Vec<PathBuf> = names(shim_root.join("s"))
            .into_iter()
            .map(|name| shim_root.join("s").join(name))
            .collect();
        let mut orphans: Vec<String> = names(shim_root.join(super::SHIM_NAMESPACE))
            .into_iter()
            .filter(|name| !name.ends_with(super::SHIM_DIR_SUFFIX))
            .map(|name| name.trim_end_matches(".ingot").to_string())
            .filter(|id| !known_containers.contains(id))
            .collect();
        orphans.sort();
        orphans.dedup();
        for id in &orphans {
            for socket in &sockets {
                let shim = ShimClient::new(&socket.display().to_string());
                if shim.state(id).await.is_err() {
                    continue;
                }
                tracing::info!(container = %id, "removing a container no record owns");
                let _ = shim.kill(id, "", libc::SIGKILL as u32, true).await;
                let _ = tokio::time::timeout(Duration::from_secs(5), shim.wait(id, "")).await;
                if let Err(err) = shim.delete(id, "").await {
                    tracing::warn!(container = %id, error = %err, "delete orphaned container");
                }
                break;
            }
        }
        for socket in sockets.iter().filter(|s| !known_shims.contains(s)) {
            tracing::info!(socket = %socket.display(), "shutting down a shim no pod owns");
            let _ = ShimClient::new(&socket.display().to_string())
                .shutdown()
                .await;
        }
    }

    fn clean_orphans(&self) {
        let pods: Vec<String> = super::lock(&self.pods).keys().cloned().collect();
        let containers: Vec<String> = super::lock(&self.containers).keys().cloned().collect();
        let entries = |dir: PathBuf| -> Vec<(String, PathBuf)> {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                        .collect()
                })
                .unwrap_or_default()
        };
        // Pod inits no record owns: ingotd died inside RunPodSandbox, after the pod init
        // started and before the pod's record was committed.
        for (pid, pod_id) in
            host::pod_init::pod_inits_under(&self.proc_root(), &self.config.state.join("pods"))
        {
            let owned = super::lock(&self.pods)
                .get(&pod_id)
                .is_some_and(|pod| pod.pid_holder == Some(pid));
            if !owned {
                tracing::info!(pod = %pod_id, pid, "ending a pod init no record owns");
                host::pod_init::kill_pod_init(pid);
            }
        }
        for (id, path) in entries(self.config.state.join("pods")) {
            if !pods.contains(&id) {
                tracing::info!(pod = %id, "removing an orphaned pod directory");
                super::pods::release_orphan_network(self, &id, &path);
                host::rootfs::remove_pod_dir(&path);
            }
        }
        for (id, path) in entries(self.config.state.join("containers")) {
            if !containers.contains(&id) {
                tracing::info!(container = %id, "removing an orphaned bundle");
                host::rootfs::unmount_rootfs(&path.join("rootfs"));
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        // A shim's own working directory is named for its pod; one whose pod is gone was left
        // by a shim that was killed.
        for (name, path) in entries(self.config.state.join("shim").join(super::SHIM_NAMESPACE)) {
            let Some(pod) = name.strip_suffix(super::SHIM_DIR_SUFFIX) else {
                continue;
            };
            if !pods.iter().any(|id| id == pod) {
                tracing::info!(pod = %pod, "removing an orphaned shim directory");
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        for (id, path) in entries(self.config.root.join("containers")) {
            if !containers.contains(&id) {
                tracing::info!(container = %id, "removing an orphaned writable layer");
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        // Pod cgroups ingotd made under its own parent, for pods it no longer knows.
        let parent = self.config.cgroup_parent.trim_start_matches('/');
        if parent.is_empty() {
            return;
        }
        for root in host::cgroups::cgroup_roots(&self.config.host_root) {
            for (id, path) in entries(root.join(parent)) {
                if path.is_dir() && id.len() == 64 && !pods.contains(&id) {
                    tracing::info!(pod = %id, cgroup = %path.display(), "removing an orphaned pod cgroup");
                    host::cgroups::remove_cgroup_tree(&path);
                }
            }
        }
    }
}
