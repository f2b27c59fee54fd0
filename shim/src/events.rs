//! Publishing task events to containerd: `containerd.services.events.ttrpc.v1.Events/Forward`
//! over containerd's ttrpc socket, one blocking request/response at a time on a connection
//! opened when needed. containerd-shim's publisher keeps a ttrpc client whose reader thread
//! polls every 10 ms, a hundred wakeups a second in an idle shim; this one sleeps until the
//! next event.

use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    time::Duration,
};

use containerd_shim::{
    protos::{
        protobuf::{well_known_types::any::Any, Message, MessageDyn},
        shim::{event::Envelope, events::ForwardRequest},
        ttrpc::{self, proto::MESSAGE_HEADER_LENGTH, MessageHeader},
    },
    util::timestamp,
};

const SERVICE: &str = "containerd.services.events.ttrpc.v1.Events";
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Publisher {
    socket: String,
    namespace: String,
    connection: Option<UnixStream>,
    stream_id: u32,
}

/// The Forward request's body for one event.
pub fn forward_request(
    topic: &str,
    namespace: &str,
    event: &dyn MessageDyn,
) -> Result<Vec<u8>, String> {
    let mut value = Vec::new();
    event
        .write_to_vec_dyn(&mut value)
        .map_err(|err| format!("encode {topic} event: {err}"))?;
    let envelope = Envelope {
        timestamp: Some(timestamp().map_err(|err| err.to_string())?).into(),
        namespace: namespace.to_string(),
        topic: topic.to_string(),
        event: Some(Any {
            type_url: event.descriptor_dyn().full_name().to_string(),
            value,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    let forward = ForwardRequest {
        envelope: Some(envelope).into(),
        ..Default::default()
    };
    let request = ttrpc::Request {
        service: SERVICE.to_string(),
        method: "Forward".to_string(),
        payload: forward
            .write_to_bytes()
            .map_err(|err| format!("encode forward request: {err}"))?,
        timeout_nano: i64::try_from(TIMEOUT.as_nanos()).unwrap_or(i64::MAX),
        ..Default::default()
    };
    request
        .write_to_bytes()
        .map_err(|err| format!("encode ttrpc request: {err}"))
}

impl Publisher {
    pub fn new(address: &str, namespace: &str) -> Self {
        Publisher {
            socket: crate::bootstrap::socket_path(address).to_string(),
            namespace: namespace.to_string(),
            connection: None,
            stream_id: 1,
        }
    }

    pub fn publish(&mut self, topic: &str, event: &dyn MessageDyn) -> Result<(), String> {
        let body = forward_request(topic, &self.namespace, event)?;
        // One retry on a fresh connection: containerd may have restarted since the last event.
        match self.send(&body) {
            Ok(()) => Ok(()),
            Err(_) => {
                self.connection = None;
                self.send(&body)
            }
        }
    }

    fn send(&mut self, body: &[u8]) -> Result<(), String> {
        if self.connection.is_none() {
            let stream = UnixStream::connect(&self.socket)
                .map_err(|err| format!("connect {}: {err}", self.socket))?;
            stream
                .set_read_timeout(Some(TIMEOUT))
                .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
                .map_err(|err| err.to_string())?;
            self.connection = Some(stream);
        }
        let stream_id = self.stream_id;
        // Client streams are odd.
        self.stream_id = self.stream_id.wrapping_add(2) | 1;
        let stream = self
            .connection
            .as_mut()
            .ok_or_else(|| "no connection".to_string())?;
        let length = u32::try_from(body.len()).map_err(|_| "event too large".to_string())?;
        let header: Vec<u8> = MessageHeader::new_request(stream_id, length).into();
        stream
            .write_all(&header)
            .and_then(|()| stream.write_all(body))
            .map_err(|err| format!("send event: {err}"))?;
        loop {
            let mut raw = [0u8; MESSAGE_HEADER_LENGTH];
            stream
                .read_exact(&mut raw)
                .map_err(|err| format!("read event response: {err}"))?;
            let header = MessageHeader::from(raw);
            let mut payload = vec![0u8; header.length as usize];
            stream
                .read_exact(&mut payload)
                .map_err(|err| format!("read event response: {err}"))?;
            if header.stream_id != stream_id {
                continue;
            }
            let response = ttrpc::Response::parse_from_bytes(&payload)
                .map_err(|err| format!("decode event response: {err}"))?;
            let status = response.status();
            if status.code() != ttrpc::Code::OK {
                return Err(format!(
                    "containerd refused the event: {}",
                    status.message()
                ));
            }
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use containerd_shim::protos::events::task::TaskOOM;

    use super::*;

    /// A one-request ttrpc server: returns the request it got, answering OK.
    fn serve_once(
        listener: UnixListener,
    ) -> std::thread::JoinHandle<(MessageHeader, ttrpc::Request)> {
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut raw = [0u8; MESSAGE_HEADER_LENGTH];
            stream.read_exact(&mut raw).expect("header");
            let header = MessageHeader::from(raw);
            let mut body = vec![0u8; header.length as usize];
            stream.read_exact(&mut body).expect("body");
            let request = ttrpc::Request::parse_from_bytes(&body).expect("request");
            let response = ttrpc::Response {
                status: Some(ttrpc::get_status(ttrpc::Code::OK, "")).into(),
                ..Default::default()
            }
            .write_to_bytes()
            .expect("encode");
            let out: Vec<u8> = MessageHeader::new_response(
                header.stream_id,
                u32::try_from(response.len()).expect("len"),
            )
            .into();
            stream.write_all(&out).expect("write");
            stream.write_all(&response).expect("write");
            (header, request)
        })
    }

    #[test]
    fn forwards_an_envelope_over_ttrpc() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("events.sock");
        let server = serve_once(UnixListener::bind(&socket).expect("bind"));
        let mut publisher = Publisher::new(&format!("unix://{}", socket.display()), "ns1");
        let event = TaskOOM {
            container_id: "c1".into(),
            ..Default::default()
        };
        publisher.publish("/tasks/oom", &event).expect("publish");
        let (header, request) = server.join().expect("server");
        assert_eq!(header.stream_id % 2, 1);
        assert_eq!(request.service, SERVICE);
        assert_eq!(request.method, "Forward");
        let forward = ForwardRequest::parse_from_bytes(&request.payload).expect("forward");
        assert_eq!(forward.envelope.topic, "/tasks/oom");
        assert_eq!(forward.envelope.namespace, "ns1");
        assert_eq!(forward.envelope.event.type_url, "containerd.events.TaskOOM");
        let oom = TaskOOM::parse_from_bytes(&forward.envelope.event.value).expect("oom");
        assert_eq!(oom.container_id, "c1");
    }
}
