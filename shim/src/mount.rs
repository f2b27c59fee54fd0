//! Mounting the rootfs containerd describes (overlay from its snapshotter, or a bind mount),
//! in the shim process itself: no fork, so nothing for the reaper to race.

use std::path::Path;

use nix::mount::MsFlags;

/// Splits mount options into flags and the data string the filesystem parses.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        match option.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "defaults" => {}
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

pub fn mount(fs_type: &str, source: &str, options: &[String], target: &Path) -> Result<(), String> {
    let (flags, data) = parse_options(options);
    // The kernel takes one page of mount data; containerd compacts longer overlay lowerdir
    // lists with a chdir, which a multi-threaded process cannot do safely.
    if data.len() >= 4096 {
        return Err(format!(
            "{fs_type} mount options are {} bytes, over the kernel's one-page limit",
            data.len()
        ));
    }
    let fs_type = (!fs_type.is_empty() && !flags.contains(MsFlags::MS_BIND)).then_some(fs_type);
    let data = (!data.is_empty()).then_some(data.as_str());
    nix::mount::mount(Some(source), target, fs_type, flags, data)
        .map_err(|errno| format!("mount {source} on {}: {errno}", target.display()))?;
    if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(|errno| format!("remount {} read-only: {errno}", target.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_split_into_flags_and_data() {
        let options: Vec<String> = [
            "index=off",
            "ro",
            "lowerdir=/a:/b",
            "upperdir=/u",
            "workdir=/w",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (flags, data) = parse_options(&options);
        assert_eq!(flags, MsFlags::MS_RDONLY);
        assert_eq!(data, "index=off,lowerdir=/a:/b,upperdir=/u,workdir=/w");
    }

    #[test]
    fn bind_flags() {
        let (flags, data) = parse_options(&["rbind".to_string(), "rw".to_string()]);
        assert_eq!(flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert!(data.is_empty());
    }
}
