//! `ingotd`: the CRI v1 daemon of ingot. Runs on embedded defaults with no config file:
//! `ingotd [--config FILE] [--listen unix:///PATH] [--root DIR] [--state DIR]`.

use anyhow::Context;
use ingot_cri::config::{Config, Flags};

const USAGE: &str =
    "usage: ingotd [--config FILE] [--listen unix:///PATH] [--root DIR] [--state DIR]

Serves CRI v1 on --listen (default unix:///run/ingot/ingot.sock). Without --config it runs on
embedded defaults (/etc/ingot/ingot.toml is read when it exists). INGOT_LOG sets the log filter
(tracing's syntax, default info).";

/// Threads for blocking work: enough for a burst of pods on a node's housekeeping CPUs.
const MAX_BLOCKING_THREADS: usize = 32;

/// close_range(2)'s flag (Linux 5.11; older kernels refuse it, and the fds stay as they were).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some(ingot_cri::host::pod_init::POD_INIT_ARG) {
        ingot_cri::host::pod_init::pod_init();
    }
    // Descriptors inherited from whatever started ingotd (a shell's, a supervisor's) are not
    // handed on to the zygote, shims, pod-inits and plugins: a pod-init is PID 1 of its pod.
    // SAFETY: close_range only sets the close-on-exec flag of descriptors 3 and up.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC);
    }
    // Every thread of the blocking pool (namespaces, CNI, mounts) would get a malloc arena of
    // its own, each keeping what it once held; two shared arenas serve a daemon that mostly
    // waits. SAFETY: mallopt only tunes the allocator; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("INGOT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    if args.iter().any(|a| a == "--version") {
        println!("ingotd {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let flags = Flags::parse(&args)?;
    let config = Config::load(&flags)?;
    // Off the CPUs containers may hold, before any other thread exists (each inherits this);
    // refined once the placement state is read.
    if let Some(cpus) =
        ingot_cri::host::affinity::startup_cpus(&config.host_root, &config.placement.reserved)
    {
        if let Err(err) = ingot_cri::host::affinity::pin_process(
            &config.host_root.join("proc"),
            std::process::id(),
            &cpus,
        ) {
            tracing::warn!(%cpus, error = %err, "not pinned to the housekeeping CPUs at start");
        }
    }
    // One thread: the daemon mostly waits; housekeeping CPUs stay quiet.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Blocking work (pod set-up, CNI plugins, unpacking) in at most this many threads.
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(err) => {
                        tracing::warn!(error = %err, "no SIGTERM handler");
                        let _ = tokio::signal::ctrl_c().await;
                        return;
                    }
                };
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            tracing::info!("shutting down");
        };
        ingot_cri::rpc::server::serve(config, shutdown).await
    })?;
    Ok(())
}
