//! OOM notifications for TaskOOM events: one thread blocked in epoll_wait over every
//! container's cgroup v1 OOM eventfd (`cgroup.event_control` on `memory.oom_control`) or, on
//! cgroup v2, an inotify watch on `memory.events` (its `oom_kill` count). No timers, no polling.

use std::{
    collections::HashMap,
    fs,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
};

use nix::sys::{
    epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout},
    eventfd::{EfdFlags, EventFd},
    inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor},
};

use crate::error::{Result, ShimError};

const INOTIFY_TOKEN: u64 = u64::MAX;

/// A cgroup v1 registration: the eventfd, and `memory.oom_control` kept open while watched.
struct Watched {
    id: String,
    eventfd: EventFd,
    _oom_control: fs::File,
    memory_dir: PathBuf,
}

struct V2Watch {
    id: String,
    events: PathBuf,
    oom_kills: u64,
}

#[derive(Default)]
struct Registry {
    next_token: u64,
    by_token: HashMap<u64, Watched>,
    v2: HashMap<WatchDescriptor, V2Watch>,
}

/// The watcher; `watch` a container after create, `unwatch` it at delete.
pub struct OomWatcher {
    epoll: Epoll,
    inotify: Inotify,
    registry: Mutex<Registry>,
}

fn sys(context: &str) -> impl FnOnce(nix::errno::Errno) -> ShimError + '_ {
    move |errno| ShimError::Io {
        context: context.to_string(),
        source: errno.into(),
    }
}

/// The `oom_kill` count of a cgroup v2 `memory.events` file.
pub fn oom_kill_count(memory_events: &str) -> u64 {
    memory_events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

impl OomWatcher {
    /// Starts the watcher thread; `on_oom(container_id)` runs for each OOM kill.
    pub fn start(on_oom: impl Fn(&str) + Send + 'static) -> Result<Arc<Self>> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(sys("epoll_create"))?;
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(sys("inotify_init"))?;
        epoll
            .add(
                inotify.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, INOTIFY_TOKEN),
            )
            .map_err(sys("watch inotify"))?;
        let watcher = Arc::new(OomWatcher {
            epoll,
            inotify,
            registry: Mutex::default(),
        });
        let thread_watcher = Arc::clone(&watcher);
        thread::Builder::new()
            .name("oom".into())
            .spawn(move || thread_watcher.run(on_oom))
            .map_err(ShimError::io("spawn oom thread"))?;
        Ok(watcher)
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Watches the memory cgroup at `memory_dir` (v1: `/sys/fs/cgroup/memory/<path>`, v2: the
    /// unified cgroup directory) for container `id`.
    pub fn watch(&self, id: &str, memory_dir: &Path) -> Result<()> {
        let events = memory_dir.join("memory.events");
        if events.exists() {
            let wd = self
                .inotify
                .add_watch(&events, AddWatchFlags::IN_MODIFY)
                .map_err(sys("inotify_add_watch memory.events"))?;
            let oom_kills = oom_kill_count(&fs::read_to_string(&events).unwrap_or_default());
            self.registry().v2.insert(
                wd,
                V2Watch {
                    id: id.to_string(),
                    events,
                    oom_kills,
                },
            );
            return Ok(());
        }
        let oom_control = memory_dir.join("memory.oom_control");
        let control = fs::File::open(&oom_control)
            .map_err(ShimError::io(format!("open {}", oom_control.display())))?;
        let eventfd =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC).map_err(sys("eventfd"))?;
        let registration = format!("{} {}", eventfd.as_raw_fd(), control.as_raw_fd());
        fs::write(memory_dir.join("cgroup.event_control"), registration).map_err(ShimError::io(
            format!("register OOM eventfd in {}", memory_dir.display()),
        ))?;
        let mut registry = self.registry();
        registry.next_token += 1;
        let token = registry.next_token;
        self.epoll
            .add(eventfd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))
            .map_err(sys("watch OOM eventfd"))?;
        registry.by_token.insert(
            token,
            Watched {
                id: id.to_string(),
                eventfd,
                _oom_control: control,
                memory_dir: memory_dir.to_path_buf(),
            },
        );
        Ok(())
    }

    /// Stops watching container `id`.
    pub fn unwatch(&self, id: &str) {
        let mut registry = self.registry();
        let tokens: Vec<u64> = registry
            .by_token
            .iter()
            .filter(|(_, w)| w.id == id)
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            if let Some(watched) = registry.by_token.remove(&token) {
                let _ = self.epoll.delete(watched.eventfd.as_fd());
            }
        }
        let wds: Vec<WatchDescriptor> = registry
            .v2
            .iter()
            .filter(|(_, w)| w.id == id)
            .map(|(wd, _)| *wd)
            .collect();
        for wd in wds {
            registry.v2.remove(&wd);
            let _ = self.inotify.rm_watch(wd);
        }
    }

    fn run(&self, on_oom: impl Fn(&str)) {
        let mut events = [EpollEvent::empty(); 16];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => {
                    tracing::warn!(error = %err, "OOM watcher stopped");
                    return;
                }
            };
            for event in &events[..n] {
                for id in self.fired(event.data()) {
                    tracing::info!(container_id = %id, "OOM kill");
                    on_oom(&id);
                }
            }
        }
    }

    /// Containers that saw an OOM kill, from one readable token.
    fn fired(&self, token: u64) -> Vec<String> {
        let mut registry = self.registry();
        if token == INOTIFY_TOKEN {
            let mut fired = Vec::new();
            while let Ok(events) = self.inotify.read_events() {
                if events.is_empty() {
                    break;
                }
                for event in events {
                    if let Some(watch) = registry.v2.get_mut(&event.wd) {
                        let text = fs::read_to_string(&watch.events).unwrap_or_default();
                        let count = oom_kill_count(&text);
                        if count > watch.oom_kills {
                            watch.oom_kills = count;
                            fired.push(watch.id.clone());
                        }
                    }
                }
            }
            return fired;
        }
        let Some(watched) = registry.by_token.get(&token) else {
            return Vec::new();
        };
        let mut buf = [0u8; 8];
        let _ = nix::unistd::read(watched.eventfd.as_fd().as_raw_fd(), &mut buf);
        // The eventfd also fires when the cgroup is removed; then it is not an OOM.
        if !watched.memory_dir.join("cgroup.event_control").exists() {
            if let Some(watched) = registry.by_token.remove(&token) {
                let _ = self.epoll.delete(watched.eventfd.as_fd());
            }
            return Vec::new();
        }
        vec![watched.id.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oom_kill_count() {
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(oom_kill_count(events), 2);
        assert_eq!(oom_kill_count(""), 0);
    }
}
