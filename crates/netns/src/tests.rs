//! These create real namespaces and mounts (root); every test removes what it made.

use std::os::unix::fs::MetadataExt;

use super::*;

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat").ino()
}

fn mounted_at(path: &Path) -> bool {
    let target = path.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(target.as_str()))
}

#[test]
fn pins_new_namespaces_and_removes_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ns_dir = dir.path().join("ns");
    let sysctl = |name: &str, value: &str| Sysctl {
        name: name.into(),
        path: name.replace('.', "/"),
        value: value.into(),
    };
    let pinned = pin(
        &ns_dir,
        &[Kind::Net, Kind::Ipc, Kind::Uts],
        Some("pod-a"),
        &[
            sysctl("net.ipv4.ip_unprivileged_port_start", "81"),
            sysctl("kernel.shmmni", "1000"),
        ],
    )
    .expect("pin");
    for kind in [Kind::Net, Kind::Ipc, Kind::Uts] {
        let path = pinned.path(kind).expect("pinned");
        assert!(mounted_at(&path), "{} not mounted", path.display());
        let own = PathBuf::from(format!("/proc/self/ns/{}", kind.name()));
        assert_ne!(inode(&path), inode(&own), "{} is the host's", kind.name());
    }
    // Inside: only a loopback device, and the pod's hostname in the UTS namespace.
    let net = pinned.path(Kind::Net).expect("net");
    // /sys shows this mount namespace's view (the host's); /proc/thread-self/net is the thread's.
    let devices = in_netns(&net, || {
        std::fs::read_to_string("/proc/thread-self/net/dev")
    })
    .expect("enter")
    .expect("read net/dev");
    let names: Vec<&str> = devices
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(str::trim))
        .collect();
    assert_eq!(names, vec!["lo"], "{devices}");
    let uts = std::fs::File::open(pinned.path(Kind::Uts).expect("uts")).expect("open");
    let hostname = std::thread::spawn(move || {
        nix::sched::setns(&uts, CloneFlags::CLONE_NEWUTS).expect("setns");
        nix::unistd::gethostname().expect("hostname")
    })
    .join()
    .expect("thread");
    assert_eq!(hostname.to_string_lossy(), "pod-a");
    // The sysctls are set in the new namespaces, not on the host.
    let port_start = in_netns(&net, || {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    })
    .expect("enter")
    .expect("read");
    assert_eq!(port_start.trim(), "81");
    let ipc = std::fs::File::open(pinned.path(Kind::Ipc).expect("ipc")).expect("open");
    let shmmni = std::thread::spawn(move || {
        nix::sched::setns(&ipc, CloneFlags::CLONE_NEWIPC).expect("setns");
        std::fs::read_to_string("/proc/sys/kernel/shmmni").expect("read")
    })
    .join()
    .expect("thread");
    assert_eq!(shmmni.trim(), "1000");
    let host = std::fs::read_to_string("/proc/sys/kernel/shmmni").expect("host");
    assert_ne!(host.trim(), "1000", "set on the host");

    remove(&pinned);
    assert!(!ns_dir.exists());
    assert!(!mounted_at(&ns_dir.join("net")));
    remove(&pinned); // idempotent

    // A sysctl the kernel refuses fails the whole pin, naming it, and leaves nothing mounted.
    let refused = pin(
        &ns_dir,
        &[Kind::Net],
        None,
        &[sysctl("net.ipv4.no_such_sysctl", "1")],
    )
    .expect_err("no such sysctl");
    assert!(
        matches!(&refused, NetnsError::Sysctl { name, .. } if name == "net.ipv4.no_such_sysctl"),
        "{refused}"
    );
    assert!(refused.to_string().contains("no such sysctl"), "{refused}");
    assert!(!mounted_at(&ns_dir.join("net")));
}

#[test]
fn loopback_plugin_brings_lo_up_and_errors_name_the_plugin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pinned = pin(&dir.path().join("ns"), &[Kind::Net], None, &[]).expect("pin");
    let net = pinned.path(Kind::Net).expect("net");
    let plugin_dirs = vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")];
    let config = serde_json::json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"});
    let call = CniCall {
        plugin_dirs: &plugin_dirs,
        command: "ADD",
        container_id: "pod-lo",
        netns: &net,
        ifname: "lo",
        args: "",
        config: &config,
    };
    run_plugin(&call).expect("loopback ADD");
    let up = in_netns(&net, || {
        nix::ifaddrs::getifaddrs()
            .map(|addrs| {
                addrs.into_iter().any(|a| {
                    a.interface_name == "lo"
                        && a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
                })
            })
            .unwrap_or(false)
    })
    .expect("enter");
    assert!(up, "lo is not up after the loopback plugin");
    run_plugin(&CniCall {
        command: "DEL",
        ..call
    })
    .expect("loopback DEL");

    let missing = serde_json::json!({"cniVersion": "1.0.0", "name": "x", "type": "nosuchplugin"});
    let err = run_plugin(&CniCall {
        config: &missing,
        ..call
    })
    .expect_err("missing plugin");
    assert!(err.to_string().contains("nosuchplugin"), "{err}");
    // A plugin's own refusal (an unsupported spec version) comes back with its message. Only
    // plugins that act inside the test's namespace are run: bridge would touch the host's.
    let bad = serde_json::json!({"cniVersion": "9.9.9", "name": "x", "type": "loopback"});
    let err = run_plugin(&CniCall {
        config: &bad,
        ..call
    })
    .expect_err("bad version");
    let text = err.to_string();
    assert!(text.starts_with("CNI plugin loopback ADD:"), "{text}");
    assert!(text.contains("9.9.9"), "{text}");
    remove(&pinned);
}

#[test]
fn plugins_get_the_daemons_environment_and_the_cni_variables() {
    // bridge with ipMasq and portmap find iptables on PATH: a plugin run with an empty
    // environment fails "executable file not found in $PATH".
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = dir.path().join("env-report");
    std::fs::write(
        &plugin,
        "#!/bin/sh\ncat >/dev/null\nprintf '{\"cniVersion\":\"1.0.0\",\"path\":\"%s\",\"command\":\"%s\",\"ifname\":\"%s\",\"gomaxprocs\":\"%s\"}' \"$PATH\" \"$CNI_COMMAND\" \"$CNI_IFNAME\" \"$GOMAXPROCS\"\n",
    )
    .expect("plugin");
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let plugin_dirs = vec![dir.path().to_path_buf()];
    let config = serde_json::json!({"cniVersion": "1.0.0", "name": "env", "type": "env-report"});
    let result = run_plugin(&CniCall {
        plugin_dirs: &plugin_dirs,
        command: "ADD",
        container_id: "pod-env",
        netns: Path::new("/proc/self/ns/net"),
        ifname: "eth0",
        args: "",
        config: &config,
    })
    .expect("ADD");
    let path = std::env::var("PATH").unwrap_or_else(|_| PLUGIN_PATH.to_string());
    assert_eq!(result["path"], path.as_str(), "{result}");
    assert_eq!(result["command"], "ADD", "{result}");
    assert_eq!(result["ifname"], "eth0", "{result}");
    let gomaxprocs = std::env::var("GOMAXPROCS").unwrap_or_else(|_| PLUGIN_GOMAXPROCS.into());
    assert_eq!(result["gomaxprocs"], gomaxprocs.as_str(), "{result}");
}

/// Runs the shell script `body` as a plugin; its pid (it writes `$$` to `pid`) and the result.
fn run_script(body: &str) -> (i32, Result<serde_json::Value, NetnsError>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = dir.path().join("script");
    let pid_file = dir.path().join("pid");
    std::fs::write(
        &plugin,
        format!("#!/bin/sh\necho $$ > {}\n{body}\n", pid_file.display()),
    )
    .expect("plugin");
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let plugin_dirs = vec![dir.path().to_path_buf()];
    let config = serde_json::json!({"cniVersion": "1.0.0", "name": "s", "type": "script"});
    let result = run_plugin(&CniCall {
        plugin_dirs: &plugin_dirs,
        command: "ADD",
        container_id: "pod-script",
        netns: Path::new("/proc/self/ns/net"),
        ifname: "eth0",
        args: "",
        config: &config,
    });
    let pid = std::fs::read_to_string(&pid_file)
        .expect("pid")
        .trim()
        .parse()
        .expect("a pid");
    (pid, result)
}

/// Whether `pid` is gone (reaped, not a zombie) within two seconds.
fn reaped(pid: i32) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

#[test]
fn plugin_failures_say_how_it_ended_and_every_plugin_is_reaped() {
    let (pid, result) = run_script("cat >/dev/null; printf '{\"cniVersion\":\"1.0.0\"}'");
    assert_eq!(result.expect("ADD")["cniVersion"], "1.0.0");
    assert!(reaped(pid), "plugin {pid} was not reaped");

    // Its stderr names the cause where it printed no error result (it need not read its
    // configuration first); how it ended where it printed nothing.
    for (script, message) in [
        ("echo 'no such bridge' >&2; exit 3", "no such bridge"),
        ("kill -9 $$", "killed by SIGKILL"),
        ("exit 1", "exited with status 1 and printed nothing"),
    ] {
        let (pid, result) = run_script(script);
        let err = result.expect_err(script).to_string();
        assert_eq!(err, format!("CNI plugin script ADD: {message}"));
        assert!(reaped(pid), "plugin {pid} was not reaped");
    }

    // More stderr than a pipe holds cannot block it; the message keeps the start.
    let (pid, result) = run_script("head -c 300000 /dev/zero | tr '\\0' x >&2; exit 1");
    let err = result.expect_err("exit 1").to_string();
    assert!(
        err.starts_with("CNI plugin script ADD: xxx"),
        "{}",
        &err[..40]
    );
    assert!(err.len() <= 64 * 1024 + 64, "{} bytes", err.len());
    assert!(reaped(pid), "plugin {pid} was not reaped");
}

#[test]
fn pid_holder_is_pid_one_of_its_own_namespace() {
    // A cgroup of the test's own in the v1 pids hierarchy (or none where it is absent).
    let cgroup =
        Path::new("/sys/fs/cgroup/pids").join(format!("ingot-netns-test-{}", std::process::id()));
    let joins = if cgroup.parent().is_some_and(Path::is_dir) {
        std::fs::create_dir(&cgroup).expect("test cgroup");
        vec![cgroup.join("tasks")]
    } else {
        Vec::new()
    };
    let pid = spawn_pid_holder(Path::new("/bin/sleep"), &["30"], &joins).expect("spawn");
    if !joins.is_empty() {
        let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
        let name = cgroup
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(
            own.lines()
                .any(|l| l.contains(":pids:") && l.ends_with(&format!("/{name}"))),
            "{own}"
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid")
        .to_string();
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
    let own = std::fs::read_link("/proc/self/ns/pid").expect("own");
    let its = std::fs::read_link(format!("/proc/{pid}/ns/pid")).expect("its");
    assert_ne!(own, its);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("kill");
    nix::sys::wait::waitpid(pid, None).expect("reap");
    if !joins.is_empty() {
        std::fs::remove_dir(&cgroup).expect("remove test cgroup");
    }
    let missing = spawn_pid_holder(
        Path::new("/bin/sleep"),
        &["30"],
        &[PathBuf::from(
            "/sys/fs/cgroup/pids/ingot-no-such-cgroup/tasks",
        )],
    )
    .expect_err("no such cgroup");
    assert!(
        missing.to_string().contains("ingot-no-such-cgroup"),
        "{missing}"
    );
}

#[test]
fn loopback_up_without_a_plugin() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A namespace pin makes has its loopback up.
    let pinned = pin(&dir.path().join("ns"), &[Kind::Net], None, &[]).expect("pin");
    let net = pinned.path(Kind::Net).expect("net");
    assert!(interface_is_up(&net, "lo").expect("flags"), "lo is up");
    // One made elsewhere starts with it down.
    let bare = dir.path().join("bare");
    std::fs::File::create(&bare).expect("pin file");
    let made = std::thread::spawn({
        let bare = bare.clone();
        move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare");
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &bare,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .expect("bind");
        }
    });
    made.join().expect("thread");
    assert!(
        !interface_is_up(&bare, "lo").expect("flags"),
        "lo starts down"
    );
    loopback_up(&bare).expect("up");
    assert!(interface_is_up(&bare, "lo").expect("flags"));
    nix::mount::umount2(&bare, nix::mount::MntFlags::MNT_DETACH).expect("unmount");
    assert!(interface_is_up(&net, "eth9").is_err(), "no such interface");
    remove(&pinned);
}
