//! ingotd's side of the shim v2 Task API: one ttrpc request and its response over a unix
//! connection, on the async runtime. A call opens its own connection, so a long `Wait` never
//! holds up other calls, and an idle daemon has no reader task polling anything (the ttrpc
//! crate's clients keep a reader thread that wakes every few milliseconds).

use std::{path::PathBuf, time::Duration};

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

    /// Whether a shim answers at this address.
    pub async fn alive(&self) -> bool {
        UnixStream::connect(&self.socket).await.is_ok()
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
        let mut stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|err| failed(format!("connect {}: {err}", self.socket.display())))?;
        let header: Vec<u8> = MessageHeader::new_request(1, length).into();
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
        let mut payload = vec![0u8; header.length as usize];
        stream
            .read_exact(&mut payload)
            .await
            .map_err(|err| failed(format!("read response: {err}")))?;
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
        // The shim may exit before it answers.
        match self
            .call::<_, api::Empty>("Shutdown", &request, Some(CALL_TIMEOUT))
            .await
        {
            Ok(_) => Ok(()),
            Err(CriError::Shim {
                code: tonic::Code::Unavailable,
                ..
            }) => Ok(()),
            Err(err) => Err(err),
        }
    }
}
