//! The shim's own log when a daemon other than containerd starts it (ingotd names a file in
//! [`LOG_ENV`]; containerd gives a `log` fifo instead). Every log record goes there (tracing
//! events arrive as `log` records, their fields in the text), and so does the shim's stderr
//! (a panic, a helper's complaint). The file is bounded: past [`MAX_BYTES`] it is renamed to
//! `<file>.1` (the one older file kept) and a new one begun.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

/// The log file a shim started by ingotd writes (inherited by the serving process).
pub const LOG_ENV: &str = "INGOT_SHIM_LOG";
/// The most one log file holds before it is rotated.
pub const MAX_BYTES: u64 = 1 << 20;

/// The log file path from [`LOG_ENV`], when set.
pub fn path_from_env() -> Option<PathBuf> {
    std::env::var_os(LOG_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Points the process's stderr at `file`, so what is written there lands in the log too.
fn redirect_stderr(file: &File) {
    // SAFETY: dup2 onto fd 2 replaces stderr; `file` stays open for the call.
    unsafe {
        libc::dup2(file.as_raw_fd(), libc::STDERR_FILENO);
    }
}

struct Open {
    file: File,
    size: u64,
}

/// A size-bounded log file.
pub struct BoundedLog {
    path: PathBuf,
    max_bytes: u64,
    open: Mutex<Open>,
}

impl BoundedLog {
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<Self> {
        let file = open(path)?;
        let size = file.metadata()?.len();
        let log = BoundedLog {
            path: path.to_path_buf(),
            max_bytes,
            open: Mutex::new(Open { file, size }),
        };
        log.with_open(|open| {
            redirect_stderr(&open.file);
            log.rotate_if_full(open);
        });
        Ok(log)
    }

    fn with_open<T>(&self, f: impl FnOnce(&mut Open) -> T) -> T {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut open)
    }

    /// Appends one line (a newline is added).
    pub fn write_line(&self, line: &str) {
        self.with_open(|open| {
            let mut bytes = Vec::with_capacity(line.len() + 1);
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
            if open.file.write_all(&bytes).is_ok() {
                open.size += bytes.len() as u64;
            }
            self.rotate_if_full(open);
        });
    }

    /// Renames a full file to `<file>.1` and starts a new one. Lines written through stderr
    /// count when the next record is written (they are rare: panics, helpers' messages).
    fn rotate_if_full(&self, open: &mut Open) {
        if let Ok(metadata) = open.file.metadata() {
            open.size = metadata.len();
        }
        if open.size < self.max_bytes {
            return;
        }
        let old = self.path.with_extension("log.1");
        if std::fs::rename(&self.path, &old).is_err() {
            return;
        }
        if let Ok(file) = open_fresh(&self.path) {
            redirect_stderr(&file);
            open.file = file;
            open.size = 0;
        }
    }
}

fn open_fresh(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
}

/// The most a library's records may say below debug: libcgroups reports, at every container
/// create, which manager it uses and each v1 controller the host lacks, and libcontainer
/// its fd clean-up; lines that say the same for every container of the node.
fn library_level(target: &str) -> log::LevelFilter {
    if target.starts_with("libcgroups") {
        log::LevelFilter::Error
    } else if target.starts_with("libcontainer") {
        log::LevelFilter::Warn
    } else {
        log::LevelFilter::Trace
    }
}

impl log::Log for BoundedLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        let max = log::max_level();
        let max = if max >= log::LevelFilter::Debug {
            max
        } else {
            max.min(library_level(metadata.target()))
        };
        metadata.level() <= max
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        self.write_line(&format!(
            "{} {:<5} {}: {}",
            crate::crilog::rfc3339_nano(SystemTime::now()),
            record.level(),
            record.target(),
            record.args()
        ));
    }

    fn flush(&self) {
        self.with_open(|open| {
            let _ = open.file.flush();
        });
    }
}

/// Makes the file at `path` the shim's log (records at `level` and above) and its stderr.
pub fn init(path: &Path, level: log::LevelFilter) -> std::io::Result<()> {
    let log = BoundedLog::open(path, MAX_BYTES)?;
    log::set_boxed_logger(Box::new(log)).map_err(std::io::Error::other)?;
    log::set_max_level(level);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_past_its_bound_and_keeps_one_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shim.log");
        // Stderr of the test process is redirected by open(); keep it for the test runner.
        // SAFETY: plain dup of fd 2, restored below.
        let saved = unsafe { libc::dup(libc::STDERR_FILENO) };
        let log = BoundedLog::open(&path, 100).expect("open");
        for i in 0..30 {
            log.write_line(&format!("line {i:02}"));
        }
        // SAFETY: restores the saved stderr.
        unsafe {
            libc::dup2(saved, libc::STDERR_FILENO);
            libc::close(saved);
        }
        let current = std::fs::read_to_string(&path).expect("current");
        let old = std::fs::read_to_string(dir.path().join("shim.log.1")).expect("old");
        assert!(current.len() < 100, "{current:?}");
        assert!(old.len() >= 100 && old.len() < 120, "{old:?}");
        assert!(current.ends_with("line 29\n"), "{current:?}");
        // Nothing older than one rotation is kept, and no line is split across files.
        assert!(!dir.path().join("shim.log.2").exists());
        for text in [&current, &old] {
            assert!(text.lines().all(|l| l.starts_with("line ")), "{text:?}");
        }
    }

    #[test]
    fn library_noise_stays_out_below_debug() {
        let record = |level, target| log::Metadata::builder().level(level).target(target).build();
        let dir = tempfile::tempdir().expect("tempdir");
        // SAFETY: plain dup of fd 2, restored below (open() redirects stderr).
        let saved = unsafe { libc::dup(libc::STDERR_FILENO) };
        let log = BoundedLog::open(&dir.path().join("shim.log"), 1000).expect("open");
        // SAFETY: restores the test runner's stderr.
        unsafe {
            libc::dup2(saved, libc::STDERR_FILENO);
            libc::close(saved);
        }
        log::set_max_level(log::LevelFilter::Info);
        use log::{Level, Log};
        assert!(log.enabled(&record(Level::Info, "containerd_shim_ingot_v2::task")));
        assert!(!log.enabled(&record(Level::Warn, "libcgroups::v1::manager")));
        assert!(log.enabled(&record(Level::Error, "libcgroups::v1::manager")));
        assert!(!log.enabled(&record(Level::Info, "libcontainer::syscall::linux")));
        assert!(log.enabled(&record(Level::Warn, "libcontainer::process")));
        log::set_max_level(log::LevelFilter::Debug);
        assert!(log.enabled(&record(Level::Info, "libcgroups::common")));
    }
}
