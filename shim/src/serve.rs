//! The shim's ttrpc server: one thread per connection reads a request, runs its handler and
//! writes the response, in the order the requests came.
//!
//! ttrpc's own sync server starts five threads for every connection (a reader, a writer, a
//! control thread and two workers, and more when both are busy) besides its listener and
//! reaper: with ingotd, which keeps one call in flight per connection, about six thread starts
//! and exits for every pod, each a stack mapped, a signal stack, a clone and a teardown. A
//! Wait blocks until its process exits, so each Wait runs on a thread of its own and its
//! connection goes on serving: containerd sends every call to a shim over one connection, a
//! Wait among them.

use std::{
    collections::HashMap,
    io::{Read, Write},
    os::{fd::AsRawFd, unix::net::UnixListener, unix::net::UnixStream},
    sync::{mpsc, Arc, Mutex, MutexGuard},
    thread,
};

use containerd_shim::protos::ttrpc::{
    self,
    proto::{
        Codec, MessageHeader, Request, Response, ResponseInit, MESSAGE_HEADER_LENGTH,
        MESSAGE_LENGTH_MAX, MESSAGE_TYPE_REQUEST,
    },
    Code, ConnectionContext, MethodHandler, TtrpcContext,
};

/// Handlers by their full path, `/<service>/<method>`.
pub type Methods = HashMap<String, Box<dyn MethodHandler + Send + Sync>>;

/// The Task service's handlers under the service name `name` (containerd calls the same methods
/// as `containerd.task.v2.Task` and `containerd.task.v3.Task`).
pub fn task_methods(task: Arc<dyn containerd_shim::Task + Send + Sync>, name: &str) -> Methods {
    containerd_shim::protos::shim::shim_ttrpc::create_task(task)
        .into_iter()
        .map(|(method, handler)| {
            let short = method.rsplit('/').next().unwrap_or_default().to_string();
            (format!("/{name}/{short}"), handler)
        })
        .collect()
}

/// The method whose calls block until a process exits.
const BLOCKING_METHOD: &str = "/Wait";

pub struct Server {
    methods: Arc<Methods>,
    connections: Arc<Mutex<Connections>>,
}

#[derive(Default)]
struct Connections {
    closed: bool,
    next: u64,
    open: HashMap<u64, (UnixStream, thread::JoinHandle<()>)>,
}

fn lock(connections: &Mutex<Connections>) -> MutexGuard<'_, Connections> {
    connections
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Server {
    pub fn new(methods: Methods) -> Server {
        Server {
            methods: Arc::new(methods),
            connections: Arc::default(),
        }
    }

    /// Accepts connections on `listener` from a thread of its own, which lives as long as the
    /// process.
    pub fn start(&self, listener: UnixListener) -> std::io::Result<()> {
        // A socket passed in non-blocking would make every accept fail at once.
        listener.set_nonblocking(false)?;
        let methods = Arc::clone(&self.methods);
        let connections = Arc::clone(&self.connections);
        thread::Builder::new()
            .name("ttrpc-accept".into())
            .spawn(move || accept(&listener, &methods, &connections))?;
        Ok(())
    }

    /// Stops reading requests: each connection's thread finishes the call it runs (the
    /// response of a Shutdown among them) and ends, and is waited for. Waits still blocked
    /// end with the process.
    pub fn shutdown(&self) {
        let open = {
            let mut connections = lock(&self.connections);
            connections.closed = true;
            std::mem::take(&mut connections.open)
        };
        for (stream, handle) in open.into_values() {
            let _ = stream.shutdown(std::net::Shutdown::Read);
            let _ = handle.join();
        }
    }
}

fn accept(listener: &UnixListener, methods: &Arc<Methods>, connections: &Arc<Mutex<Connections>>) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                log::warn!("ttrpc accept: {err}");
                // EMFILE and the like: a moment for descriptors to come back.
                thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        let Ok(control) = stream.try_clone() else {
            continue;
        };
        let mut open = lock(connections);
        if open.closed {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            continue;
        }
        let id = open.next;
        open.next += 1;
        let (methods, registry) = (Arc::clone(methods), Arc::clone(connections));
        let spawned = thread::Builder::new()
            .name("ttrpc-conn".into())
            .spawn(move || {
                serve(stream, &methods);
                lock(&registry).open.remove(&id);
            });
        match spawned {
            Ok(handle) => {
                open.open.insert(id, (control, handle));
            }
            Err(err) => log::warn!("ttrpc connection thread: {err}"),
        }
    }
}

/// One connection, until its peer closes it, a read fails or a handler fails (as ttrpc's
/// server, which closes the connection then).
fn serve(stream: UnixStream, methods: &Arc<Methods>) {
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let writer = Arc::new(Mutex::new(writer));
    // Dropped when the connection ends: a handler that watches `cancel_rx` learns of it.
    let (_cancel, cancel_rx) = crossbeam::channel::unbounded::<()>();
    let conn_ctx = Arc::new(ConnectionContext::default());
    let mut reader = &stream;
    loop {
        let mut header = [0u8; MESSAGE_HEADER_LENGTH];
        if reader.read_exact(&mut header).is_err() {
            break;
        }
        let mh = MessageHeader::from(header);
        let length = mh.length as usize;
        if length > MESSAGE_LENGTH_MAX {
            let skipped = std::io::copy(&mut reader.take(length as u64), &mut std::io::sink());
            let status = ttrpc::get_status(
                Code::RESOURCE_EXHAUSTED,
                format!("message length {length} exceeds the maximum of {MESSAGE_LENGTH_MAX}"),
            );
            if skipped.is_err() || !reply(&writer, &conn_ctx, mh.stream_id, status) {
                break;
            }
            continue;
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            break;
        }
        if mh.type_ != MESSAGE_TYPE_REQUEST {
            continue;
        }
        let request = match <Request as Codec>::decode(&body) {
            Ok(request) => request,
            Err(err) => {
                let status = ttrpc::get_status(Code::INVALID_ARGUMENT, err.to_string());
                if reply(&writer, &conn_ctx, mh.stream_id, status) {
                    continue;
                }
                break;
            }
        };
        let path = format!("/{}/{}", request.service, request.method);
        let call = Call {
            methods: Arc::clone(methods),
            path,
            mh,
            request,
            fd: stream.as_raw_fd(),
            cancel_rx: cancel_rx.clone(),
            conn_ctx: Arc::clone(&conn_ctx),
            writer: Arc::clone(&writer),
        };
        if call.path.ends_with(BLOCKING_METHOD) {
            let spawned = thread::Builder::new()
                .name("ttrpc-wait".into())
                .spawn(move || {
                    let writer = Arc::clone(&call.writer);
                    if !call.run() {
                        // As a failed handler on the connection's own thread would.
                        if let Ok(writer) = writer.lock() {
                            let _ = writer.shutdown(std::net::Shutdown::Both);
                        }
                    }
                });
            if let Err(err) = spawned {
                log::warn!("ttrpc wait thread: {err}");
                break;
            }
        } else if !call.run() {
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

struct Call {
    methods: Arc<Methods>,
    path: String,
    mh: MessageHeader,
    request: Request,
    fd: i32,
    cancel_rx: crossbeam::channel::Receiver<()>,
    conn_ctx: Arc<ConnectionContext>,
    writer: Arc<Mutex<UnixStream>>,
}

impl Call {
    /// Runs the handler and writes what it answered (an error naming the method when there is
    /// no such method); false when the connection must close.
    fn run(self) -> bool {
        let Some(method) = self.methods.get(&self.path) else {
            let status = ttrpc::get_status(
                Code::INVALID_ARGUMENT,
                format!("{} does not exist", self.path),
            );
            return reply(&self.writer, &self.conn_ctx, self.mh.stream_id, status);
        };
        let (res_tx, res_rx) = mpsc::channel();
        let ctx = TtrpcContext {
            fd: self.fd,
            cancel_rx: self.cancel_rx.clone(),
            mh: self.mh,
            res_tx,
            metadata: ttrpc::context::from_pb(&self.request.metadata),
            timeout_nano: self.request.timeout_nano,
            conn_ctx: Arc::clone(&self.conn_ctx),
        };
        let handled = method.handler(ctx, self.request);
        // The handler dropped its sender: every frame it sent is queued.
        let written = res_rx
            .try_iter()
            .all(|(header, payload)| write_frame(&self.writer, header, &payload));
        match handled {
            Ok(()) => written,
            Err(err) => {
                log::debug!("ttrpc {}: {err:?}", self.path);
                false
            }
        }
    }
}

/// A response carrying only `status`; false when it could not be written.
fn reply(
    writer: &Mutex<UnixStream>,
    conn_ctx: &ConnectionContext,
    stream_id: u32,
    status: ttrpc::Status,
) -> bool {
    let (res_tx, res_rx) = mpsc::channel();
    if ttrpc::send_response(stream_id, Response::init_status(status), res_tx, conn_ctx).is_err() {
        return false;
    }
    res_rx
        .try_iter()
        .all(|(header, payload)| write_frame(writer, header, &payload))
}

fn write_frame(writer: &Mutex<UnixStream>, header: MessageHeader, payload: &[u8]) -> bool {
    let mut frame = Vec::<u8>::from(header);
    frame.extend_from_slice(payload);
    let Ok(mut writer) = writer.lock() else {
        return false;
    };
    writer.write_all(&frame).is_ok()
}

#[cfg(test)]
mod tests;
