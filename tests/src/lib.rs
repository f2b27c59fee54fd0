//! The end-to-end harness of ingot: a test image built from `/bin/busybox` (a rootfs directory or
//! an OCI archive), a private containerd (its own root, state and sockets in a temp dir, CRI plugin
//! disabled), and helpers to find the binaries this workspace builds. Used by the integration
//! tests in `tests/` and by the benchmarks.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub mod cri;
pub mod pods;
pub mod stream;
use sha2::{Digest, Sha256};

pub const SHIM_BINARY: &str = "containerd-shim-ingot-v2";
/// Where a shim not given a state directory keeps its namespaces (its `bootstrap::STATE_ROOT`).
const SHIM_STATE_ROOT: &str = "/run/ingot/shim";
pub const INGOT_RUNTIME: &str = "io.containerd.ingot.v2";
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
pub const TEST_IMAGE: &str = "docker.io/library/ingot-busybox:test";

/// The directory holding this workspace's binaries (`target/<profile>`), found from the running
/// test executable (`target/<profile>/deps/<test>`).
pub fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("current exe")?;
    let mut dir = exe.parent().context("exe dir")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let shim = dir.join(SHIM_BINARY);
    if !shim.exists() {
        bail!(
            "{} not built; run `cargo build --workspace --bins` first",
            shim.display()
        );
    }
    Ok(dir)
}

/// A name unique to this process and call, for namespaces, ids and cgroup parents.
/// A Python in a virtual environment (one per target directory and package) with `package`
/// from PyPI, which imports as `module`.
pub fn python_with(package: &str, module: &str) -> PathBuf {
    let venv = target_dir()
        .expect("target")
        .join(format!("{package}-venv"));
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        let made = Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv");
        assert!(made.success(), "python3 -m venv {}", venv.display());
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", package])
            .status()
            .expect("pip install");
        assert!(installed.success(), "pip install {package}");
    }
    python
}

pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// crictl v1.32 from the shared cri-tools beside the checkout (its README says how it was built).
pub fn crictl() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/cri-tools/crictl")
}

/// Writes a busybox rootfs: `/bin/busybox`, a link per applet, and the directories and files a
/// container expects.
pub fn busybox_rootfs(rootfs: &Path) -> Result<()> {
    let bin = rootfs.join("bin");
    fs::create_dir_all(&bin)?;
    fs::copy("/bin/busybox", bin.join("busybox")).context("copy /bin/busybox (busybox-static)")?;
    for dir in ["proc", "sys", "dev", "tmp", "etc", "root", "run"] {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    fs::write(rootfs.join("etc/group"), "root:x:0:\nnobody:x:65534:\n")?;
    for applet in applets()? {
        let link = bin.join(&applet);
        if !link.exists() {
            symlink("/bin/busybox", link)?;
        }
    }
    Ok(())
}

fn applets() -> Result<Vec<String>> {
    let output = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .context("run /bin/busybox --list")?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .filter(|a| !a.is_empty() && a != "busybox" && !a.contains('/'))
        .collect())
}

fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds an OCI image archive (oci-layout, index.json, blobs) of the busybox rootfs, named
/// `name` through the `io.containerd.image.name` annotation.
pub fn busybox_oci_archive(archive: &Path, name: &str) -> Result<()> {
    busybox_oci_archive_with_cmd(archive, name, &["sh"])
}

/// Like [`busybox_oci_archive`], with `cmd` as the image's command.
pub fn busybox_oci_archive_with_cmd(archive: &Path, name: &str, cmd: &[&str]) -> Result<()> {
    let work = tempfile::tempdir()?;
    let rootfs = work.path().join("rootfs");
    busybox_rootfs(&rootfs)?;
    oci_archive(&rootfs, archive, name, cmd)
}

/// Builds an OCI image archive of `rootfs` (one layer) named `name`, with `cmd` as its command.
pub fn oci_archive(rootfs: &Path, archive: &Path, name: &str, cmd: &[&str]) -> Result<()> {
    let mut layer = tar::Builder::new(Vec::new());
    layer.follow_symlinks(false);
    layer.mode(tar::HeaderMode::Deterministic);
    layer.append_dir_all(".", rootfs)?;
    let layer = layer.into_inner()?;
    let layer_digest = sha256_hex(&layer);

    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd,
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
        "history": [{"created_by": "ingot test harness"}]
    });
    let config = serde_json::to_vec(&config)?;
    let config_digest = sha256_hex(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config.len()
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer.len()
        }]
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = sha256_hex(&manifest);
    let tag = name.rsplit(':').next().unwrap_or("latest");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag
            }
        }]
    });

    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    );
    files.insert("index.json".into(), serde_json::to_vec(&index)?);
    files.insert(format!("blobs/sha256/{layer_digest}"), layer);
    files.insert(format!("blobs/sha256/{config_digest}"), config);
    files.insert(format!("blobs/sha256/{manifest_digest}"), manifest);

    let mut out = tar::Builder::new(fs::File::create(archive)?);
    for (path, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        out.append_data(&mut header, path, data.as_slice())?;
    }
    out.finish()?;
    Ok(())
}

/// A private containerd, stopped (by pid) and cleaned up on drop.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub namespace: String,
    child: Child,
}

impl Containerd {
    /// Starts containerd with the workspace's binaries first on its PATH, in a fresh namespace.
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ingot-ctd").tempdir()?;
        let d = dir.path();
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "info"
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("c.sock").display(),
        );
        fs::write(d.join("config.toml"), config)?;
        let log = fs::File::create(d.join("containerd.log"))?;
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            target_dir()?.display()
        );
        let mut command = Command::new("containerd");
        command.arg("--config").arg(d.join("config.toml"));
        let child = command
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start containerd (package containerd)")?;
        let containerd = Containerd {
            dir,
            namespace: unique("ingot-test"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !containerd.socket().exists() {
            if Instant::now() > deadline {
                bail!("containerd did not start: {}", containerd.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(containerd)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` against this containerd, in its namespace.
    pub fn ctr(&self) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(&self.namespace)
            .stdin(Stdio::null());
        command
    }

    /// Runs `ctr` with `args` and returns its output, whatever the exit status.
    pub fn ctr_output(&self, args: &[&str]) -> Result<Output> {
        self.ctr()
            .args(args)
            .output()
            .with_context(|| format!("run ctr {args:?}"))
    }

    /// Runs `ctr` with `args`, failing unless it exits 0; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let output = self.ctr_output(args)?;
        if !output.status.success() {
            bail!(
                "ctr {args:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Imports the busybox test image as [`TEST_IMAGE`].
    pub fn import_test_image(&self) -> Result<()> {
        let archive = self.dir.path().join("busybox-oci.tar");
        busybox_oci_archive(&archive, TEST_IMAGE)?;
        let archive = archive.to_string_lossy().into_owned();
        self.ctr_ok(&["images", "import", &archive])?;
        Ok(())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Delete what is left in our namespace, stop containerd, and remove the cgroup parent
        // that ctr's default cgroupsPath (/<namespace>/<id>) created.
        if let Ok(out) = self.ctr_output(&["tasks", "ls", "-q"]) {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = self.ctr_output(&["tasks", "kill", "-a", "-s", "SIGKILL", id]);
                let _ = self.ctr_output(&["tasks", "delete", "-f", id]);
            }
        }
        if let Ok(out) = self.ctr_output(&["containers", "ls", "-q"]) {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = self.ctr_output(&["containers", "delete", id]);
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0)),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        remove_cgroup_parent(&self.namespace);
        let root = self.dir.path().join("root");
        unmount_below(&root);
        // A shim ends a moment after its last container is deleted, and its own directory
        // with it: only then is the namespace's directory empty.
        wait_until(Duration::from_secs(5), || {
            pids_with_cmdline(&[SHIM_BINARY, &self.namespace]).is_empty()
        });
        remove_shim_namespace(&self.namespace);
    }
}

/// Removes the shim's state directory of a test's containerd namespace (shims under containerd
/// keep it, as containerd keeps its per-namespace task directory), and `/run/ingot/shim` and
/// `/run/ingot` when nothing else is left in them.
pub fn remove_shim_namespace(namespace: &str) {
    let root = Path::new(SHIM_STATE_ROOT);
    let _ = fs::remove_dir(root.join(namespace));
    let _ = fs::remove_dir(root);
    if let Some(parent) = root.parent() {
        let _ = fs::remove_dir(parent);
    }
}

/// Removes `/sys/fs/cgroup/<hierarchy>/<parent>` in every hierarchy, deepest first, after
/// SIGKILLing the processes still in it (a test that failed half-way leaves its container
/// running). Only for parents a test created itself, so every process there is the test's own.
pub fn remove_cgroup_parent(parent: &str) {
    let pids_root = Path::new("/sys/fs/cgroup/pids").join(parent);
    let mut leftover = Vec::new();
    collect_procs(&pids_root, &mut leftover);
    for pid in &leftover {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if !leftover.is_empty() {
        wait_until(Duration::from_secs(5), || {
            let mut left = Vec::new();
            collect_procs(&pids_root, &mut left);
            left.is_empty()
        });
    }
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for hierarchy in hierarchies.flatten() {
        let dir = hierarchy.path().join(parent);
        if dir.is_dir() {
            remove_cgroup_tree(&dir);
        }
    }
}

fn collect_procs(dir: &Path, pids: &mut Vec<i32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_procs(&entry.path(), pids);
            }
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Lazily unmounts every mount at or below `dir` (deepest first).
pub fn unmount_below(dir: &Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let mut targets: Vec<String> = mounts()
        .into_iter()
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for target in targets {
        let _ = nix::mount::umount2(target.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Mounts a tmpfs (mode 0755, as `/run` is) on `dir`, made first; [`unmount_below`] removes it.
pub fn mount_tmpfs(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .with_context(|| format!("mount a tmpfs on {}", dir.display()))
}

/// Mount points of this mount namespace.
pub fn mounts() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .collect()
}

/// Cgroup directories (in any hierarchy) whose path contains `needle`.
pub fn cgroups_named(parent: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") {
        for hierarchy in hierarchies.flatten() {
            let dir = hierarchy.path().join(parent);
            if dir.exists() {
                found.push(dir);
            }
        }
    }
    found
}

/// Pids of processes whose command line contains all of `needles`.
pub fn pids_with_cmdline(needles: &[&str]) -> Vec<i32> {
    let mut pids = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if needles.iter().all(|n| cmdline.contains(n)) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// The state letter and the parent of process `pid`, from `/proc/<pid>/stat`.
fn state_and_parent(pid: i32) -> Option<(String, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces, so from the last ')'.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.to_string();
    Some((state, fields.next()?.parse().ok()?))
}

/// The parent of process `pid`, from `/proc/<pid>/stat`.
pub fn parent_pid(pid: i32) -> Option<i32> {
    state_and_parent(pid).map(|(_, parent)| parent)
}

/// Children of `parent` that exited and were not reaped.
pub fn zombie_children(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| state_and_parent(*pid).is_some_and(|(state, p)| state == "Z" && p == parent))
        .collect()
}

/// Those of `pids` whose parent is not among them: a process forked by one of them and not yet
/// renamed or exec'd (a shim's helper at its start) shares its parent's command line.
pub fn outermost(pids: Vec<i32>) -> Vec<i32> {
    pids.iter()
        .copied()
        .filter(|pid| parent_pid(*pid).is_none_or(|parent| !pids.contains(&parent)))
        .collect()
}

/// Polls `check` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Writes a runtime bundle (config.json + busybox rootfs) for `args`, with `cgroups_path`.
pub fn write_bundle(
    bundle: &Path,
    args: &[&str],
    cgroups_path: &str,
    extra: impl FnOnce(&mut serde_json::Value),
) -> Result<()> {
    busybox_rootfs(&bundle.join("rootfs"))?;
    let output = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(bundle)
        .output()
        .context("runc spec")?;
    if !output.status.success() {
        bail!("runc spec: {}", String::from_utf8_lossy(&output.stderr));
    }
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&fs::read(&path)?)?;
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["args"] = serde_json::json!(args);
    spec["linux"]["cgroupsPath"] = serde_json::json!(cgroups_path);
    extra(&mut spec);
    let mut file = fs::File::create(&path)?;
    file.write_all(&serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

/// ingot's shim started by hand (no containerd): a ttrpc Task client on a socket in a temp dir.
/// Events go nowhere; everything else is the real shim. Killed by pid on drop.
pub struct ShimProcess {
    pub dir: tempfile::TempDir,
    pub namespace: String,
    child: Child,
    pub client: containerd_shim_protos::TaskClient,
}

impl ShimProcess {
    pub fn start() -> Result<Self> {
        Self::start_binary(&target_dir()?.join(SHIM_BINARY))
    }

    /// A shim of the binary at `binary` (which finds its helper beside it).
    pub fn start_binary(binary: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ingot-shim").tempdir()?;
        let namespace = unique("ingot-shimtest");
        let socket = dir.path().join("shim.sock");
        let address = format!("unix://{}", socket.display());
        let mut child = Command::new(binary)
            .args([
                "-namespace",
                &namespace,
                "-id",
                "direct",
                "-address",
                "/nonexistent",
            ])
            .args(["-socket", &address])
            .current_dir(dir.path())
            .env_remove("TTRPC_ADDRESS")
            .env("INGOT_SHIM_LOG", dir.path().join("shim.log"))
            .stdin(Stdio::null())
            .spawn()
            .context("start shim")?;
        // The socket file appears at bind, a moment before the shim listens: connect until it
        // answers.
        let mut client = None;
        wait_until(Duration::from_secs(10), || {
            client = containerd_shim_protos::Client::connect(&address).ok();
            client.is_some()
        });
        let client = match client {
            Some(client) => client,
            None => {
                // Not left running: no ShimProcess exists yet to end it on drop.
                let _ = child.kill();
                let _ = child.wait();
                bail!("the shim did not listen on {address} within 10 s");
            }
        };
        Ok(ShimProcess {
            dir,
            namespace,
            child,
            client: containerd_shim_protos::TaskClient::new(client),
        })
    }

    /// The shim's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The shim's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("shim.log")).unwrap_or_default()
    }
}

impl Drop for ShimProcess {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0)),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
        // The namespace is this test's own; a failed test may leave libcontainer state there.
        let _ = fs::remove_dir_all(Path::new(SHIM_STATE_ROOT).join(&self.namespace));
        remove_shim_namespace(&self.namespace);
    }
}

/// A ttrpc context with a deadline, so a hung call fails the test instead of hanging it.
pub fn ctx() -> containerd_shim_protos::ttrpc::context::Context {
    containerd_shim_protos::ttrpc::context::with_timeout(30_000_000_000)
}

/// Debian's `docker-registry` on a free 127.0.0.1 port with a temp config and storage; killed
/// by pid on drop.
pub struct Registry {
    pub dir: tempfile::TempDir,
    pub address: String,
    child: Child,
    netns: Option<PathBuf>,
}

/// A network namespace for one test, pinned at a file in a temp dir, with its loopback up: a
/// daemon, a registry and CNI plugins run there never touch the host's network.
pub struct TestNetns {
    dir: tempfile::TempDir,
}

impl TestNetns {
    pub fn create() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ingot-netns").tempdir()?;
        let file = dir.path().join("net");
        fs::write(&file, "")?;
        let status = Command::new("unshare")
            .arg(format!("--net={}", file.display()))
            .arg("true")
            .status()
            .context("unshare (util-linux)")?;
        if !status.success() {
            bail!("unshare --net={}: {status}", file.display());
        }
        let netns = TestNetns { dir };
        let status = netns
            .command("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .context("ip (iproute2)")?;
        if !status.success() {
            bail!("ip link set lo up: {status}");
        }
        Ok(netns)
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("net")
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path().display()))
            .arg(program);
        command
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let file = fs::File::open(self.path())?;
        thread::spawn(move || -> Result<T> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Registry {
    pub fn start() -> Result<Self> {
        Self::start_in(None)
    }

    /// A registry inside `netns` (its address is reachable there only).
    pub fn start_in(netns: Option<&TestNetns>) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ingot-registry")
            .tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let address = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
            dir.path().join("data").display()
        );
        fs::write(dir.path().join("config.yml"), config)?;
        let log = fs::File::create(dir.path().join("registry.log"))?;
        let mut command = match netns {
            Some(netns) => netns.command("docker-registry"),
            None => Command::new("docker-registry"),
        };
        let child = command
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start docker-registry (package docker-registry)")?;
        let registry = Registry {
            dir,
            address,
            child,
            netns: netns.map(TestNetns::path),
        };
        let listening = || -> bool {
            let address = registry.address.clone();
            match netns {
                Some(netns) => netns
                    .run(move || std::net::TcpStream::connect(address).is_ok())
                    .unwrap_or(false),
                None => std::net::TcpStream::connect(address).is_ok(),
            }
        };
        if !wait_until(Duration::from_secs(20), listening) {
            bail!("docker-registry did not listen on {}", registry.address);
        }
        Ok(registry)
    }

    /// Pushes the busybox test image as `<address>/<name>` with skopeo.
    pub fn push_test_image(&self, name: &str) -> Result<()> {
        let archive = self.dir.path().join("busybox-oci.tar");
        if !archive.exists() {
            busybox_oci_archive(&archive, TEST_IMAGE)?;
        }
        self.push_archive(&archive, name)
    }

    /// Pushes an OCI archive as `<address>/<name>` with skopeo.
    pub fn push_archive(&self, archive: &Path, name: &str) -> Result<()> {
        let mut command = match &self.netns {
            Some(path) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", path.display())).arg("skopeo");
                c
            }
            None => Command::new("skopeo"),
        };
        let output = command
            .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{}/{name}", self.address))
            .output()
            .context("run skopeo (package skopeo)")?;
        if !output.status.success() {
            bail!("skopeo copy: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0)),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

/// `file` of the v1 hierarchy `controller` for the cgroup of process `pid`.
pub fn cgroup_file(pid: u32, controller: &str, file: &str) -> std::path::PathBuf {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let (mount, path) = cgroups
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then(|| (controllers.to_string(), path.to_string()))
        })
        .expect("the controller's hierarchy");
    std::path::Path::new("/sys/fs/cgroup")
        .join(mount)
        .join(path.trim_start_matches('/'))
        .join(file)
}
