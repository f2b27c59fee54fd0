//! Work inside a pod's network namespace without leaving any of ingotd's threads there, and the
//! pod's interface counters (`/proc/net/dev` as the namespace sees it).

use std::path::Path;

use crate::CriError;

/// Runs `work` on a thread of its own that enters `netns` (the host's when None) and ends there:
/// a socket keeps the namespace it was made in, and no other work ever runs on a thread that
/// left the host's namespace.
pub fn run_in<T: Send>(
    netns: Option<&Path>,
    what: &str,
    work: impl FnOnce() -> Result<T, CriError> + Send,
) -> Result<T, CriError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(netns) = netns {
                    let file = std::fs::File::open(netns)
                        .map_err(CriError::io(format!("open {}", netns.display())))?;
                    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(
                        |errno| CriError::Io {
                            context: format!("enter {} for {what}", netns.display()),
                            source: errno.into(),
                        },
                    )?;
                }
                work()
            })
            .join()
            .map_err(|_| CriError::Io {
                context: format!("{what} thread"),
                source: std::io::Error::other("panicked"),
            })?
    })
}

/// One interface's counters, as `/proc/net/dev` gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// The interfaces of `/proc/net/dev` text but loopback, in the file's order.
pub fn parse_net_dev(text: &str) -> Vec<Interface> {
    text.lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            let fields: Vec<u64> = counters
                .split_whitespace()
                .map(|f| f.parse().ok())
                .collect::<Option<_>>()?;
            // rx: bytes packets errs drop fifo frame compressed multicast; tx: the same eight.
            if name == "lo" || fields.len() < 16 {
                return None;
            }
            Some(Interface {
                name: name.to_string(),
                rx_bytes: fields[0],
                rx_packets: fields[1],
                rx_errors: fields[2],
                rx_dropped: fields[3],
                tx_bytes: fields[8],
                tx_packets: fields[9],
                tx_errors: fields[10],
                tx_dropped: fields[11],
            })
        })
        .collect()
}

/// The counters of the interfaces in `netns` (a bind-mounted namespace file).
pub fn interfaces(netns: &Path) -> Result<Vec<Interface>, CriError> {
    run_in(Some(netns), "network stats", || {
        // thread-self: the calling thread's namespace, not the process's.
        let path = "/proc/thread-self/net/dev";
        std::fs::read_to_string(path)
            .map(|text| parse_net_dev(&text))
            .map_err(CriError::io(format!("read {path} in {}", netns.display())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     140       2    0    0    0     0          0         0      140       2    0    0    0     0       0          0
  eth0:    9876      54    1    2    0     0          0         0     4321      33    3    4    0     0       0          0
";

    #[test]
    fn loopback_is_left_out_and_fields_land_in_place() {
        assert_eq!(
            parse_net_dev(NET_DEV),
            vec![Interface {
                name: "eth0".into(),
                rx_bytes: 9876,
                rx_packets: 54,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 4321,
                tx_packets: 33,
                tx_errors: 3,
                tx_dropped: 4,
            }]
        );
    }

    #[test]
    fn the_host_namespace_has_loopback_at_least() {
        let text = run_in(None, "test", || {
            std::fs::read_to_string("/proc/thread-self/net/dev").map_err(CriError::io("read"))
        })
        .expect("read");
        assert!(text.contains("lo:"), "{text}");
    }
}
