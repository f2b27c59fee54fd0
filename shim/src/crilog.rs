//! Container logs in the CRI format, written by the shim itself so they keep flowing while the
//! CRI daemon restarts: `<RFC3339Nano> <stdout|stderr> <F|P> <text>\n` per line, a line longer
//! than [`MAX_LINE`] split into `P` (partial) records ending with an `F` one (as containerd's CRI
//! plugin does with its default `max_container_log_line_size`).
//!
//! A process asks for it with `cri-log:///absolute/path` as its stdout and stderr; both streams
//! share one file. ReopenContainerLog (the kubelet rotated the file away) reopens the path.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
    time::SystemTime,
};

use crate::error::{Result, ShimError};

pub const SCHEME: &str = "cri-log://";
/// The longest record payload; longer lines are split.
pub const MAX_LINE: usize = 16 * 1024;

/// One container log file, shared by the process's output streams.
pub struct CriLog {
    path: PathBuf,
    file: Mutex<File>,
}

fn open(path: &Path) -> Result<File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(ShimError::io(format!(
            "create log dir {}",
            parent.display()
        )))?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(ShimError::io(format!(
            "open container log {}",
            path.display()
        )))
}

impl CriLog {
    /// Opens (appending, creating it and its directory) the log named by a `cri-log://` URI.
    pub fn open_uri(uri: &str) -> Result<Arc<Self>> {
        let path = uri.strip_prefix(SCHEME).unwrap_or(uri);
        if !Path::new(path).is_absolute() {
            return Err(ShimError::InvalidArgument {
                what: "stdout".into(),
                reason: format!("{uri:?}: the log path must be absolute"),
            });
        }
        let path = PathBuf::from(path);
        let file = open(&path)?;
        Ok(Arc::new(CriLog {
            path,
            file: Mutex::new(file),
        }))
    }

    /// Starts writing to a fresh file at the same path (the old one was renamed away).
    pub fn reopen(&self) -> Result<()> {
        let file = open(&self.path)?;
        *self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = file;
        Ok(())
    }

    fn write_record(&self, stream: &str, full: bool, text: &[u8]) {
        let record = record(SystemTime::now(), stream, full, text);
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(err) = file.write_all(&record) {
            tracing::warn!(path = %self.path.display(), error = %err, "write container log");
        }
    }

    /// Copies `from` into the log as `stream` records until EOF, on its own thread.
    pub fn spawn_copy(self: &Arc<Self>, mut from: File, stream: &'static str) -> Result<()> {
        let log = Arc::clone(self);
        thread::Builder::new()
            .name(stream.into())
            .spawn(move || {
                let mut splitter = Splitter::default();
                let mut buf = [0u8; 8192];
                loop {
                    match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => splitter
                            .push(&buf[..n], |full, text| log.write_record(stream, full, text)),
                    }
                    // Text without a newline that nothing follows soon (a prompt, `echo -n`)
                    // is logged as a partial record, so a follower of the log (Attach, `kubectl
                    // logs -f`) sees it now rather than at the next newline.
                    if splitter.has_pending() && !readable_within(&from, PARTIAL_WAIT_MS) {
                        splitter.flush_partial(|full, text| log.write_record(stream, full, text));
                    }
                }
                splitter.finish(|full, text| log.write_record(stream, full, text));
            })
            .map_err(ShimError::io("spawn log copy thread"))?;
        Ok(())
    }
}

/// How long text without a newline may wait for the rest of its line before it is logged as a
/// partial record.
const PARTIAL_WAIT_MS: i32 = 20;

/// Whether `file` has data to read within `ms` milliseconds.
fn readable_within(file: &File, ms: i32) -> bool {
    use std::os::fd::AsRawFd;
    let mut poll = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd on the stack, for an fd `file` keeps open.
    let ready = unsafe { libc::poll(&mut poll, 1, ms) };
    ready > 0
}

/// Splits a byte stream into log records: a complete line is `F`; a line reaching [`MAX_LINE`]
/// without a newline is emitted as `P` and continued.
#[derive(Default)]
pub struct Splitter {
    pending: Vec<u8>,
}

impl Splitter {
    pub fn push(&mut self, mut data: &[u8], mut emit: impl FnMut(bool, &[u8])) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(end) if self.pending.len() + end <= MAX_LINE => {
                    self.pending.extend_from_slice(&data[..end]);
                    emit(true, &self.pending);
                    self.pending.clear();
                    data = &data[end + 1..];
                }
                _ => {
                    let room = MAX_LINE - self.pending.len();
                    let take = room.min(data.len());
                    self.pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.pending.len() == MAX_LINE {
                        emit(false, &self.pending);
                        self.pending.clear();
                    }
                }
            }
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Text so far without its newline, as a partial record; the line goes on in the next.
    pub fn flush_partial(&mut self, mut emit: impl FnMut(bool, &[u8])) {
        if !self.pending.is_empty() {
            emit(false, &self.pending);
            self.pending.clear();
        }
    }

    /// At EOF, text after the last newline is a record of its own.
    pub fn finish(&mut self, mut emit: impl FnMut(bool, &[u8])) {
        if !self.pending.is_empty() {
            emit(true, &self.pending);
            self.pending.clear();
        }
    }
}

/// One record: RFC 3339 time with nanoseconds in UTC, stream, tag, text, newline.
pub fn record(time: SystemTime, stream: &str, full: bool, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 48);
    out.extend_from_slice(rfc3339_nano(time).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_bytes());
    out.extend_from_slice(if full { b" F " } else { b" P " });
    out.extend_from_slice(text);
    out.push(b'\n');
    out
}

/// `2026-11-26T14:30:05.123456789Z`.
pub fn rfc3339_nano(time: SystemTime) -> String {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_nanos()
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<(bool, Vec<u8>)> {
        let mut out = Vec::new();
        let mut splitter = Splitter::default();
        for chunk in chunks {
            splitter.push(chunk, |full, text| out.push((full, text.to_vec())));
        }
        splitter.finish(|full, text| out.push((full, text.to_vec())));
        out
    }

    #[test]
    fn lines_across_reads_and_a_trailing_fragment() {
        let records = split(&[b"hel", b"lo\nwor", b"ld\n\nlast"]);
        assert_eq!(
            records,
            vec![
                (true, b"hello".to_vec()),
                (true, b"world".to_vec()),
                (true, b"".to_vec()),
                (true, b"last".to_vec()),
            ]
        );
    }

    #[test]
    fn long_lines_become_partial_records() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut data = long.clone();
        data.push(b'\n');
        let records = split(&[&data[..100], &data[100..]]);
        assert_eq!(records.len(), 3);
        assert_eq!(records[0], (false, vec![b'x'; MAX_LINE]));
        assert_eq!(records[1], (false, vec![b'x'; MAX_LINE]));
        assert_eq!(records[2], (true, vec![b'x'; 10]));
        // Exactly MAX_LINE then newline: one full record, no empty partial.
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        assert_eq!(split(&[&exact]), vec![(true, vec![b'y'; MAX_LINE])]);
    }

    #[test]
    fn a_flushed_fragment_is_partial_and_its_line_goes_on() {
        let mut splitter = Splitter::default();
        let mut out = Vec::new();
        splitter.push(b"prompt> ", |full, text| out.push((full, text.to_vec())));
        assert!(splitter.has_pending() && out.is_empty());
        splitter.flush_partial(|full, text| out.push((full, text.to_vec())));
        splitter.push(b"typed\n", |full, text| out.push((full, text.to_vec())));
        assert_eq!(
            out,
            vec![(false, b"prompt> ".to_vec()), (true, b"typed".to_vec())]
        );
        assert!(!splitter.has_pending());
    }

    #[test]
    fn record_format() {
        let time = SystemTime::UNIX_EPOCH + Duration::new(1_795_703_405, 7);
        assert_eq!(
            String::from_utf8(record(time, "stderr", false, b"a b")).expect("utf8"),
            "2026-11-26T14:30:05.000000007Z stderr P a b\n"
        );
        assert_eq!(
            rfc3339_nano(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn reopen_starts_a_new_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pod/c/0.log");
        let log = CriLog::open_uri(&format!("{SCHEME}{}", path.display())).expect("open");
        log.write_record("stdout", true, b"one");
        std::fs::rename(&path, dir.path().join("rotated")).expect("rotate");
        log.reopen().expect("reopen");
        log.write_record("stdout", true, b"two");
        let now = std::fs::read_to_string(&path).expect("read");
        assert!(now.ends_with(" stdout F two\n"), "{now}");
        let old = std::fs::read_to_string(dir.path().join("rotated")).expect("read");
        assert!(old.ends_with(" stdout F one\n"), "{old}");
        assert!(CriLog::open_uri("cri-log://relative/0.log").is_err());
    }
}
