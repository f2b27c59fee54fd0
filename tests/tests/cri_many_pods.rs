//! Several pods alive at once while others come and go, as on a node a kubelet runs: pods and
//! containers are created, exec'd into, restarted and removed beside long-lived ones, and each
//! long-lived one must keep working (its shim, its containers, its execs), and each removed one
//! must leave nothing behind.

use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use ingot_tests::{
    cri::{runtime_client, Daemon, Options},
    pods::*,
};
use k8s_cri::v1::{self, runtime_service_client::RuntimeServiceClient};
use tonic::transport::Channel;

/// A container that runs until stopped (and stops at once on SIGTERM).
const IDLE: &str = "trap 'exit 0' TERM; while true; do sleep 0.1; done";

async fn echo_in(client: &mut RuntimeServiceClient<Channel>, container: &str, word: &str) {
    let reply = exec(client, container, &["echo", word]).await;
    assert_eq!(reply.exit_code, 0, "exec in {container}: {reply:?}");
    assert_eq!(
        String::from_utf8_lossy(&reply.stdout),
        format!("{word}\n"),
        "exec in {container}"
    );
}

/// Stops and removes `old`, then creates and starts its next attempt, as a kubelet restarts a
/// container of a long-lived pod.
async fn restart(
    client: &mut RuntimeServiceClient<Channel>,
    pod_id: &str,
    pod: &v1::PodSandboxConfig,
    old: &str,
    mut config: v1::ContainerConfig,
    attempt: u32,
) -> String {
    stop_and_remove_container(client, old, 5).await;
    if let Some(metadata) = config.metadata.as_mut() {
        metadata.attempt = attempt;
    }
    start_container(client, pod_id, pod, config).await
}

#[tokio::test(flavor = "current_thread")]
async fn pods_keep_working_while_others_come_and_go() {
    let (env, mut client, image) = env(true).await;
    let daemon = &env.daemon;

    // Two pods, neither with a container yet; removing one must not break the other's next
    // CreateContainer (their shims once shared one working directory, removed by the first
    // shim to exit).
    let first = pod_config("first", &daemon.log_dir("first"));
    let first_id = run_pod(&mut client, first).await;
    let steady = pod_config("steady", &daemon.log_dir("steady"));
    let steady_id = run_pod(&mut client, steady.clone()).await;
    remove_pod(&mut client, &first_id).await;
    assert_pod_gone(daemon, &first_id, &[]);
    let steady_config = container_config("steady-app", &image, IDLE);
    let mut steady_app =
        start_container(&mut client, &steady_id, &steady, steady_config.clone()).await;
    echo_in(&mut client, &steady_app, "steady").await;

    // The pod's init (its shared PID namespace's PID 1) lives in the pod's cgroup in every
    // hierarchy, not in ingotd's.
    let info = pod_info(&mut client, &steady_id).await;
    let init = info["podInitPid"].as_u64().expect("pod init pid");
    let cgroups = std::fs::read_to_string(format!("/proc/{init}/cgroup")).expect("cgroups");
    let pod_cgroup = format!("{}/{steady_id}", daemon.cgroup_parent);
    let mut checked = 0;
    for line in cgroups.lines() {
        let (controllers, path) = line
            .split_once(':')
            .and_then(|(_, rest)| rest.split_once(':'))
            .expect("line");
        if controllers.is_empty()
            || controllers.starts_with("name=")
            || controllers == "hugetlb" && path == "/"
        {
            continue;
        }
        assert!(
            path.starts_with(&pod_cgroup),
            "pod init in {line} (want {pod_cgroup})"
        );
        checked += 1;
    }
    assert!(checked > 0, "no cgroup hierarchy checked: {cgroups}");

    // A second long-lived pod with two containers.
    let busy = pod_config("busy", &daemon.log_dir("busy"));
    let busy_id = run_pod(&mut client, busy.clone()).await;
    let busy_one = start_container(
        &mut client,
        &busy_id,
        &busy,
        container_config("one", &image, IDLE),
    )
    .await;
    let busy_two = start_container(
        &mut client,
        &busy_id,
        &busy,
        container_config("two", &image, IDLE),
    )
    .await;

    for round in 1..=3u32 {
        // A short-lived pod comes up beside the long-lived ones while they are exec'd into.
        let name = format!("transient-{round}");
        let transient = pod_config(&name, &daemon.log_dir(&name));
        let mut other = client.clone();
        let ((transient_id, transient_app), ()) = tokio::join!(
            async {
                let id = run_pod(&mut client, transient.clone()).await;
                let app = start_container(
                    &mut client,
                    &id,
                    &transient,
                    container_config("app", &image, IDLE),
                )
                .await;
                echo_in(&mut client, &app, &name).await;
                (id, app)
            },
            async {
                echo_in(&mut other, &busy_one, "one").await;
                echo_in(&mut other, &busy_two, "two").await;
            },
        );
        // The steady pod's container restarts while the transient pod still runs.
        steady_app = restart(
            &mut client,
            &steady_id,
            &steady,
            &steady_app,
            steady_config.clone(),
            round,
        )
        .await;
        // Removed with its container still running, as `crictl rmp -f` does.
        remove_pod(&mut client, &transient_id).await;
        assert_pod_gone(daemon, &transient_id, &[transient_app]);

        echo_in(&mut client, &steady_app, "steady").await;
        echo_in(&mut client, &busy_one, "one").await;
        echo_in(&mut client, &busy_two, "two").await;
        let status = container_status(&mut client, &busy_one).await;
        assert_eq!(
            status.state,
            v1::ContainerState::ContainerRunning as i32,
            "round {round}: {status:?}"
        );
    }

    // Still listed exactly once each, and nothing of the removed pods.
    let listed: Vec<String> = client
        .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect();
    let mut expected = vec![steady_id.clone(), busy_id.clone()];
    expected.sort();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(listed_sorted, expected);

    remove_pod(&mut client, &steady_id).await;
    assert_pod_gone(daemon, &steady_id, &[steady_app]);
    remove_pod(&mut client, &busy_id).await;
    assert_nothing_left(daemon, &busy_id);
    // The shims' shared state root holds nothing of any pod once all are gone.
    let shim_root = daemon.dir.path().join("run/shim/ingot");
    assert!(
        ingot_tests::wait_until(Duration::from_secs(5), || {
            std::fs::read_dir(&shim_root).map_or(true, |mut entries| entries.next().is_none())
        }),
        "left in {}: {:?}",
        shim_root.display(),
        std::fs::read_dir(&shim_root)
            .map(|e| e.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
}

/// A pod on the test's bridge network with a shared PID namespace (so it has a pod init).
fn shared_pid_pod(name: &str, daemon: &Daemon) -> v1::PodSandboxConfig {
    let mut pod = pod_config(name, &daemon.log_dir(name));
    pod.linux = Some(v1::LinuxPodSandboxConfig {
        security_context: Some(v1::LinuxSandboxSecurityContext {
            namespace_options: Some(v1::NamespaceOption {
                pid: v1::NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    pod
}

#[tokio::test(flavor = "current_thread")]
async fn killed_inside_run_pod_sandbox_leaves_nothing_after_recovery() {
    let (mut env, _, _) = env(true).await;
    for burst in 0..3 {
        let daemon = &env.daemon;
        let pods_dir = daemon.dir.path().join("run/pods").display().to_string();
        let mut calls = Vec::new();
        for i in 0..5 {
            let socket = daemon.socket();
            let config = shared_pid_pod(&format!("crash-{burst}-{i}"), daemon);
            calls.push(tokio::spawn(async move {
                let mut client = runtime_client(&socket).await;
                client
                    .run_pod_sandbox(v1::RunPodSandboxRequest {
                        config: Some(config),
                        runtime_handler: String::new(),
                    })
                    .await
            }));
        }
        // Killed at a different point of RunPodSandbox in each burst: once the first pod init
        // runs (nothing committed yet), once CNI ADD gave the first address (its pod not yet
        // committed), once the first call answered (some pods committed, others in flight).
        let ipam = daemon.dir.path().join("ipam/ingot-test");
        let addresses = || {
            std::fs::read_dir(&ipam).map_or(0, |entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
                    .count()
            })
        };
        let pod_inits = || ingot_tests::pids_with_cmdline(&["--pod-init", &pods_dir]).len();
        let mut waited = Duration::ZERO;
        // (Polled asynchronously: the calls are tasks of this thread's runtime.)
        loop {
            let reached = match burst {
                0 => pod_inits() > 0,
                1 => addresses() > 0,
                _ => calls.iter().any(|call| call.is_finished()),
            };
            if reached {
                break;
            }
            assert!(
                waited < Duration::from_secs(10),
                "burst {burst}: kill point not reached"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
            waited += Duration::from_millis(1);
        }
        env.daemon.kill();
        let mut answered = 0;
        for call in calls {
            if call.await.expect("task").is_ok() {
                answered += 1;
            }
        }
        assert!(
            answered < 5,
            "burst {burst}: every call answered before the kill"
        );

        env.daemon = Daemon::restart(env.daemon);
        let mut client = runtime_client(&env.daemon.socket()).await;
        let listed = client
            .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items;
        for pod in &listed {
            client
                .stop_pod_sandbox(v1::StopPodSandboxRequest {
                    pod_sandbox_id: pod.id.clone(),
                })
                .await
                .expect("StopPodSandbox");
            remove_pod(&mut client, &pod.id).await;
        }
        assert!(
            ingot_tests::wait_until(Duration::from_secs(10), || daemon_leftovers(&env.daemon)
                .is_empty()),
            "burst {burst} ({} pods listed after the restart) left: {:?}",
            listed.len(),
            daemon_leftovers(&env.daemon)
        );
    }
}

/// A CNI plugin that holds ADD of pods named `gated*` until `<dir>/open` exists (it creates
/// `<dir>/waiting` meanwhile; it gives up after 60 s, so a failed test leaves no process), then
/// runs Debian's bridge plugin with the same input.
fn gated_plugin(dir: &Path) {
    let script = format!(
        "#!/bin/sh\n\
         case \"$CNI_COMMAND $CNI_ARGS\" in\n\
         ADD*K8S_POD_NAME=gated*)\n\
             touch {dir}/waiting\n\
             i=0\n\
             while [ ! -e {dir}/open ] && [ $i -lt 3000 ]; do sleep 0.02; i=$((i+1)); done;;\n\
         esac\n\
         exec /usr/lib/cni/bridge\n",
        dir = dir.display()
    );
    let path = dir.join("gated");
    std::fs::write(&path, script).expect("plugin");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

async fn wait_for_file(path: &Path) {
    let mut waited = Duration::ZERO;
    while !path.exists() {
        assert!(
            waited < Duration::from_secs(10),
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        waited += Duration::from_millis(5);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_pod_in_cni_add_holds_up_no_other_pod() {
    let plugins = tempfile::tempdir().expect("tempdir");
    gated_plugin(plugins.path());
    let (env, mut client, image) = env_with(
        true,
        Options {
            cni_bin_dirs: vec![plugins.path().to_path_buf()],
            cni_plugin: Some("gated".into()),
            ..Default::default()
        },
    )
    .await;
    let daemon = &env.daemon;
    let steady = pod_config("steady", &daemon.log_dir("steady"));
    let steady_id = run_pod(&mut client, steady.clone()).await;
    let steady_config = container_config("app", &image, IDLE);
    let steady_app = start_container(&mut client, &steady_id, &steady, steady_config.clone()).await;

    // The gated pod's RunPodSandbox waits inside CNI ADD...
    let gated = pod_config("gated", &daemon.log_dir("gated"));
    let mut gated_client = client.clone();
    let gated_config = gated.clone();
    let gated_call = tokio::spawn(async move {
        gated_client
            .run_pod_sandbox(v1::RunPodSandboxRequest {
                config: Some(gated_config),
                runtime_handler: String::new(),
            })
            .await
    });
    wait_for_file(&plugins.path().join("waiting")).await;

    // ...while every other pod's calls go through: a new pod with its network and a container,
    // an exec and a restart in the steady pod, and a removal.
    let others = tokio::time::timeout(Duration::from_secs(30), async {
        let other = pod_config("other", &daemon.log_dir("other"));
        let other_id = run_pod(&mut client, other.clone()).await;
        let other_app = start_container(
            &mut client,
            &other_id,
            &other,
            container_config("app", &image, IDLE),
        )
        .await;
        echo_in(&mut client, &other_app, "other").await;
        let restarted = restart(
            &mut client,
            &steady_id,
            &steady,
            &steady_app,
            steady_config,
            1,
        )
        .await;
        echo_in(&mut client, &restarted, "steady").await;
        remove_pod(&mut client, &other_id).await;
        assert_pod_gone(daemon, &other_id, &[other_app]);
        restarted
    })
    .await;
    let steady_app = others.expect("calls on other pods waited for one pod's CNI ADD");
    assert!(
        !gated_call.is_finished(),
        "the gated pod left CNI ADD early"
    );

    // A second RunPodSandbox of the same name fails at once: the name is reserved.
    let duplicate = client
        .run_pod_sandbox(v1::RunPodSandboxRequest {
            config: Some(gated.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("duplicate name");
    assert_eq!(
        duplicate.code(),
        tonic::Code::AlreadyExists,
        "{duplicate:?}"
    );
    assert!(duplicate.message().contains("gated"), "{duplicate:?}");

    std::fs::write(plugins.path().join("open"), "").expect("open the gate");
    let gated_id = gated_call
        .await
        .expect("task")
        .expect("gated RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let gated_app = start_container(
        &mut client,
        &gated_id,
        &gated,
        container_config("app", &image, IDLE),
    )
    .await;
    echo_in(&mut client, &gated_app, "gated").await;
    echo_in(&mut client, &steady_app, "steady").await;

    remove_pod(&mut client, &gated_id).await;
    assert_pod_gone(daemon, &gated_id, &[gated_app]);
    remove_pod(&mut client, &steady_id).await;
    assert_nothing_left(daemon, &steady_id);
}
