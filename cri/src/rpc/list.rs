//! ListPodSandbox and ListContainers: the records that pass a CRI filter.

use k8s_cri::v1;

use crate::{convert, lifecycle::Manager, store::PodState};
pub fn pods(manager: &Manager, filter: Option<&v1::PodSandboxFilter>) -> Vec<v1::PodSandbox> {
    manager
        .pods()
        .into_iter()
        .filter(|pod| {
            let Some(filter) = filter else { return true };
            if !filter.id.is_empty() && !pod.id.starts_with(&filter.id) {
                return false;
            }
            if let Some(state) = &filter.state {
                let ready = state.state == v1::PodSandboxState::SandboxReady as i32;
                if ready != (pod.state == PodState::Ready) {
                    return false;
                }
            }
            convert::labels_match(&filter.label_selector, &convert::pod_config(pod).labels)
        })
        .map(|pod| {
            let status = convert::pod_status(&pod);
            v1::PodSandbox {
                id: status.id,
                metadata: status.metadata,
                state: status.state,
                created_at: status.created_at,
                labels: status.labels,
                annotations: status.annotations,
                runtime_handler: status.runtime_handler,
            }
        })
        .collect()
}

pub fn containers(manager: &Manager, filter: Option<&v1::ContainerFilter>) -> Vec<v1::Container> {
    manager
        .containers()
        .into_iter()
        .filter(|c| {
            let Some(filter) = filter else { return true };
            if !filter.id.is_empty() && !c.id.starts_with(&filter.id) {
                return false;
            }
            if !filter.pod_sandbox_id.is_empty() && !c.pod_id.starts_with(&filter.pod_sandbox_id) {
                return false;
            }
            if filter
                .state
                .as_ref()
                .is_some_and(|s| s.state != convert::cri_state(c.state))
            {
                return false;
            }
            convert::labels_match(&filter.label_selector, &convert::container_config(c).labels)
        })
        .map(|c| {
            let config = convert::container_config(&c);
            v1::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.pod_id.clone(),
                metadata: config.metadata,
                image: config.image,
                image_ref: c.image_id.clone(),
                state: convert::cri_state(c.state),
                created_at: c.created_at,
                labels: config.labels,
                annotations: config.annotations,
                image_id: c.image_id.clone(),
            }
        })
        .collect()
}
