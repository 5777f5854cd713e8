//! The `veil-kbs` binary: starts, prints the address it listens on, serves the protocol.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use veil_kbs_client::{fetch_resource, Attester, KbsClientConfig, SampleClaims};
use veil_keybroker::admin::generate_admin_key;
use veil_keybroker::admin_client::AdminClient;

/// Kills the child on every exit path, including a failed assertion.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn binary_prints_its_address_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("admin.key");
    generate_admin_key(&key).unwrap();
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_veil-kbs"))
            .args(["--listen", "127.0.0.1:0", "--state"])
            .arg(dir.path().join("state"))
            .arg("--admin-pubkey")
            .arg(dir.path().join("admin.key.pub"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("veil-kbs printed no address within 30 s");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    let url = format!("http://{addr}");

    let admin = AdminClient::from_key_file(&url, &key).unwrap();
    admin.put_resource("m/key/a", b"secret").unwrap();
    admin
        .set_policy("m/key/a", "claims.tee == 'sample'")
        .unwrap();
    let config = KbsClientConfig::new(url, Attester::Sample(SampleClaims::default()));
    assert_eq!(
        fetch_resource(&config, "m/key/a").unwrap().as_slice(),
        b"secret"
    );
}

#[test]
fn binary_refuses_to_start_without_an_admin_key() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_veil-kbs"))
        .args(["--listen", "127.0.0.1:0", "--state"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("never anonymous"), "{stderr}");
}
