//! ingotd over its unix socket with a Rust CRI client: configuration, socket, Version, Status,
//! RuntimeConfig, UpdateRuntimeConfig, shutdown, and bad configuration.

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use ingot_tests::cri::{channel, ingotd_binary, runtime_client, Daemon};
use k8s_cri::v1::{
    self, image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::Channel;

async fn connect(socket: &Path) -> RuntimeServiceClient<Channel> {
    runtime_client(socket).await
}

fn network_ready(status: &v1::StatusResponse) -> v1::RuntimeCondition {
    status
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.r#type == "NetworkReady"))
        .cloned()
        .expect("NetworkReady condition")
}

#[tokio::test(flavor = "current_thread")]
async fn version_status_runtime_config() {
    let daemon = Daemon::start("");
    let mode = std::fs::metadata(daemon.socket())
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    let mut client = connect(&daemon.socket()).await;

    let version = client
        .version(v1::VersionRequest::default())
        .await
        .expect("version")
        .into_inner();
    assert_eq!(version.runtime_name, "ingot");
    assert_eq!(version.runtime_api_version, "v1");

    let status = client
        .status(v1::StatusRequest { verbose: true })
        .await
        .expect("status")
        .into_inner();
    let runtime_ready = status
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.r#type == "RuntimeReady"))
        .expect("RuntimeReady");
    assert!(runtime_ready.status);
    let network = network_ready(&status);
    assert!(!network.status);
    assert_eq!(network.reason, "NetworkPluginNotReady");
    assert!(network.message.contains("net.d"), "{}", network.message);
    // The daemon's configuration as JSON, with the names of its file.
    let config: serde_json::Value =
        serde_json::from_str(&status.info["config"]).expect("config is JSON");
    assert_eq!(
        config["cni"]["conf_dir"],
        daemon.dir.path().join("net.d").display().to_string()
    );
    assert_eq!(config["cgroup_parent"], daemon.cgroup_parent.as_str());

    std::fs::write(daemon.dir.path().join("net.d/10-bridge.conflist"), "{}").expect("cni conf");
    let status = client
        .status(v1::StatusRequest { verbose: false })
        .await
        .expect("status")
        .into_inner();
    assert!(network_ready(&status).status);

    let config = client
        .runtime_config(v1::RuntimeConfigRequest {})
        .await
        .expect("runtime config")
        .into_inner();
    assert_eq!(
        config.linux.expect("linux").cgroup_driver,
        v1::CgroupDriver::Cgroupfs as i32
    );

    let update = |cidr: &str| v1::UpdateRuntimeConfigRequest {
        runtime_config: Some(v1::RuntimeConfig {
            network_config: Some(v1::NetworkConfig {
                pod_cidr: cidr.to_string(),
            }),
        }),
    };
    client
        .update_runtime_config(update("10.88.0.0/16"))
        .await
        .expect("update");
    let err = client
        .update_runtime_config(update("10.88.0.0/40"))
        .await
        .expect_err("bad cidr");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("pod_cidr"), "{}", err.message());
    let status = client
        .status(v1::StatusRequest { verbose: true })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(
        status.info.get("podCIDR").map(String::as_str),
        Some("10.88.0.0/16")
    );

    // crictl, the kubelet's own tooling, talks to it too (when the shared cri-tools exist).
    let crictl = ingot_tests::crictl();
    if crictl.exists() {
        let output = Command::new(&crictl)
            .arg("--runtime-endpoint")
            .arg(format!("unix://{}", daemon.socket().display()))
            .arg("version")
            .output()
            .expect("crictl");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("RuntimeName:  ingot"), "{text}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn second_daemon_refused_and_sigterm_removes_socket() {
    let mut daemon = Daemon::start("");
    let output = Command::new(ingotd_binary())
        .arg(format!("--listen=unix://{}", daemon.socket().display()))
        .arg("--root")
        .arg(daemon.dir.path().join("lib2"))
        .arg("--state")
        .arg(daemon.dir.path().join("run2"))
        .arg("--config")
        .arg(daemon.dir.path().join("ingot.toml"))
        .output()
        .expect("second ingotd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("served by another process"), "{stderr}");

    nix::sys::signal::kill(daemon.pid(), nix::sys::signal::Signal::SIGTERM).expect("term");
    let status = daemon.child.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(!daemon.socket().exists(), "socket left after SIGTERM");
}

#[test]
fn bad_config_names_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("ingot.toml");
    std::fs::write(&config, "lisen = \"unix:///tmp/x.sock\"\n").expect("config");
    let output = Command::new(ingotd_binary())
        .arg("--config")
        .arg(&config)
        .output()
        .expect("ingotd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("lisen"), "{stderr}");

    let output = Command::new(ingotd_binary())
        .args(["--listen", "tcp://127.0.0.1:1"])
        .output()
        .expect("ingotd");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("listen"));
}

/// `--help` and `--version` answer and exit 0 without starting anything; an unknown flag
/// fails naming it and the known ones.
#[test]
fn help_version_and_unknown_flags() {
    let output = Command::new(ingotd_binary())
        .arg("--help")
        .output()
        .expect("ingotd");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("usage: ingotd") && stdout.contains("--state"),
        "{stdout}"
    );
    let output = Command::new(ingotd_binary())
        .arg("--version")
        .output()
        .expect("ingotd");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("ingotd {}", env!("CARGO_PKG_VERSION"))
    );
    let output = Command::new(ingotd_binary())
        .arg("--bogus")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("ingotd");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown flag --bogus") && stderr.contains("--config"),
        "{stderr}"
    );
}

fn spec(image: &str) -> Option<v1::ImageSpec> {
    Some(v1::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

async fn pull(
    client: &mut ImageServiceClient<Channel>,
    image: &str,
) -> Result<String, tonic::Status> {
    client
        .pull_image(v1::PullImageRequest {
            image: spec(image),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

#[tokio::test(flavor = "current_thread")]
async fn images_from_a_real_registry() {
    let registry = ingot_tests::Registry::start().expect("registry");
    registry
        .push_test_image("ingot/busybox:test")
        .expect("push");
    registry
        .push_test_image("e2e/busybox:1.0")
        .expect("push mirror copy");
    let mirror = format!(
        "[registries.\"registry.k8s.io\"]\nmirrors = [\"http://{}\"]\n",
        registry.address
    );
    let mut daemon = Daemon::start(&mirror);
    let mut images = ImageServiceClient::new(channel(&daemon.socket()).await);

    let name = format!("{}/ingot/busybox:test", registry.address);
    let id = pull(&mut images, &name).await.expect("pull by tag");
    assert!(id.starts_with("sha256:"), "{id}");

    let listed = images
        .list_images(v1::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].repo_tags, vec![name.clone()]);
    assert!(
        listed[0].size > 1_000_000,
        "busybox layer: {}",
        listed[0].size
    );
    assert_eq!(listed[0].uid.as_ref().map(|u| u.value), Some(0));
    let repo_digest = listed[0].repo_digests[0].clone();
    assert!(repo_digest.contains("@sha256:"), "{repo_digest}");

    // By digest, and through the mirror configured for registry.k8s.io (no network here).
    assert_eq!(
        pull(&mut images, &repo_digest)
            .await
            .expect("pull by digest"),
        id
    );
    assert_eq!(
        pull(&mut images, "registry.k8s.io/e2e/busybox:1.0")
            .await
            .expect("pull via mirror"),
        id
    );

    let status = images
        .image_status(v1::ImageStatusRequest {
            image: spec("registry.k8s.io/e2e/busybox:1.0"),
            verbose: true,
        })
        .await
        .expect("status")
        .into_inner();
    let image = status.image.expect("image");
    assert_eq!(image.id, id);
    assert_eq!(image.repo_tags.len(), 2, "{:?}", image.repo_tags);
    assert!(status.info["info"].contains("\"architecture\""));
    let missing = images
        .image_status(v1::ImageStatusRequest {
            image: spec("docker.io/library/nothere:1"),
            verbose: false,
        })
        .await
        .expect("status of a missing image")
        .into_inner();
    assert!(missing.image.is_none());

    let fs = images
        .image_fs_info(v1::ImageFsInfoRequest {})
        .await
        .expect("fs info")
        .into_inner();
    let used = fs.image_filesystems[0].used_bytes.as_ref().map(|u| u.value);
    assert!(used.unwrap_or(0) > 1_000_000, "{used:?}");

    // Bad input: each with its code and the thing named.
    let err = pull(
        &mut images,
        &format!("{}/ingot/busybox:nope", registry.address),
    )
    .await
    .expect_err("unknown tag");
    assert_eq!(err.code(), tonic::Code::NotFound, "{}", err.message());
    assert!(err.message().contains("busybox:nope"), "{}", err.message());
    let err = pull(&mut images, "Not A Reference")
        .await
        .expect_err("bad ref");
    assert_eq!(
        err.code(),
        tonic::Code::InvalidArgument,
        "{}",
        err.message()
    );
    let err = pull(&mut images, "").await.expect_err("empty");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("image.image"), "{}", err.message());

    // Persisted: a restarted ingotd still lists it.
    nix::sys::signal::kill(daemon.pid(), nix::sys::signal::Signal::SIGTERM).expect("term");
    daemon.child.wait().expect("wait");
    let restarted = Daemon::restart(daemon);
    let mut images = ImageServiceClient::new(channel(&restarted.socket()).await);
    let listed = images
        .list_images(v1::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert_eq!(
        listed.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
        vec![id.clone()]
    );

    images
        .remove_image(v1::RemoveImageRequest { image: spec(&name) })
        .await
        .expect("remove");
    images
        .remove_image(v1::RemoveImageRequest { image: spec(&name) })
        .await
        .expect("removing again succeeds");
    let listed = images
        .list_images(v1::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert!(listed.is_empty(), "{listed:?}");
}
