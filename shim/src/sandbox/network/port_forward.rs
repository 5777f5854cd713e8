//! `kubectl port-forward` into the VM.
//!
//! containerd (1.6 to 2.x) serves CRI PortForward by entering the pod's network namespace on
//! the host and dialing `localhost:PORT` there, which works for runc because the pod's
//! containers share that namespace. A veil pod's containers listen inside the VM, so nothing
//! would answer. The shim therefore:
//!
//! 1. listens on an ephemeral port of `127.0.0.1` inside the pod's namespace;
//! 2. installs one nftables rule there (table `veil_port_forward`, nat output hook) that
//!    redirects every other TCP connection to `127.0.0.1` onto that listener. Only
//!    containerd's port-forward dials loopback in that namespace: the pod's own processes
//!    are in the VM;
//! 3. reads each accepted connection's original port (`SO_ORIGINAL_DST`) and asks the agent
//!    to open `127.0.0.1:PORT` in the guest, then relays bytes both ways through the agent
//!    (ConnectPort, ReadConnection, WriteConnection, CloseConnection).
//!
//! Kata has no port-forward for the same reason (kata-containers#1693); containerd's proposed
//! sandbox PortForward API (containerd#14021) would let the shim serve it without the rule.
//!
//! A port nothing listens on in the guest: the host connection is reset (not closed
//! cleanly), so containerd reports an error to kubectl as it does when its own dial is
//! refused under runc.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::OriginalDst};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::{on_thread_in_netns, PodNetworkError};
use crate::agent::AgentClient;

/// The nftables table the shim owns in the pod's namespace.
pub const TABLE: &str = "veil_port_forward";

/// The most bytes moved host to guest in one agent call.
const CHUNK: usize = 64 * 1024;

/// Setting up port forwarding for a pod failed. The pod runs without it.
#[derive(Debug, thiserror::Error)]
pub enum PortForwardError {
    /// The namespace could not be entered.
    #[error(transparent)]
    Namespace(#[from] PodNetworkError),
    /// No listener on the namespace's loopback.
    #[error("listen on 127.0.0.1 in the pod network namespace {netns}: {source}; its loopback must be up (containerd's CNI setup brings it up)")]
    Listen {
        /// The namespace.
        netns: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `nft` refused or could not run.
    #[error("install the port-forward redirect with nft in the pod network namespace {netns}: {detail}; install nftables on the node (apt install nftables) and a kernel with nf_tables NAT (modprobe nft_redirect)")]
    Nft {
        /// The namespace.
        netns: PathBuf,
        /// nft's exit and stderr, or why it did not start.
        detail: String,
    },
}

/// The rules that redirect loopback connections in the pod's namespace to `listen_port`.
/// The table is created, emptied and filled in one transaction, so a restarted shim
/// replaces its predecessor's rule instead of adding a second one.
pub fn redirect_rules(listen_port: u16) -> String {
    format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tip daddr 127.0.0.1 tcp dport != {listen_port} redirect to :{listen_port}\n\
         \t}}\n\
         }}\n"
    )
}

/// Runs `nft -f -` with `script` in the calling thread's network namespace.
fn run_nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("write the rules to nft: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("wait for nft: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Serves port forwarding for one pod until stopped.
#[derive(Debug)]
pub struct PortForwarder {
    netns: PathBuf,
    accepting: JoinHandle<()>,
}

impl PortForwarder {
    /// Listens in `netns`, installs the redirect and relays every connection through `agent`.
    pub async fn start(
        netns: &Path,
        agent: AgentClient,
    ) -> Result<PortForwarder, PortForwardError> {
        let path = netns.to_path_buf();
        let (listener, listen_port) =
            on_thread_in_netns(netns, move || Ok(listen_and_redirect(&path))).await??;
        let listener =
            TcpListener::from_std(listener).map_err(|source| listen_error(netns, source))?;
        tracing::info!(netns = %netns.display(), listen_port, "port forwarding ready");
        Ok(PortForwarder {
            netns: netns.to_path_buf(),
            accepting: tokio::spawn(accept_connections(listener, agent)),
        })
    }

    /// Stops accepting, ends every relay and, if the namespace outlives the pod, removes the
    /// rule.
    pub async fn stop(&self) {
        self.accepting.abort();
        if !self.netns.exists() {
            return;
        }
        let removed = on_thread_in_netns(&self.netns, || {
            Ok(run_nft(&format!("delete table ip {TABLE}\n")))
        })
        .await;
        match removed {
            Ok(Ok(())) => {
                tracing::debug!(netns = %self.netns.display(), "port-forward rule removed")
            }
            Ok(Err(detail)) => {
                tracing::warn!(netns = %self.netns.display(), %detail, "could not remove the port-forward rule")
            }
            // The namespace went away meanwhile, and the rule with it.
            Err(error) => {
                tracing::debug!(%error, "pod network namespace gone before the rule's removal")
            }
        }
    }
}

fn listen_error(netns: &Path, source: std::io::Error) -> PortForwardError {
    PortForwardError::Listen {
        netns: netns.to_path_buf(),
        source,
    }
}

/// Runs on a thread inside the pod's namespace: binds the listener, then installs the rule
/// naming its port; returns both.
fn listen_and_redirect(netns: &Path) -> Result<(std::net::TcpListener, u16), PortForwardError> {
    let listener = std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .map_err(|source| listen_error(netns, source))?;
    listener
        .set_nonblocking(true)
        .map_err(|source| listen_error(netns, source))?;
    let port = listener
        .local_addr()
        .map_err(|source| listen_error(netns, source))?
        .port();
    run_nft(&redirect_rules(port)).map_err(|detail| PortForwardError::Nft {
        netns: netns.to_path_buf(),
        detail,
    })?;
    Ok((listener, port))
}

async fn accept_connections(listener: TcpListener, agent: AgentClient) {
    // Dropped with this task when the pod stops, which aborts every relay.
    let mut relays = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    relays.spawn(forward(stream, agent.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "port-forward accept failed");
                    // EMFILE and the like pass; do not spin on them.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = relays.join_next(), if !relays.is_empty() => {}
        }
    }
}

/// The port the connection was made to before the redirect.
fn original_port(stream: &TcpStream) -> std::io::Result<u16> {
    let address = getsockopt(stream, OriginalDst)?;
    Ok(u16::from_be(address.sin_port))
}

async fn forward(stream: TcpStream, agent: AgentClient) {
    let port = match original_port(&stream) {
        Ok(port) => port,
        Err(error) => {
            tracing::warn!(%error, "port-forward connection without an original destination");
            return reset(stream);
        }
    };
    let id = match agent.connect_port(port).await {
        Ok(id) => id,
        Err(error) => {
            tracing::warn!(port, %error, "port-forward refused in the VM");
            return reset(stream);
        }
    };
    tracing::debug!(port, id, "port-forward connection relayed");
    let (from_host, to_host) = stream.into_split();
    let relayed = tokio::try_join!(
        host_to_guest(from_host, &agent, id),
        guest_to_host(to_host, &agent, id)
    );
    if let Err(error) = relayed {
        tracing::debug!(port, id, %error, "port-forward connection ended with an error");
    }
    if let Err(error) = agent.close_connection(id, false).await {
        tracing::debug!(port, id, %error, "could not close the guest side");
    }
}

/// Ends a connection with a reset, which containerd reports as an error; a clean close would
/// look like a server that answered nothing.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
}

async fn host_to_guest(
    mut from_host: OwnedReadHalf,
    agent: &AgentClient,
    id: u64,
) -> crate::error::Result<()> {
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let n = from_host
            .read(&mut buffer)
            .await
            .map_err(crate::error::Error::io(
                "read the forwarded connection on the host",
            ))?;
        if n == 0 {
            return agent.close_connection(id, true).await;
        }
        agent.write_connection(id, buffer[..n].to_vec()).await?;
    }
}

async fn guest_to_host(
    mut to_host: OwnedWriteHalf,
    agent: &AgentClient,
    id: u64,
) -> crate::error::Result<()> {
    loop {
        let data = agent.read_connection(id).await?;
        if data.is_empty() {
            // The guest server finished; containerd sees the end of its answer.
            let _ = to_host.shutdown().await;
            return Ok(());
        }
        to_host
            .write_all(&data)
            .await
            .map_err(crate::error::Error::io(
                "write the forwarded connection on the host",
            ))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_redirects_every_other_loopback_port_to_the_listener() {
        let rules = redirect_rules(40123);
        assert!(rules.contains("table ip veil_port_forward {"), "{rules}");
        assert!(
            rules.contains("type nat hook output priority -100; policy accept;"),
            "{rules}"
        );
        assert!(
            rules.contains("ip daddr 127.0.0.1 tcp dport != 40123 redirect to :40123"),
            "{rules}"
        );
        // Created, emptied and refilled in one transaction: a second run replaces the first.
        let delete = rules
            .find("delete table ip veil_port_forward")
            .expect("delete");
        assert!(rules.find("table ip veil_port_forward\n").expect("create") < delete);
    }
}
