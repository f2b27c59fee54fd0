//! A process's stdio: the fifos (or files) containerd names, a pipe for stdin so CloseIO can end it,
//! and, in terminal mode, the console socket that receives the pty master and the copy threads
//! that join it to the fifos. Copy threads block in read(2) or poll(2): no wakeups while idle.

use std::{
    fs::{File, OpenOptions},
    io::{IoSliceMut, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{fs::OpenOptionsExt, net::UnixListener},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
};

use nix::{
    pty::Winsize,
    sys::socket::{recvmsg, ControlMessageOwned, MsgFlags},
    unistd::pipe,
};

use crate::{
    crilog::{self, CriLog},
    error::{Result, ShimError},
};

/// The stdio a process was created with, as containerd gave it.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The stdio fds the helper hands to the container process (fds 0, 1, 2).
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

type SharedWriter = Arc<Mutex<Option<File>>>;

/// What the shim keeps of a process's stdio once the process runs.
#[derive(Default)]
pub struct ProcessIo {
    /// The shim's end of the process's stdin, the fifo it copies from, and the shim's own
    /// writer of that fifo, held so stdin stays open while clients come and go (as
    /// containerd's shim holds it): only CloseIO ends it.
    stdin: Option<(SharedWriter, String, File)>,
    /// The pty master in terminal mode, for ResizePty.
    console: Option<Arc<File>>,
    /// The CRI-format log the output goes to, for ReopenContainerLog.
    log: Option<Arc<CriLog>>,
}

impl ProcessIo {
    /// CloseIO: what the client wrote before closing is still delivered (drained from the fifo
    /// here if the copy thread has not read it yet), then the process sees EOF.
    pub fn close_stdin(&mut self) {
        let Some((writer, fifo, holder)) = self.stdin.take() else {
            return;
        };
        let mut guard = lock(&writer);
        if let Some(out) = guard.as_mut() {
            if let Ok(mut pending) = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
            {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pending.read(&mut buf) {
                    if n == 0 || out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        guard.take();
        // The copy thread sees the fifo hang up once the clients' writers are gone too.
        drop(holder);
    }

    /// ReopenContainerLog: a fresh file at the log path.
    pub fn reopen_log(&self) -> Result<()> {
        match &self.log {
            Some(log) => log.reopen(),
            None => Err(ShimError::FailedPrecondition {
                what: "reopen log".into(),
                reason: "the process does not write a CRI log".into(),
            }),
        }
    }

    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let console = self
            .console
            .as_ref()
            .ok_or_else(|| ShimError::FailedPrecondition {
                what: "resize pty".into(),
                reason: "the process has no terminal".into(),
            })?;
        let size = Winsize {
            ws_row: u16::try_from(height).unwrap_or(u16::MAX),
            ws_col: u16::try_from(width).unwrap_or(u16::MAX),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one Winsize from a valid pointer on a fd we own.
        let rc = unsafe { libc::ioctl(console.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc < 0 {
            return Err(ShimError::Io {
                context: "resize pty".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

fn lock(writer: &SharedWriter) -> std::sync::MutexGuard<'_, Option<File>> {
    writer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn dev_null() -> Result<OwnedFd> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(ShimError::io("open /dev/null"))
}

/// Opens an output destination: a fifo or file path, or a `file://` URI. A fifo is opened
/// read-write so the open never blocks, and its reader sees EOF once the process exits.
fn open_output(name: &str, which: &str) -> Result<OwnedFd> {
    if name.is_empty() {
        return dev_null();
    }
    if let Some(path) = name.strip_prefix("file://") {
        return OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map(OwnedFd::from)
            .map_err(ShimError::io(format!("open {which} file {path}")));
    }
    if name.contains("://") {
        return Err(ShimError::InvalidArgument {
            what: which.to_string(),
            reason: format!("{name:?}: only fifo paths, file:// and cri-log:// URIs are supported"),
        });
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(name)
        .map(OwnedFd::from)
        .map_err(ShimError::io(format!("open {which} fifo {name}")))
}

/// Copies the stdin fifo into `writer` until CloseIO drops the writer. Returns the shim's own
/// writer of the fifo, which keeps it from reading EOF when a client closes its end.
fn spawn_stdin_copy(path: String, writer: SharedWriter) -> Result<File> {
    // Non-blocking opens: the reader needs no writer yet, and the holder then has a reader.
    let fifo = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .map_err(ShimError::io(format!("open stdin fifo {path}")))?;
    let holder = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .map_err(ShimError::io(format!("hold stdin fifo {path}")))?;
    thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut fifo = fifo;
            // Bytes are read only under the writer's lock, so CloseIO (which drains the fifo under
            // the same lock) never drops a chunk this thread has read but not yet written.
            let mut buf = [0u8; 8192];
            loop {
                let mut fds = [libc::pollfd {
                    fd: fifo.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                // SAFETY: poll(2) on one pollfd we own; blocks until data or hang-up.
                let rc = unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) };
                if rc < 0 {
                    if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    break;
                }
                let mut guard = lock(&writer);
                let Some(out) = guard.as_mut() else { break };
                match fifo.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            lock(&writer).take();
        })
        .map_err(ShimError::io("spawn stdin copy thread"))?;
    Ok(holder)
}

fn spawn_output_copy(mut from: File, mut to: File) -> Result<()> {
    thread::Builder::new()
        .name("stdout".into())
        .spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match from.read(&mut buf) {
                    // EIO: the pty's last slave closed.
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        })
        .map_err(ShimError::io("spawn output copy thread"))?;
    Ok(())
}

/// A pipe whose reading end a thread copies into `log` as `stream`; returns the writing end.
fn log_pipe(log: &Arc<CriLog>, stream: &'static str) -> Result<OwnedFd> {
    let (read_end, write_end) = pipe().map_err(|errno| ShimError::Io {
        context: format!("create {stream} pipe"),
        source: errno.into(),
    })?;
    log.spawn_copy(File::from(read_end), stream)?;
    Ok(write_end)
}

/// Sets up non-terminal stdio: the fds for the child, and what the shim keeps.
pub fn plain(paths: &StdioPaths) -> Result<(ChildStdio, ProcessIo)> {
    let mut io = ProcessIo::default();
    let stdin = if paths.stdin.is_empty() {
        dev_null()?
    } else {
        let (read_end, write_end) = pipe().map_err(|errno| ShimError::Io {
            context: "create stdin pipe".into(),
            source: errno.into(),
        })?;
        let writer: SharedWriter = Arc::new(Mutex::new(Some(File::from(write_end))));
        let holder = spawn_stdin_copy(paths.stdin.clone(), Arc::clone(&writer))?;
        io.stdin = Some((writer, paths.stdin.clone(), holder));
        read_end
    };
    let (stdout, stderr) = if paths.stdout.starts_with(crilog::SCHEME) {
        let log = CriLog::open_uri(&paths.stdout)?;
        let stdout = log_pipe(&log, "stdout")?;
        let stderr = if paths.stderr == paths.stdout {
            log_pipe(&log, "stderr")?
        } else {
            open_output(&paths.stderr, "stderr")?
        };
        io.log = Some(log);
        (stdout, stderr)
    } else {
        (
            open_output(&paths.stdout, "stdout")?,
            open_output(&paths.stderr, "stderr")?,
        )
    };
    Ok((
        ChildStdio {
            stdin,
            stdout,
            stderr,
        },
        io,
    ))
}

/// A listening console socket for one process; the container's init sends the pty master to it.
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn bind(path: PathBuf) -> Result<Self> {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(ShimError::io(format!(
            "bind console socket {}",
            path.display()
        )))?;
        Ok(ConsoleSocket { path, listener })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives the pty master (the helper has exited, so it was sent already), and joins it to
    /// the fifos.
    pub fn finish(self, paths: &StdioPaths) -> Result<ProcessIo> {
        self.listener
            .set_nonblocking(true)
            .map_err(ShimError::io("console socket"))?;
        let (stream, _) = self.listener.accept().map_err(ShimError::io(
            "console socket: the container sent no terminal",
        ))?;
        stream
            .set_nonblocking(false)
            .map_err(ShimError::io("console socket"))?;
        let master = receive_fd(stream.as_raw_fd())?;
        let master = Arc::new(File::from(master));
        let mut io = ProcessIo {
            stdin: None,
            console: Some(Arc::clone(&master)),
            log: None,
        };
        if paths.stdout.starts_with(crilog::SCHEME) {
            let log = CriLog::open_uri(&paths.stdout)?;
            let reader = master
                .try_clone()
                .map_err(ShimError::io("dup pty master"))?;
            log.spawn_copy(reader, "stdout")?;
            io.log = Some(log);
        } else if !paths.stdout.is_empty() {
            let out = File::from(open_output(&paths.stdout, "stdout")?);
            let reader = master
                .try_clone()
                .map_err(ShimError::io("dup pty master"))?;
            spawn_output_copy(reader, out)?;
        }
        if !paths.stdin.is_empty() {
            let writer = master
                .try_clone()
                .map_err(ShimError::io("dup pty master"))?;
            let shared: SharedWriter = Arc::new(Mutex::new(Some(writer)));
            let holder = spawn_stdin_copy(paths.stdin.clone(), Arc::clone(&shared))?;
            io.stdin = Some((shared, paths.stdin.clone(), holder));
        }
        Ok(io)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn receive_fd(socket: i32) -> Result<OwnedFd> {
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([i32; 1]);
    let msg = recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|errno| ShimError::Io {
        context: "receive pty master".into(),
        source: errno.into(),
    })?;
    for cmsg in msg.cmsgs().map_err(|errno| ShimError::Io {
        context: "receive pty master".into(),
        source: errno.into(),
    })? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this fd for us; nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(ShimError::Io {
        context: "receive pty master".into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no fd in message"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stdin fifo at `fifo` and the process's stdio reading it.
    fn stdin_from(fifo: &Path) -> (ChildStdio, ProcessIo) {
        nix::unistd::mkfifo(fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let paths = StdioPaths {
            stdin: fifo.display().to_string(),
            ..Default::default()
        };
        plain(&paths).expect("stdio")
    }

    /// A client closing its end does not end the process's stdin; a second client's bytes
    /// still arrive; CloseIO ends it.
    #[test]
    fn stdin_stays_open_between_clients_until_close_io() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("stdin");
        let (child, mut io) = stdin_from(&fifo);
        let mut process = File::from(child.stdin);
        for client in ["first\n", "second\n"] {
            let mut writer = OpenOptions::new().write(true).open(&fifo).expect("writer");
            writer.write_all(client.as_bytes()).expect("write");
            drop(writer);
            let mut line = vec![0u8; client.len()];
            process
                .read_exact(&mut line)
                .expect("the client's bytes, not EOF");
            assert_eq!(line, client.as_bytes());
        }
        io.close_stdin();
        let mut rest = Vec::new();
        process.read_to_end(&mut rest).expect("EOF after CloseIO");
        assert!(rest.is_empty());
    }

    /// CloseIO right after a write: the bytes reach the process before its EOF, whichever of the
    /// copy thread and CloseIO gets to them first.
    #[test]
    fn close_stdin_delivers_what_was_written_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        for round in 0..200 {
            let fifo = dir.path().join(format!("stdin-{round}"));
            let (child, mut io) = stdin_from(&fifo);
            let mut writer = OpenOptions::new().write(true).open(&fifo).expect("writer");
            writer.write_all(b"line\n").expect("write");
            io.close_stdin();
            let mut seen = String::new();
            File::from(child.stdin)
                .read_to_string(&mut seen)
                .expect("read");
            assert_eq!(seen, "line\n", "round {round}");
        }
    }
}
