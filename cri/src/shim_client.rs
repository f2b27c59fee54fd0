//! ingotd's side of the shim v2 Task API: ttrpc requests and their responses over unix
//! connections, on the async runtime. A call takes an idle connection to the shim or opens one,
//! and gives it back when the exchange completed, so a long `Wait` never holds up other calls
//! and an idle daemon has no reader task polling anything (the ttrpc crate's clients keep a
//! reader thread that wakes every few milliseconds). Reuse matters on the shim's side: its ttrpc
//! server starts five threads for every connection it accepts.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock},
    time::Duration,
};

use containerd_shim_protos::{
    api,
    protobuf::Message,
    ttrpc::{self, proto::MESSAGE_HEADER_LENGTH, MessageHeader},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
};

use crate::CriError;

const SERVICE: &str = "containerd.task.v2.Task";
/// Ordinary calls; Wait has none.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A response larger than this is refused (the shim's are small).
const MAX_RESPONSE: u32 = 16 << 20;
/// Idle connections kept per shim; more are closed when their call ends.
const IDLE_PER_SHIM: usize = 2;

/// One connection and the stream id its next request gets (client ids are odd and rising).
struct Connection {
    stream: UnixStream,
    next_id: u32,
}

/// Idle connections by shim socket. Emptied for a shim when it is shut down; a connection the
/// shim closed (it exited) is noticed before reuse and dropped.
fn idle() -> &'static Mutex<HashMap<PathBuf, Vec<Connection>>> {
    static IDLE: OnceLock<Mutex<HashMap<PathBuf, Vec<Connection>>>> = OnceLock::new();
    IDLE.get_or_init(Mutex::default)
}

/// Whether an idle connection can carry a request: nothing to read on it (a closed peer
/// reads as end of file, and a healthy idle connection has no pending bytes).
fn reusable(stream: &UnixStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
}

/// The type of the resources an UpdateTaskRequest carries.
pub const LINUX_RESOURCES_TYPE: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// The ttrpc address of one pod's shim.
#[derive(Debug, Clone)]
pub struct ShimClient {
    socket: PathBuf,
}

impl ShimClient {
    /// From the address the shim printed (`unix:///path` or a path).
    pub fn new(address: &str) -> Self {
        ShimClient {
            socket: PathBuf::from(address.strip_prefix("unix://").unwrap_or(address)),
        }
    }

    /// Whether a shim answers at this address. A connection opened to find out is kept for the
    /// next call.
    pub async fn alive(&self) -> bool {
        match self.connection().await {
            Ok(connection) => {
                self.give_back(connection);
                true
            }
            Err(_) => false,
        }
    }

    /// An idle connection to this shim, or a new one.
    async fn connection(&self) -> std::io::Result<Connection> {
        if let Some(connection) = self.take_idle() {
            return Ok(connection);
        }
        let stream = UnixStream::connect(&self.socket).await?;
        Ok(Connection { stream, next_id: 1 })
    }

    fn take_idle(&self) -> Option<Connection> {
        let mut idle = idle()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let connections = idle.get_mut(&self.socket)?;
        let found = std::iter::from_fn(|| connections.pop()).find(|c| reusable(&c.stream));
        if connections.is_empty() {
            idle.remove(&self.socket);
        }
        found
    }

    fn give_back(&self, connection: Connection) {
        let mut idle = idle()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let connections = idle.entry(self.socket.clone()).or_default();
        if connections.len() < IDLE_PER_SHIM {
            connections.push(connection);
        }
    }

    /// Closes this shim's idle connections.
    fn forget_idle(&self) {
        forget_idle(&self.socket);
    }

    async fn call<Req: Message, Resp: Message>(
        &self,
        method: &'static str,
        request: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, CriError> {
        let exchange = self.exchange(method, request, timeout);
        match timeout {
            Some(limit) => {
                tokio::time::timeout(limit, exchange)
                    .await
                    .map_err(|_| CriError::Shim {
                        method,
                        code: tonic::Code::DeadlineExceeded,
                        message: format!("no answer within {limit:?}"),
                    })?
            }
            None => exchange.await,
        }
    }

    async fn exchange<Req: Message, Resp: Message>(
        &self,
        method: &'static str,
        request: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, CriError> {
        let failed = |message: String| CriError::Shim {
            method,
            code: tonic::Code::Unavailable,
            message,
        };
        let payload = request
            .write_to_bytes()
            .map_err(|err| failed(format!("encode request: {err}")))?;
        let body = ttrpc::Request {
            service: SERVICE.to_string(),
            method: method.to_string(),
            payload,
            timeout_nano: timeout
                .map(|t| i64::try_from(t.as_nanos()).unwrap_or(i64::MAX))
                .unwrap_or(0),
            ..Default::default()
        }
        .write_to_bytes()
        .map_err(|err| failed(format!("encode request: {err}")))?;
        let length = u32::try_from(body.len()).map_err(|_| failed("request too large".into()))?;
        let mut connection = self
            .connection()
            .await
            .map_err(|err| failed(format!("connect {}: {err}", self.socket.display())))?;
        let stream_id = connection.next_id;
        connection.next_id = connection.next_id.wrapping_add(2);
        let stream = &mut connection.stream;
        let header: Vec<u8> = MessageHeader::new_request(stream_id, length).into();
        stream
            .write_all(&header)
            .await
            .map_err(|err| failed(format!("send: {err}")))?;
        stream
            .write_all(&body)
            .await
            .map_err(|err| failed(format!("send: {err}")))?;
        let mut raw = [0u8; MESSAGE_HEADER_LENGTH];
        stream
            .read_exact(&mut raw)
            .await
            .map_err(|err| failed(format!("read response: {err}")))?;
        let header = MessageHeader::from(raw);
        if header.length > MAX_RESPONSE {
            return Err(failed(format!("response of {} bytes", header.length)));
        }
        if header.stream_id != stream_id {
            return Err(failed(format!(
                "response for stream {} to request {stream_id}",
                header.stream_id
            )));
        }
        let mut payload = vec![0u8; header.length as usize];
        stream
            .read_exact(&mut payload)
            .await
            .map_err(|err| failed(format!("read response: {err}")))?;
        // The exchange is complete: the connection can carry the next call.
        self.give_back(connection);
        let response = ttrpc::Response::parse_from_bytes(&payload)
            .map_err(|err| failed(format!("decode response: {err}")))?;
        let status = response.status();
        if status.code() != ttrpc::Code::OK {
            return Err(CriError::Shim {
                method,
                code: tonic::Code::from_i32(status.code() as i32),
                message: status.message().to_string(),
            });
        }
        Resp::parse_from_bytes(&response.payload)
            .map_err(|err| failed(format!("decode {method} response: {err}")))
    }

    pub async fn create(&self, request: &api::CreateTaskRequest) -> Result<u32, CriError> {
        let response: api::CreateTaskResponse =
            self.call("Create", request, Some(CALL_TIMEOUT)).await?;
        Ok(response.pid)
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32, CriError> {
        let request = api::StartRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        let response: api::StartResponse = self.call("Start", &request, Some(CALL_TIMEOUT)).await?;
        Ok(response.pid)
    }

    /// CloseIO of the process's stdin: it reads EOF once what was written is passed on.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), CriError> {
        let request = api::CloseIORequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdin: true,
            ..Default::default()
        };
        let _: api::Empty = self.call("CloseIO", &request, Some(CALL_TIMEOUT)).await?;
        Ok(())
    }

    pub async fn exec(&self, request: &api::ExecProcessRequest) -> Result<(), CriError> {
        let _: api::Empty = self.call("Exec", request, Some(CALL_TIMEOUT)).await?;
        Ok(())
    }

    pub async fn kill(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), CriError> {
        let request = api::KillRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            signal,
            all,
            ..Default::default()
        };
        let _: api::Empty = self.call("Kill", &request, Some(CALL_TIMEOUT)).await?;
        Ok(())
    }

    /// Waits (without a time limit) for the process to exit: its status and exit time.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<api::WaitResponse, CriError> {
        let request = api::WaitRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.call("Wait", &request, None).await
    }

    pub async fn state(&self, id: &str) -> Result<api::StateResponse, CriError> {
        let request = api::StateRequest {
            id: id.to_string(),
            ..Default::default()
        };
        self.call("State", &request, Some(CALL_TIMEOUT)).await
    }

    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse, CriError> {
        let request = api::DeleteRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        };
        self.call("Delete", &request, Some(CALL_TIMEOUT)).await
    }

    /// The shim's own process id (its Connect answer).
    pub async fn shim_pid(&self) -> Result<u32, CriError> {
        let request = api::ConnectRequest::default();
        let response: api::ConnectResponse =
            self.call("Connect", &request, Some(CALL_TIMEOUT)).await?;
        Ok(response.shim_pid)
    }

    /// The terminal size of a process started with a terminal.
    pub async fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<(), CriError> {
        let request = api::ResizePtyRequest {
            id: id.to_string(),
            exec_id: exec_id.to_string(),
            width,
            height,
            ..Default::default()
        };
        let _: api::Empty = self.call("ResizePty", &request, Some(CALL_TIMEOUT)).await?;
        Ok(())
    }

    /// Update with Linux resources (the OCI `LinuxResources` JSON the shim applies).
    pub async fn update_resources(
        &self,
        id: &str,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<(), CriError> {
        let value = serde_json::to_vec(resources).map_err(|err| CriError::Io {
            context: "encode resources".into(),
            source: err.into(),
        })?;
        self.update(&api::UpdateTaskRequest {
            id: id.to_string(),
            resources: Some(
                containerd_shim_protos::protobuf::well_known_types::any::Any {
                    type_url: LINUX_RESOURCES_TYPE.into(),
                    value,
                    ..Default::default()
                },
            )
            .into(),
            ..Default::default()
        })
        .await
    }

    /// A cpuset alone (the shim writes it without a helper process); `mems` None leaves them.
    pub async fn update_cpuset(
        &self,
        id: &str,
        cpus: &ingot_topology::CpuSet,
        mems: Option<&ingot_topology::CpuSet>,
    ) -> Result<(), CriError> {
        let mut cpu = oci_spec::runtime::LinuxCpu::default();
        cpu.set_cpus(Some(cpus.to_string()))
            .set_mems(mems.filter(|m| !m.is_empty()).map(|m| m.to_string()));
        let mut resources = oci_spec::runtime::LinuxResources::default();
        resources.set_devices(None).set_cpu(Some(cpu));
        self.update_resources(id, &resources).await
    }

    pub async fn update(&self, request: &api::UpdateTaskRequest) -> Result<(), CriError> {
        let _: api::Empty = self.call("Update", request, Some(CALL_TIMEOUT)).await?;
        Ok(())
    }

    pub async fn stats(&self, id: &str) -> Result<api::StatsResponse, CriError> {
        let request = api::StatsRequest {
            id: id.to_string(),
            ..Default::default()
        };
        self.call("Stats", &request, Some(CALL_TIMEOUT)).await
    }

    pub async fn shutdown(&self) -> Result<(), CriError> {
        let request = api::ShutdownRequest {
            now: true,
            ..Default::default()
        };
        // The shim may exit before it answers; its idle connections go with it.
        self.forget_idle();
        let result = match self
            .call::<_, api::Empty>("Shutdown", &request, Some(CALL_TIMEOUT))
            .await
        {
            Ok(_) => Ok(()),
            Err(CriError::Shim {
                code: tonic::Code::Unavailable,
                ..
            }) => Ok(()),
            Err(err) => Err(err),
        };
        self.forget_idle();
        result
    }
}

/// Closes the idle connections to the shim at `socket`.
pub fn forget_idle(socket: &Path) {
    idle()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .remove(socket);
}
