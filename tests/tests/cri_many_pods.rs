//! Several pods alive at once while others come and go, as on a node a kubelet runs: pods and
//! containers are created, exec'd into, restarted and removed beside long-lived ones, and each
//! long-lived one must keep working (its shim, its containers, its execs), and each removed one
//! must leave nothing behind.

use std::time::Duration;

use ingot_tests::pods::*;
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
    client
        .stop_container(v1::StopContainerRequest {
            container_id: old.into(),
            timeout: 5,
        })
        .await
        .expect("StopContainer");
    client
        .remove_container(v1::RemoveContainerRequest {
            container_id: old.into(),
        })
        .await
        .expect("RemoveContainer");
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
