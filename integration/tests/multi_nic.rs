//! A pod network namespace with two interfaces (what Multus or a second CNI network gives a
//! pod): the VM gets one NIC per interface, each with its pod-side name, addresses and
//! routes, and both answer from the host. The namespace is made here with `ip` and handed to
//! a `ctr run` container by path, the way containerd hands CNI's namespace to a sandbox.
//! The interface created first is `net1`, so the guest kernel names its NIC `eth0` and the
//! agent must swap the two names. Needs root and the built artifacts (`make test`).

use std::process::Command;
use std::time::Duration;

use veil_integration::oci::BUSYBOX_IMAGE;
use veil_integration::{eventually, Containerd, VEIL_RUNTIME};

/// Runs `ip` with `args`; panics with its stderr when it fails.
fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A network namespace with two veths whose host ends are in the root namespace; all gone
/// on drop.
struct TwoNicNamespace {
    name: String,
    host_links: [String; 2],
}

impl TwoNicNamespace {
    /// `net1` (10.91.<n>.2/24, made first) and `eth0` (10.90.<n>.2/24, with the default
    /// route via 10.90.<n>.1); the host ends hold the .1 addresses.
    fn create(n: u8) -> TwoNicNamespace {
        let namespace = TwoNicNamespace {
            name: format!("veil-it-mnic{n}"),
            host_links: [format!("vmnic{n}a"), format!("vmnic{n}b")],
        };
        namespace.remove();
        ip(&["netns", "add", &namespace.name]);
        let netns = namespace.name.as_str();
        for (host, pod, subnet) in [
            (&namespace.host_links[0], "net1", 91),
            (&namespace.host_links[1], "eth0", 90),
        ] {
            let peer = format!("{host}p");
            ip(&["link", "add", host, "type", "veth", "peer", "name", &peer]);
            ip(&["link", "set", &peer, "netns", netns]);
            ip(&["-n", netns, "link", "set", &peer, "name", pod]);
            ip(&[
                "-n",
                netns,
                "addr",
                "add",
                &format!("10.{subnet}.{n}.2/24"),
                "dev",
                pod,
            ]);
            ip(&["-n", netns, "link", "set", pod, "up"]);
            ip(&["addr", "add", &format!("10.{subnet}.{n}.1/24"), "dev", host]);
            ip(&["link", "set", host, "up"]);
        }
        ip(&["-n", netns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            netns,
            "route",
            "add",
            "default",
            "via",
            &format!("10.90.{n}.1"),
        ]);
        namespace
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    fn remove(&self) {
        for link in &self.host_links {
            let _ = Command::new("ip").args(["link", "del", link]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

impl Drop for TwoNicNamespace {
    fn drop(&mut self) {
        self.remove();
    }
}

/// One ping with the host's busybox (busybox-static, which setup installs).
fn ping(address: &str) -> bool {
    Command::new("busybox")
        .args(["ping", "-c", "1", "-W", "2", address])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn two_pod_interfaces_become_two_named_nics_in_the_vm() {
    let n = 1;
    let namespace = TwoNicNamespace::create(n);
    let containerd = Containerd::start().expect("start containerd");
    containerd.import_busybox().expect("import busybox");
    let id = "two-nics";
    let with_ns = format!("network:{}", namespace.path());
    let started = containerd
        .run_ctr(
            &[
                "run",
                "-d",
                "--runtime",
                VEIL_RUNTIME,
                "--with-ns",
                &with_ns,
                BUSYBOX_IMAGE,
                id,
                "sleep",
                "300",
            ],
            None,
            Duration::from_secs(300),
        )
        .expect("ctr run");
    assert_eq!(
        started.code,
        0,
        "ctr run -d: {started:?}\n{}",
        containerd.log()
    );

    let addresses = containerd
        .exec(id, "addr", &["busybox", "ip", "-o", "-4", "addr"])
        .expect("ctr task exec");
    let line_of = |name: &str| {
        addresses
            .stdout
            .lines()
            .find(|line| line.split_whitespace().nth(1) == Some(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        line_of("eth0").contains(&format!("inet 10.90.{n}.2/24")),
        "eth0 in the guest lacks its address: {}\n{}",
        addresses.stdout,
        containerd.console_log(id)
    );
    assert!(
        line_of("net1").contains(&format!("inet 10.91.{n}.2/24")),
        "net1 in the guest lacks its address: {}",
        addresses.stdout
    );
    let routes = containerd
        .exec(id, "route", &["busybox", "ip", "-4", "route"])
        .expect("ctr task exec");
    assert!(
        routes
            .stdout
            .contains(&format!("default via 10.90.{n}.1 dev eth0")),
        "the default route is not via eth0: {}",
        routes.stdout
    );

    for address in [format!("10.90.{n}.2"), format!("10.91.{n}.2")] {
        assert!(
            eventually(Duration::from_secs(30), || ping(&address)),
            "{address} does not answer from the host\n{}",
            containerd.console_log(id)
        );
    }
    containerd.remove(id);
    assert!(
        eventually(Duration::from_secs(30), || containerd
            .qemu_processes()
            .is_empty()),
        "VM left behind"
    );
}
