//! Runs the real `veil-model-server` binary: generates the demo model, serves it on a free port,
//! checks every endpoint and the `query` client, then stops it with SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use veil_model_server::problem::Problem;
use veil_model_server::{Model, ModelInfo, Prediction};

const BINARY: &str = env!("CARGO_BIN_EXE_veil-model-server");
const STARTUP_LIMIT: Duration = Duration::from_secs(30);
const EXIT_LIMIT: Duration = Duration::from_secs(10);
const CANARY: &str = "serve-test-canary-7f3a";
const IRIS_SETOSA: [f32; 4] = [5.1, 3.5, 1.4, 0.2];

/// Kills the server if a test fails before stopping it.
struct RunningServer {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RunningServer {
    fn start(model: &Path, log_dir: &Path) -> RunningServer {
        let log = log_dir.join("server.log");
        let mut child = Command::new(BINARY)
            .args(["serve", "--listen", "127.0.0.1:0", "--model"])
            .arg(model)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (lines, first_line) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = lines.send(line);
        });
        let mut server = RunningServer {
            child,
            addr: String::new(),
            log,
        };
        let line = first_line.recv_timeout(STARTUP_LIMIT).unwrap_or_else(|_| {
            panic!(
                "no 'listening on' line within {STARTUP_LIMIT:?}; log:\n{}",
                server.log_text()
            )
        });
        server.addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        server
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        kill(pid, Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + EXIT_LIMIT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the server did not exit within {EXIT_LIMIT:?} of SIGTERM");
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BINARY).args(args).output().unwrap()
}

fn demo_model(dir: &Path) -> PathBuf {
    let out = dir.join("model");
    let output = run(&[
        "demo-model",
        "--out",
        out.to_str().unwrap(),
        "--canary",
        CANARY,
    ]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (sha256, path) = stdout.trim().split_once("  ").unwrap();
    assert_eq!(sha256.len(), 64);
    assert_eq!(Path::new(path), out.join("model.safetensors"));
    out
}

/// (status, body) of one request; no status is treated as an error.
fn http(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build();
    let agent = ureq::Agent::new_with_config(config);
    let answer = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("POST", Some(body)) => agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body),
        ("POST", None) => agent.post(url).send_empty(),
        _ => agent.delete(url).call(),
    };
    let mut response = answer.unwrap();
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

fn problem(body: &str) -> Problem {
    serde_json::from_str(body).unwrap_or_else(|error| panic!("{error}: {body}"))
}

#[test]
fn serves_every_endpoint_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = demo_model(dir.path());
    let model = Model::load(&model_dir).unwrap();
    let server = RunningServer::start(&model_dir, dir.path());
    let url = server.url();

    assert_eq!(
        http("GET", &format!("{url}/healthz"), None),
        (200, "ok".to_owned())
    );

    let (status, body) = http("GET", &format!("{url}/v1/models"), None);
    assert_eq!(status, 200);
    let info: ModelInfo = serde_json::from_str(&body).unwrap();
    assert_eq!(info, model.info());
    assert!(!body.contains(CANARY), "{body}");

    let (status, body) = http(
        "POST",
        &format!("{url}/v1/predict"),
        Some(r#"{"inputs":[5.1,3.5,1.4,0.2]}"#),
    );
    assert_eq!(status, 200, "{body}");
    let prediction: Prediction = serde_json::from_str(&body).unwrap();
    assert_eq!(prediction, model.predict(&IRIS_SETOSA).unwrap());

    let (status, body) = http("POST", &format!("{url}/v1/predict"), Some("{not json"));
    assert_eq!(status, 400);
    assert!(
        problem(&body).expected.unwrap().contains("\"inputs\""),
        "{body}"
    );

    let (status, body) = http(
        "POST",
        &format!("{url}/v1/predict"),
        Some(r#"{"inputs":[1,2]}"#),
    );
    assert_eq!(status, 400);
    assert_eq!(problem(&body).detail, "expected 4 input values, got 2");

    let (status, body) = http(
        "POST",
        &format!("{url}/v1/predict"),
        Some(r#"{"inputs":[1,-1e300,3,4]}"#),
    );
    assert_eq!(status, 400);
    assert!(
        problem(&body)
            .detail
            .starts_with("inputs[1] is not a finite"),
        "{body}"
    );

    let (status, body) = http("GET", &format!("{url}/v1/nothing"), None);
    assert_eq!(status, 404);
    assert_eq!(problem(&body).status, 404);

    let (status, _) = http("GET", &format!("{url}/v1/predict"), None);
    assert_eq!(status, 405);

    let output = run(&["query", "--url", &url, "--health", "--wait-secs", "10"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");

    let output = run(&["query", "--url", &url, "--input", "5.1,3.5,1.4,0.2"]);
    assert!(output.status.success(), "{output:?}");
    let queried: Prediction = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(queried, model.predict(&IRIS_SETOSA).unwrap());

    let output = run(&["query", "--url", &url, "--input", "1,2,3"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("answered HTTP 400") && stderr.contains("expected 4 input values"),
        "{stderr}"
    );

    let log = server.log_text();
    let status = server.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    assert!(
        log.contains("model loaded") && log.contains(model.sha256()),
        "{log}"
    );
    assert!(
        log.contains("/v1/predict") && log.contains("status=400"),
        "{log}"
    );
    assert!(
        !log.contains(CANARY),
        "the canary leaked into the log:\n{log}"
    );
}

#[test]
fn query_fails_clearly_when_nothing_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");

    let output = run(&[
        "query",
        "--url",
        &url,
        "--input",
        "5.1,3.5,1.4,0.2",
        "--wait-secs",
        "5",
    ]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot reach"),
        "{output:?}"
    );

    let output = run(&["query", "--url", &url, "--health", "--wait-secs", "1"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("did not answer 200"),
        "{output:?}"
    );
}

#[test]
fn serve_refuses_a_bad_model_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("model.safetensors");
    std::fs::write(&bad, b"plain text, not a model").unwrap();
    let output = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--model",
        bad.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(bad.to_str().unwrap()) && stderr.contains("not a safetensors file"),
        "{stderr}"
    );

    let missing = dir.path().join("absent");
    let output = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--model",
        missing.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot read model file"),
        "{output:?}"
    );
}
