//! Pod networking through containerd's CRI, with real CNI plugins (Debian's
//! `containernetworking-plugins`: bridge + host-local): a veil pod gets its pod IP inside
//! the VM (the shim mirrors the pod's veth to a tap with tc redirects), a container
//! serving HTTP in it answers on the pod IP from the host and from a runc pod on the
//! same bridge (another network namespace), and nothing is left once the pod is removed.
//! Needs root, the built artifacts (`make test`) and `containernetworking-plugins`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_cri::v1::PodSandboxConfig;
use veil_integration::cri::{self, CniBridge, CriClient, RUNC_HANDLER, VEIL_HANDLER};
use veil_integration::streaming::PortForward;
use veil_integration::{eventually, Containerd, Options};

const EXEC: Duration = Duration::from_secs(60);
const PORT: u16 = 8080;
/// What the serving container's HTTP server answers.
const GREETING: &str = "hello-from-the-veil-pod";
/// How long the server in the VM gets to answer its first request.
const FIRST_ANSWER: Duration = Duration::from_secs(120);

/// The bridge network of test number `index`: each test has its own bridge and subnet, as
/// the tests run in parallel and each removes its bridge when it ends.
fn network(index: u8) -> CniBridge {
    CniBridge {
        name: format!("veil-it-net{index}"),
        bridge: format!("veilit{index}"),
        subnet: format!("10.88.{}.0/24", 77 + index),
        gateway: format!("10.88.{}.1", 77 + index),
        ipv6: None,
    }
}

/// [`network`] with an IPv6 subnet too (dual stack).
fn dual_stack_network(index: u8) -> CniBridge {
    CniBridge {
        ipv6: Some((
            format!("fd00:88:{}::/64", 77 + index),
            format!("fd00:88:{}::1", 77 + index),
        )),
        ..network(index)
    }
}

/// Removes the host bridge however the test ends.
struct BridgeGuard(CniBridge);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        cri::remove_cni_bridge(&self.0);
    }
}

struct Cluster {
    cri: CriClient,
    containerd: Containerd,
    _bridge: BridgeGuard,
    /// Pods not removed yet: a failing test removes them on drop, so CNI releases their
    /// network namespaces (containerd's own exit would leave them mounted).
    pods: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for pod in std::mem::take(&mut self.pods) {
            let _ = self.cri.stop_pod_sandbox(&pod);
            let _ = self.cri.remove_pod_sandbox(&pod);
        }
    }
}

fn cluster(network: CniBridge) -> Cluster {
    cri::remove_cni_bridge(&network);
    let containerd = Containerd::start_cri(&Options::default()).expect("start containerd with CRI");
    cri::install_cni_bridge(&containerd, &network).unwrap_or_else(|e| panic!("{e:#}"));
    cri::import_images(&containerd).expect("import the images into k8s.io");
    let mut cri = CriClient::connect(&containerd.socket)
        .unwrap_or_else(|e| panic!("CRI client: {e:#}\n{}", containerd.log()));
    cri.wait_network_ready(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", containerd.log()));
    Cluster {
        cri,
        containerd,
        _bridge: BridgeGuard(network),
        pods: Vec::new(),
    }
}

impl Cluster {
    fn pod(&mut self, name: &str, handler: &str) -> (String, PodSandboxConfig) {
        let dir = self.containerd.dir().join("pods").join(name);
        std::fs::create_dir_all(&dir).expect("create the pod dir");
        let config = cri::pod_network_pod(name, &dir, HashMap::new());
        let id = self
            .cri
            .run_pod_sandbox(&config, handler)
            .unwrap_or_else(|e| {
                panic!(
                    "RunPodSandbox {name} ({handler:?}): {e:#}\n{}",
                    self.containerd.log()
                )
            });
        self.pods.push(id.clone());
        (id, config)
    }

    fn pod_ip(&mut self, pod: &str) -> Ipv4Addr {
        let status = self.cri.pod_sandbox_status(pod).expect("PodSandboxStatus");
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        ip.parse()
            .unwrap_or_else(|_| panic!("pod {pod} has no IPv4 pod IP in its status: {ip:?}"))
    }

    fn start(
        &mut self,
        pod: &str,
        sandbox: &PodSandboxConfig,
        name: &str,
        command: &[&str],
    ) -> String {
        let container = cri::in_pod_network(cri::busybox_container(name, command, Vec::new()));
        let id = self
            .cri
            .create_container(pod, &container, sandbox)
            .unwrap_or_else(|e| {
                panic!(
                    "CreateContainer {name}: {e:#}\n{}\n{}",
                    self.containerd.log(),
                    cri::console_log(&self.containerd, pod)
                )
            });
        self.cri.start_container(&id).unwrap_or_else(|e| {
            panic!(
                "StartContainer {name}: {e:#}\n{}\n{}",
                self.containerd.log(),
                cri::console_log(&self.containerd, pod)
            )
        });
        id
    }

    fn exec(&mut self, id: &str, command: &[&str]) -> cri::ExecOutput {
        let output = self.cri.exec_sync(id, command, EXEC).unwrap_or_else(|e| {
            panic!(
                "ExecSync {command:?} in {id}: {e:#}\n{}",
                self.containerd.log()
            )
        });
        assert_eq!(output.exit_code, 0, "{command:?} in {id}: {output:?}");
        output
    }

    fn remove_pod(&mut self, pod: &str) {
        self.cri.stop_pod_sandbox(pod).expect("StopPodSandbox");
        self.cri.remove_pod_sandbox(pod).expect("RemovePodSandbox");
        self.pods.retain(|p| p != pod);
    }
}

/// The shell command of a container serving [`GREETING`] over HTTP on `listen` (busybox
/// httpd's `[IP:]PORT`), after running `setup` (empty, or commands ending in `&& `) in the
/// created /srv/www.
fn serve_greeting(listen: &str, setup: &str) -> String {
    format!(
        "mkdir -p /srv/www && echo {GREETING} > /srv/www/index.html && {setup}exec busybox httpd -f -p {listen} -h /srv/www"
    )
}

/// One HTTP/1.0 GET of `/` from `address`; the whole answer.
fn http_get(address: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// Asks `address` until it answers with the greeting (the server in the VM may still be
/// starting) or `timeout` passes; the last answer or error otherwise.
fn http_get_until_greeted(address: SocketAddr, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let outcome = http_get(address);
        match outcome {
            Ok(answer) if answer.contains(GREETING) => return Ok(answer),
            other if Instant::now() >= deadline => return Err(format!("{other:?}")),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// The network namespace path the sandbox's spec joins (what CNI set up).
fn sandbox_netns(containerd: &Containerd, pod: &str) -> PathBuf {
    let spec = cri::bundle_spec(containerd, pod).expect("sandbox bundle spec");
    let path = spec["linux"]["namespaces"]
        .as_array()
        .and_then(|namespaces| {
            namespaces
                .iter()
                .find(|ns| ns["type"] == "network")
                .and_then(|ns| ns["path"].as_str())
        })
        .unwrap_or_else(|| panic!("the sandbox spec joins no network namespace: {spec}"));
    PathBuf::from(path)
}

/// `ip -o link` inside the network namespace open at `/proc/self/fd/<fd>`.
fn links_in(namespace: &std::fs::File) -> String {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/{}/fd/{}", std::process::id(), namespace.as_raw_fd());
    let output = std::process::Command::new("nsenter")
        .arg(format!("--net={path}"))
        .args(["ip", "-o", "link"])
        .output()
        .expect("run nsenter ip link");
    assert!(output.status.success(), "nsenter: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn host_links() -> String {
    let output = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("run ip link");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .expect("host boot id")
        .trim()
        .to_string()
}

#[test]
fn the_pod_ip_reaches_the_serving_container_in_the_vm_from_the_host_and_another_namespace() {
    let network = network(0);
    let mut cluster = cluster(network.clone());
    let (pod, sandbox) = cluster.pod("web", VEIL_HANDLER);
    let pod_ip = cluster.pod_ip(&pod);
    let netns = sandbox_netns(&cluster.containerd, &pod);
    let pod_namespace = std::fs::File::open(&netns)
        .unwrap_or_else(|e| panic!("open the pod network namespace {}: {e}", netns.display()));
    assert!(
        links_in(&pod_namespace).contains("tap0_veil"),
        "no tap in the pod namespace: {}",
        links_in(&pod_namespace)
    );

    let serve = serve_greeting(&PORT.to_string(), "");
    let web = cluster.start(&pod, &sandbox, "web", &["sh", "-c", &serve]);

    // The container runs in the VM, and the VM holds the pod IP and CNI's default route.
    let guest_boot_id = cluster.exec(&web, &["cat", "/proc/sys/kernel/random/boot_id"]);
    assert_ne!(
        guest_boot_id.stdout.trim(),
        boot_id(),
        "the container runs on the host"
    );
    let addresses = cluster.exec(&web, &["busybox", "ip", "-4", "addr"]);
    assert!(
        addresses.stdout.contains(&format!("inet {pod_ip}/24")),
        "the guest lacks the pod IP {pod_ip}: {}",
        addresses.stdout
    );
    let routes = cluster.exec(&web, &["busybox", "ip", "-4", "route"]);
    assert!(
        routes
            .stdout
            .contains(&format!("default via {}", network.gateway)),
        "the guest lacks CNI's default route: {}",
        routes.stdout
    );
    // The container joined the sandbox's UTS namespace, where the pod's hostname is set.
    let hostname = cluster.exec(&web, &["hostname"]);
    assert_eq!(
        hostname.stdout.trim(),
        sandbox.hostname,
        "the container does not share the pod's UTS namespace"
    );

    // From the host, through the bridge.
    let address = SocketAddr::from((pod_ip, PORT));
    let answer = http_get_until_greeted(address, FIRST_ANSWER).unwrap_or_else(|last| {
        panic!(
            "no greeting from {address} on the host: {last}\n{}",
            cri::console_log(&cluster.containerd, &pod)
        )
    });
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");

    // From another network namespace: a runc pod on the same bridge.
    let (client_pod, client_sandbox) = cluster.pod("client", RUNC_HANDLER);
    let client_ip = cluster.pod_ip(&client_pod);
    assert_ne!(client_ip, pod_ip);
    let client = cluster.start(&client_pod, &client_sandbox, "client", &["sleep", "600"]);
    // busybox-static's wget crashes without the host's NSS libraries; nc does not resolve.
    let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc {pod_ip} {PORT}");
    let fetched = cluster.exec(&client, &["sh", "-c", &get]);
    assert!(
        fetched.stdout.starts_with("HTTP/1.1 200 OK") && fetched.stdout.contains(GREETING),
        "{fetched:?}"
    );

    // The guest can reach the other pod too (replies and new connections both ways).
    let ping = cluster.exec(
        &web,
        &[
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "5",
            &client_ip.to_string(),
        ],
    );
    assert!(ping.stdout.contains("1 packets received"), "{ping:?}");

    cluster.remove_pod(&client_pod);
    cluster.remove_pod(&pod);
    let containerd = &cluster.containerd;
    assert!(
        eventually(Duration::from_secs(60), || containerd
            .qemu_processes()
            .is_empty()),
        "QEMU still running: {:?}",
        containerd.qemu_processes()
    );
    assert!(
        eventually(Duration::from_secs(30), || !links_in(&pod_namespace)
            .contains("_veil")),
        "the tap outlived the pod: {}",
        links_in(&pod_namespace)
    );
    assert!(!netns.exists(), "containerd left {}", netns.display());
    assert!(
        !host_links().contains("_veil"),
        "a tap on the host: {}",
        host_links()
    );
    assert!(
        cri::veil_state_entries(containerd).is_empty(),
        "veil state left: {:?}",
        cri::veil_state_entries(containerd)
    );
}

#[test]
fn a_host_network_pod_gets_no_pod_nic() {
    let mut cluster = cluster(network(1));
    let dir = cluster.containerd.dir().join("pods/host");
    std::fs::create_dir_all(&dir).expect("pod dir");
    let sandbox = cri::host_network_pod("host", &dir, HashMap::new());
    let pod = cluster
        .cri
        .run_pod_sandbox(&sandbox, VEIL_HANDLER)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e:#}\n{}", cluster.containerd.log()));
    let container = cri::busybox_container("links", &["sleep", "600"], Vec::new());
    let id = cluster
        .cri
        .create_container(&pod, &container, &sandbox)
        .expect("CreateContainer");
    cluster.cri.start_container(&id).expect("StartContainer");
    let links = cluster.exec(&id, &["cat", "/proc/net/dev"]);
    assert!(
        !links.stdout.contains("eth"),
        "a host-network pod's VM has a NIC: {}",
        links.stdout
    );
    assert!(!host_links().contains("_veil"), "{}", host_links());
    cluster.remove_pod(&pod);
}

/// A pod with both NICs: the egress NIC delivers the sealed model (the store is on the
/// node's loopback, reached through slirp's on-link gateway) while the pod network owns
/// the default route, and the model server answers on the pod IP from the host.
#[test]
fn a_delivering_pod_serves_on_its_pod_ip_while_the_pod_network_owns_the_default_route() {
    let owner = veil_integration::owner::ModelOwner::start(43, 0).expect("model owner");
    let network = network(2);
    let mut cluster = cluster(network.clone());
    cri::import_model_server(&cluster.containerd).expect("import the serving image");
    let dir = cluster.containerd.dir().join("pods/served");
    std::fs::create_dir_all(&dir).expect("pod dir");
    let annotations: HashMap<String, String> = owner
        .annotations_allowing_exec("model")
        .into_iter()
        .collect();
    let sandbox = cri::pod_network_pod("served", &dir, annotations);
    let pod = cluster
        .cri
        .run_pod_sandbox(&sandbox, VEIL_HANDLER)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e:#}\n{}", cluster.containerd.log()));
    cluster.pods.push(pod.clone());
    let pod_ip = cluster.pod_ip(&pod);

    // The model volume is a guest tmpfs; the host side is only the bind source.
    let volume = dir.join("volumes/model");
    std::fs::create_dir_all(&volume).expect("volume dir");
    let server = cri::in_pod_network(cri::model_server_container(
        &volume,
        &format!("0.0.0.0:{PORT}"),
    ));
    let id = cluster
        .cri
        .create_container(&pod, &server, &sandbox)
        .unwrap_or_else(|e| panic!("CreateContainer: {e:#}\n{}", cluster.containerd.log()));
    cluster.cri.start_container(&id).unwrap_or_else(|e| {
        panic!(
            "StartContainer (after the delivery): {e:#}\n{}",
            cri::console_log(&cluster.containerd, &pod)
        )
    });

    let routes = cluster.exec(&id, &["busybox", "ip", "-4", "route"]);
    assert!(
        routes
            .stdout
            .contains(&format!("default via {}", network.gateway))
            && !routes.stdout.contains("default via 10.0.2.2"),
        "the pod network must own the default route: {}",
        routes.stdout
    );
    assert!(
        routes.stdout.contains("10.0.2.0/24"),
        "the egress NIC keeps its subnet: {}",
        routes.stdout
    );
    // The pod NIC has CNI's name, even though the egress NIC was probed first.
    let eth0 = cluster.exec(&id, &["busybox", "ip", "-4", "addr", "show", "dev", "eth0"]);
    assert!(
        eth0.stdout.contains(&format!("inet {pod_ip}/")),
        "the pod IP is not on eth0 in the guest: {}",
        eth0.stdout
    );
    cluster.exec(
        &id,
        &["busybox", "ip", "link", "show", "dev", "veil-egress"],
    );

    let binary = veil_integration::model_server_binary().expect("the static model server");
    let query = std::process::Command::new(binary)
        .args(["query", "--url", &format!("http://{pod_ip}:{PORT}")])
        .args(["--input", "5.1,3.5,1.4,0.2", "--wait-secs", "120"])
        .output()
        .expect("run veil-model-server query on the host");
    assert!(
        query.status.success() && String::from_utf8_lossy(&query.stdout).contains("label"),
        "no prediction from {pod_ip}:{PORT} on the host: {query:?}\n{}",
        cri::console_log(&cluster.containerd, &pod)
    );
    cluster.remove_pod(&pod);
}

/// One HTTP/1.0 GET of `/` through CRI PortForward, as `kubectl port-forward` relays a client
/// connection; the data that came back.
fn forwarded_get(cluster: &mut Cluster, pod: &str) -> anyhow::Result<String> {
    let url = cluster.cri.port_forward(pod, &[PORT])?;
    let mut forward = PortForward::connect(&url, PORT)?;
    forward.send(b"GET / HTTP/1.0\r\n\r\n")?;
    let answer = forward.read_data_until(GREETING, Duration::from_secs(20));
    forward.close();
    answer
}

/// The size of the larger file served through port-forward.
const BIG: usize = 4 << 20;

/// `kubectl port-forward`: containerd dials `localhost:PORT` in the pod's network namespace
/// on the host. The server listens on the pod's 127.0.0.1 only, so only that loopback path
/// reaches it, not the pod IP. Under veil the shim takes the connection in the namespace and
/// relays it to the guest's loopback; runc runs side by side as the reference. A port nobody
/// listens on is reported on the error channel by both.
#[test]
fn port_forward_reaches_a_server_on_the_pods_loopback_in_the_vm_as_on_runc() {
    let mut cluster = cluster(network(3));
    for handler in [VEIL_HANDLER, RUNC_HANDLER] {
        let (pod, sandbox) = cluster.pod(&format!("forward-{handler}"), handler);
        let big_file = format!("head -c {BIG} /dev/urandom > /srv/www/big && ");
        let serve = serve_greeting(&format!("127.0.0.1:{PORT}"), &big_file);
        cluster.start(&pod, &sandbox, "web", &["sh", "-c", &serve]);

        let deadline = Instant::now() + FIRST_ANSWER;
        let answer = loop {
            match forwarded_get(&mut cluster, &pod) {
                Ok(answer) => break answer,
                Err(error) if Instant::now() >= deadline => panic!(
                    "{handler}: no greeting through port-forward: {error:#}\n{}\n{}",
                    cluster.containerd.log(),
                    cri::console_log(&cluster.containerd, &pod)
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        };
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{handler}: {answer}");
        // A second connection works too: each forward is its own connection in the pod.
        let again = forwarded_get(&mut cluster, &pod)
            .unwrap_or_else(|e| panic!("{handler}: second port-forward: {e:#}"));
        assert!(again.contains(GREETING), "{handler}: {again}");

        // A larger answer crosses in many chunks, each way through the agent under veil.
        let url = cluster
            .cri
            .port_forward(&pod, &[PORT])
            .expect("PortForward");
        let mut forward = PortForward::connect(&url, PORT).expect("open the forward");
        forward
            .send(b"GET /big HTTP/1.0\r\n\r\n")
            .expect("send the request");
        let big = forward
            .read_data_to_end(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{handler}: GET /big: {e:#}"));
        let body = big
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|end| big.len() - end - 4);
        assert_eq!(body, Some(BIG), "{handler}: {} bytes in all", big.len());

        let pod_ip = cluster.pod_ip(&pod);
        let direct = http_get(SocketAddr::from((pod_ip, PORT)));
        assert!(
            !matches!(&direct, Ok(answer) if answer.contains(GREETING)),
            "{handler}: the loopback-only server answered on the pod IP: {direct:?}"
        );

        let closed_port = PORT + 1;
        let url = cluster
            .cri
            .port_forward(&pod, &[closed_port])
            .expect("PortForward");
        let mut forward = PortForward::connect(&url, closed_port).expect("open the forward");
        let error = forward
            .read_error(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{handler}: {e:#}"));
        assert!(
            error.contains(&format!("port {closed_port}")),
            "{handler}: the error channel does not name the port: {error:?}"
        );
        forward.close();
        cluster.remove_pod(&pod);
    }
}

/// A dual-stack pod (IPv4 and IPv6 from CNI's host-local): the guest NIC takes over the pod's
/// IPv6 address and default route too, and the serving container in the VM answers on the
/// pod's IPv6 address from the host.
#[test]
fn a_dual_stack_pod_answers_on_its_ipv6_address_in_the_vm() {
    let network = dual_stack_network(4);
    let (_, gateway6) = network.ipv6.clone().expect("dual stack");
    let mut cluster = cluster(network);
    let (pod, sandbox) = cluster.pod("dual", VEIL_HANDLER);
    let status = cluster
        .cri
        .pod_sandbox_status(&pod)
        .expect("PodSandboxStatus");
    let ipv6: Ipv6Addr = status
        .network
        .iter()
        .flat_map(|n| n.additional_ips.iter())
        .find_map(|ip| ip.ip.parse().ok())
        .unwrap_or_else(|| panic!("no IPv6 pod IP in the sandbox status: {status:?}"));

    let serve = serve_greeting(&PORT.to_string(), "");
    let web = cluster.start(&pod, &sandbox, "web", &["sh", "-c", &serve]);
    let addresses = cluster.exec(&web, &["busybox", "ip", "-6", "addr"]);
    assert!(
        addresses.stdout.contains(&format!("inet6 {ipv6}/64")),
        "the guest lacks the pod's IPv6 address {ipv6}: {}",
        addresses.stdout
    );
    let routes = cluster.exec(&web, &["busybox", "ip", "-6", "route"]);
    assert!(
        routes.stdout.contains(&format!("default via {gateway6}")),
        "the guest lacks CNI's IPv6 default route: {}",
        routes.stdout
    );

    let address = SocketAddr::from((IpAddr::V6(ipv6), PORT));
    let answer = http_get_until_greeted(address, FIRST_ANSWER).unwrap_or_else(|last| {
        panic!(
            "no greeting from {address} on the host: {last}\n{}",
            cri::console_log(&cluster.containerd, &pod)
        )
    });
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    cluster.remove_pod(&pod);
}
