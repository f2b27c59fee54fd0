//! The ttrpc edge of the Task service: each RPC opens a span with the container and exec ids,
//! calls the service, and maps its error to a status (see `error`). No logic lives here.

use containerd_shim::{api, protos::types::task::ProcessInfo, TtrpcContext, TtrpcResult};

use crate::{
    cgroups,
    error::{Result, ShimError},
    service::Service,
};

fn to_ttrpc<T>(result: Result<T>, rpc: &str, id: &str) -> TtrpcResult<T> {
    result.map_err(|err| {
        tracing::warn!(rpc, container_id = id, error = %err, "rpc failed");
        err.into()
    })
}

/// An Update carrying this annotation reopens the container's CRI log instead of changing its
/// resources (the Task API has no ReopenContainerLog of its own).
pub const REOPEN_LOG_ANNOTATION: &str = "io.ingot.reopen-log";

impl containerd_shim::Task for Service {
    fn state(&self, _: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        to_ttrpc(self.state_of(&req.id, &req.exec_id), "state", &req.id)
    }

    fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let span = tracing::info_span!("create", container_id = %req.id);
        let _enter = span.enter();
        let pid = to_ttrpc(self.create(&req), "create", &req.id)?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, _: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        let span = tracing::info_span!("start", container_id = %req.id, exec_id = %req.exec_id);
        let _enter = span.enter();
        let pid = to_ttrpc(self.start(&req.id, &req.exec_id), "start", &req.id)?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let span = tracing::info_span!("delete", container_id = %req.id, exec_id = %req.exec_id);
        let _enter = span.enter();
        to_ttrpc(self.delete(&req.id, &req.exec_id), "delete", &req.id)
    }

    fn pids(&self, _: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let result = self
            .cgroups_path(&req.id)
            .and_then(|path| cgroups::pids(&req.id, &path));
        let pids = to_ttrpc(result, "pids", &req.id)?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid: u32::try_from(pid).unwrap_or(0),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        to_ttrpc(self.pause(&req.id, true), "pause", &req.id)?;
        Ok(api::Empty::new())
    }

    fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        to_ttrpc(self.pause(&req.id, false), "resume", &req.id)?;
        Ok(api::Empty::new())
    }

    fn checkpoint(
        &self,
        _: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        to_ttrpc(
            Err(ShimError::FailedPrecondition {
                what: format!("checkpoint container {}", req.id),
                reason: "checkpoint is not supported by ingot".into(),
            }),
            "checkpoint",
            &req.id,
        )
    }

    fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        to_ttrpc(self.kill(&req), "kill", &req.id)?;
        Ok(api::Empty::new())
    }

    fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let span = tracing::info_span!("exec", container_id = %req.id, exec_id = %req.exec_id);
        let _enter = span.enter();
        to_ttrpc(self.exec(&req), "exec", &req.id)?;
        Ok(api::Empty::new())
    }

    fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        let result = self.with_process(&req.id, &req.exec_id, |p| {
            p.io.resize(req.width, req.height)
        });
        to_ttrpc(result, "resize_pty", &req.id)?;
        Ok(api::Empty::new())
    }

    fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let result = self.with_process(&req.id, &req.exec_id, |p| {
            if req.stdin {
                p.io.close_stdin();
            }
            Ok(())
        });
        to_ttrpc(result, "close_io", &req.id)?;
        Ok(api::Empty::new())
    }

    fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        if req.annotations.contains_key(REOPEN_LOG_ANNOTATION) {
            let result = self.with_process(&req.id, "", |p| p.io.reopen_log());
            to_ttrpc(result, "reopen log", &req.id)?;
            return Ok(api::Empty::new());
        }
        let result = self.cgroups_path(&req.id).and_then(|path| {
            let resources = req
                .resources
                .as_ref()
                .ok_or_else(|| ShimError::InvalidArgument {
                    what: format!("update container {}", req.id),
                    reason: "no resources".into(),
                })?;
            self.update(&req.id, path, &resources.value)
        });
        to_ttrpc(result, "update", &req.id)?;
        Ok(api::Empty::new())
    }

    fn wait(&self, _: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        to_ttrpc(self.wait(&req.id, &req.exec_id), "wait", &req.id)
    }

    fn stats(&self, _: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        let result = self
            .cgroups_path(&req.id)
            .and_then(|path| cgroups::stats(&req.id, &path));
        let stats = to_ttrpc(result, "stats", &req.id)?;
        Ok(api::StatsResponse {
            stats: Some(stats).into(),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.init_pid(&req.id),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _: &TtrpcContext, req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        self.shutdown_requested(req.now);
        Ok(api::Empty::new())
    }
}
