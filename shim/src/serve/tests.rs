use std::{
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use containerd_shim::protos::{
    api,
    shim::shim_ttrpc::{Task, TaskClient},
    ttrpc::{self, context, Code, TtrpcContext},
};

use super::*;

/// State answers at once with the id it was asked about; Wait blocks until the test lets it go.
struct Fake {
    release: Mutex<mpsc::Receiver<u32>>,
}

impl Task for Fake {
    fn state(&self, _: &TtrpcContext, req: api::StateRequest) -> ttrpc::Result<api::StateResponse> {
        if req.id == "bad" {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                Code::NOT_FOUND,
                "container bad: not found",
            )));
        }
        Ok(api::StateResponse {
            id: req.id,
            ..Default::default()
        })
    }

    fn wait(&self, _: &TtrpcContext, _: api::WaitRequest) -> ttrpc::Result<api::WaitResponse> {
        let status = self
            .release
            .lock()
            .expect("lock")
            .recv()
            .map_err(|e| ttrpc::Error::Others(e.to_string()))?;
        Ok(api::WaitResponse {
            exit_status: status,
            ..Default::default()
        })
    }
}

fn serving(dir: &std::path::Path, service: &str) -> (Server, String, mpsc::Sender<u32>) {
    let (release, waits) = mpsc::channel();
    let fake: Arc<dyn Task + Send + Sync> = Arc::new(Fake {
        release: Mutex::new(waits),
    });
    let methods = task_methods(fake, service);
    let path = dir.join("s.sock");
    let server = Server::new(methods);
    server
        .start(UnixListener::bind(&path).expect("bind"))
        .expect("start");
    (server, format!("unix://{}", path.display()), release)
}

fn connect(address: &str) -> TaskClient {
    TaskClient::new(ttrpc::Client::connect(address).expect("connect"))
}

fn state(client: &TaskClient, id: &str) -> ttrpc::Result<api::StateResponse> {
    let req = api::StateRequest {
        id: id.into(),
        ..Default::default()
    };
    client.state(context::with_timeout(5_000_000_000), &req)
}

#[test]
fn calls_are_answered_and_a_blocked_wait_holds_up_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, address, release) = serving(dir.path(), "containerd.task.v3.Task");
    let client = connect(&address);
    assert_eq!(state(&client, "a").expect("state").id, "a");

    // A Wait on the same connection blocks in its handler; the calls after it are answered.
    let waiting = {
        let client = client.clone();
        std::thread::spawn(move || {
            client.wait(context::with_timeout(0), &api::WaitRequest::default())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    for id in ["b", "c"] {
        assert_eq!(
            state(&client, id).expect("state while a Wait blocks").id,
            id
        );
    }
    // A handler's error status reaches the client, and the connection stays.
    let err = state(&client, "bad").expect_err("not found");
    assert!(
        matches!(&err, ttrpc::Error::RpcStatus(s) if s.code() == Code::NOT_FOUND
            && s.message() == "container bad: not found"),
        "{err:?}"
    );
    assert!(!waiting.is_finished(), "the Wait did not block");
    release.send(137).expect("release");
    let waited = waiting.join().expect("join").expect("wait");
    assert_eq!(waited.exit_status, 137);
    assert_eq!(state(&client, "d").expect("state").id, "d");

    // A second client has its own connection.
    let other = connect(&address);
    assert_eq!(state(&other, "e").expect("state").id, "e");
    server.shutdown();
    assert!(state(&client, "f").is_err(), "served after shutdown");
}

#[test]
fn an_unknown_method_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The client calls containerd.task.v3.Task; this server knows only v2.
    let (server, address, _release) = serving(dir.path(), "containerd.task.v2.Task");
    let client = connect(&address);
    let err = state(&client, "a").expect_err("unknown");
    assert!(
        matches!(&err, ttrpc::Error::RpcStatus(s) if s.code() == Code::INVALID_ARGUMENT
            && s.message() == "/containerd.task.v3.Task/State does not exist"),
        "{err:?}"
    );
    server.shutdown();
}

#[test]
fn shutdown_waits_for_the_call_in_flight_and_refuses_new_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, address, release) = serving(dir.path(), "containerd.task.v3.Task");
    let client = connect(&address);
    assert_eq!(state(&client, "a").expect("state").id, "a");
    server.shutdown();
    // The connection's thread ended (joined above): the client's calls fail.
    assert!(state(&client, "b").is_err());
    // A connection accepted after shutdown is closed at once.
    if let Ok(raw) = ttrpc::Client::connect(&address) {
        assert!(state(&TaskClient::new(raw), "c").is_err());
    }
    drop(release);
}
