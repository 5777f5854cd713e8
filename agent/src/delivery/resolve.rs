//! Host names in the delivery's URLs, resolved without glibc.
//!
//! The agent is a static glibc binary: its `getaddrinfo` needs NSS modules that the
//! initramfs does not have, so `http://store.example/...` cannot be looked up the usual
//! way. [`GuestResolver`] asks the name servers of the guest's `/etc/resolv.conf` (the
//! agent writes it: QEMU user networking's DNS, 10.0.2.3) directly, with one DNS query
//! for IPv4 addresses over UDP. IP literals skip DNS.
//!
//! What the node can observe: the names the guest looks up (QEMU's DNS forwards them), as
//! it can observe the connections to the store and the broker anyway.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// The guest's resolver configuration.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// How long one server gets to answer one query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Queries per server before trying the next.
const TRIES_PER_SERVER: u32 = 2;
/// Datagrams read per query before giving up on stray ones (wrong id).
const MAX_DATAGRAMS: u32 = 8;
const DNS_PORT: u16 = 53;
const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;

/// Resolving a host name failed.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The name cannot be put in a DNS query.
    #[error("{0:?} is not a valid host name")]
    InvalidName(String),
    /// No name server is configured.
    #[error("{path} names no nameserver; the guest's egress network writes it")]
    NoServer {
        /// The resolver configuration read.
        path: String,
    },
    /// The name does not exist.
    #[error("{0} does not exist (NXDOMAIN)")]
    NotFound(String),
    /// The name exists but has no IPv4 address.
    #[error("{0} has no IPv4 address")]
    NoAddress(String),
    /// A server answered with an error code.
    #[error("name server {server} answered {name} with DNS error code {rcode}")]
    ServerFailure {
        /// The server.
        server: SocketAddr,
        /// The name asked for.
        name: String,
        /// The DNS RCODE.
        rcode: u8,
    },
    /// An answer could not be parsed.
    #[error("name server {server} sent a malformed answer for {name}")]
    Malformed {
        /// The server.
        server: SocketAddr,
        /// The name asked for.
        name: String,
    },
    /// No server could be reached.
    #[error("no name server answered for {name} ({detail})")]
    Unreachable {
        /// The name asked for.
        name: String,
        /// The last failure.
        detail: String,
    },
}

/// A ureq resolver that asks the name servers of a resolv.conf with plain DNS.
#[derive(Debug, Clone)]
pub struct GuestResolver {
    servers: Servers,
}

#[derive(Debug, Clone)]
enum Servers {
    /// Read the file at each lookup (the network comes up after the agent starts).
    ResolvConf(PathBuf),
    /// Fixed servers (tests).
    Fixed(Vec<SocketAddr>),
}

impl GuestResolver {
    /// Uses the name servers of [`RESOLV_CONF`].
    pub fn system() -> GuestResolver {
        GuestResolver {
            servers: Servers::ResolvConf(PathBuf::from(RESOLV_CONF)),
        }
    }

    /// Uses exactly `servers` (which may carry ports other than 53).
    pub fn with_servers(servers: Vec<SocketAddr>) -> GuestResolver {
        GuestResolver {
            servers: Servers::Fixed(servers),
        }
    }

    fn servers(&self) -> Result<Vec<SocketAddr>, ResolveError> {
        match &self.servers {
            Servers::Fixed(servers) => Ok(servers.clone()),
            Servers::ResolvConf(path) => {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let servers = nameservers(&text);
                if servers.is_empty() {
                    return Err(ResolveError::NoServer {
                        path: path.display().to_string(),
                    });
                }
                Ok(servers)
            }
        }
    }

    /// The IPv4 addresses of `name`.
    pub fn lookup(&self, name: &str) -> Result<Vec<Ipv4Addr>, ResolveError> {
        let servers = self.servers()?;
        let mut last = String::from("no server tried");
        for server in servers {
            for _ in 0..TRIES_PER_SERVER {
                match query_a(server, name) {
                    Ok(addresses) => return Ok(addresses),
                    Err(QueryError::Io(error)) => last = format!("{server}: {error}"),
                    Err(QueryError::Answer(error)) => return Err(error),
                }
            }
        }
        Err(ResolveError::Unreachable {
            name: name.to_string(),
            detail: last,
        })
    }
}

/// The `nameserver` entries of a resolv.conf text, on port 53.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            words.next()?.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, DNS_PORT))
        .collect()
}

impl Resolver for GuestResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let authority = uri
            .authority()
            .ok_or_else(|| ureq::Error::BadUri(format!("{uri} has no host")))?;
        let host = authority.host();
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if literal.parse::<IpAddr>().is_ok() {
            // No lookup needed: std parses literals without getaddrinfo.
            return DefaultResolver::default().resolve(uri, config, timeout);
        }
        let port = authority
            .port_u16()
            .or_else(|| match uri.scheme_str() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            })
            .ok_or_else(|| ureq::Error::BadUri(format!("{uri}: no port for its scheme")))?;
        let addresses = self.lookup(host).map_err(|error| {
            tracing::warn!(host, %error, "name lookup failed");
            match error {
                ResolveError::NotFound(_) | ResolveError::NoAddress(_) => ureq::Error::HostNotFound,
                other => ureq::Error::Io(std::io::Error::other(other.to_string())),
            }
        })?;
        let mut resolved = self.empty();
        for address in addresses {
            // ureq keeps a bounded number of addresses; the rest are not needed.
            if resolved
                .try_push(SocketAddr::new(IpAddr::V4(address), port))
                .is_err()
            {
                break;
            }
        }
        Ok(resolved)
    }
}

enum QueryError {
    /// Worth asking again or another server.
    Io(std::io::Error),
    /// A definite answer (or a definite failure to understand one).
    Answer(ResolveError),
}

fn query_a(server: SocketAddr, name: &str) -> Result<Vec<Ipv4Addr>, QueryError> {
    let id = query_id();
    let query = build_query(id, name).map_err(QueryError::Answer)?;
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).map_err(QueryError::Io)?;
    socket
        .set_read_timeout(Some(QUERY_TIMEOUT))
        .map_err(QueryError::Io)?;
    socket.connect(server).map_err(QueryError::Io)?;
    socket.send(&query).map_err(QueryError::Io)?;
    let mut buffer = [0u8; 1500];
    for _ in 0..MAX_DATAGRAMS {
        let length = socket.recv(&mut buffer).map_err(QueryError::Io)?;
        match parse_answer(id, name, &buffer[..length]) {
            Answer::OtherId => continue,
            Answer::Addresses(addresses) => return Ok(addresses),
            Answer::Failed(rcode) => {
                return Err(QueryError::Answer(match rcode {
                    3 => ResolveError::NotFound(name.to_string()),
                    _ => ResolveError::ServerFailure {
                        server,
                        name: name.to_string(),
                        rcode,
                    },
                }))
            }
            Answer::Empty => {
                return Err(QueryError::Answer(ResolveError::NoAddress(
                    name.to_string(),
                )))
            }
            Answer::Malformed => {
                return Err(QueryError::Answer(ResolveError::Malformed {
                    server,
                    name: name.to_string(),
                }))
            }
        }
    }
    Err(QueryError::Io(std::io::Error::other(
        "only answers to other queries arrived",
    )))
}

/// A query id that another host cannot guess in advance (the answer must echo it).
fn query_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    hasher.finish() as u16
}

/// A recursive query for the A records of `name` (RFC 1035 section 4.1).
fn build_query(id: u16, name: &str) -> Result<Vec<u8>, ResolveError> {
    let invalid = || ResolveError::InvalidName(name.to_string());
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 {
        return Err(invalid());
    }
    let mut query = Vec::with_capacity(18 + trimmed.len());
    query.extend_from_slice(&id.to_be_bytes());
    // Flags: recursion desired. One question, no other records.
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in trimmed.split('.') {
        let length = u8::try_from(label.len()).map_err(|_| invalid())?;
        if length == 0 || length > 63 {
            return Err(invalid());
        }
        query.push(length);
        query.extend_from_slice(label.as_bytes());
    }
    query.push(0);
    query.extend_from_slice(&TYPE_A.to_be_bytes());
    query.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(query)
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Not the answer to this query.
    OtherId,
    /// The IPv4 addresses in the answer section.
    Addresses(Vec<Ipv4Addr>),
    /// No A record (e.g. only a CNAME without its target's address).
    Empty,
    /// RCODE other than 0.
    Failed(u8),
    /// Truncated or unparsable.
    Malformed,
}

fn be16(message: &[u8], at: usize) -> Option<u16> {
    let bytes = message.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

/// The offset just after the (possibly compressed) name at `at`.
fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
    // A name has at most 127 labels; the bound also stops malformed loops.
    for _ in 0..128 {
        let length = *message.get(at)?;
        match length >> 6 {
            0 if length == 0 => return Some(at + 1),
            0 => at = at.checked_add(1 + usize::from(length))?,
            // A compression pointer ends the name in place.
            3 => return (at + 2 <= message.len()).then_some(at + 2),
            _ => return None,
        }
    }
    None
}

fn parse_answer(id: u16, name: &str, message: &[u8]) -> Answer {
    parse(id, message).unwrap_or_else(|| {
        tracing::debug!(name, "malformed DNS answer");
        Answer::Malformed
    })
}

fn parse(id: u16, message: &[u8]) -> Option<Answer> {
    if be16(message, 0)? != id {
        return Some(Answer::OtherId);
    }
    let flags = be16(message, 2)?;
    let is_response = flags & 0x8000 != 0;
    let truncated = flags & 0x0200 != 0;
    if !is_response || truncated {
        return None;
    }
    let rcode = (flags & 0x000f) as u8;
    if rcode != 0 {
        return Some(Answer::Failed(rcode));
    }
    let questions = be16(message, 4)?;
    let answers = be16(message, 6)?;
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(message, at)?.checked_add(4)?;
    }
    let mut addresses = Vec::new();
    for _ in 0..answers {
        at = skip_name(message, at)?;
        let kind = be16(message, at)?;
        let class = be16(message, at + 2)?;
        let length = usize::from(be16(message, at + 8)?);
        let data = message.get(at + 10..at + 10 + length)?;
        if kind == TYPE_A && class == CLASS_IN && length == 4 {
            addresses.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + length;
    }
    Some(if addresses.is_empty() {
        Answer::Empty
    } else {
        Answer::Addresses(addresses)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A one-thread DNS responder on 127.0.0.1: `store.example` is 127.0.0.1, every
    /// other name NXDOMAIN. Answers up to `queries` queries.
    fn dns_responder(queries: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let address = socket.local_addr().expect("addr");
        let handle = std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            for _ in 0..queries {
                let Ok((length, peer)) = socket.recv_from(&mut buffer) else {
                    return;
                };
                let query = &buffer[..length];
                let question_end = skip_name(query, 12).expect("question") + 4;
                let known = query[12..].starts_with(b"\x05store\x07example\x00");
                let mut reply = query[..question_end].to_vec();
                reply[2] = 0x81; // response, recursion desired
                reply[3] = if known { 0x80 } else { 0x83 }; // recursion available; NXDOMAIN
                if known {
                    reply[7] = 2; // two answers: a CNAME-like record to skip, then the A
                                  // A TXT record for the same name (pointer to the question's name).
                    reply.extend_from_slice(&[0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, 2, 1, b'x']);
                    reply.extend_from_slice(&[
                        0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1,
                    ]);
                }
                let _ = socket.send_to(&reply, peer);
            }
        });
        (address, handle)
    }

    #[test]
    fn a_name_is_resolved_by_the_configured_server() {
        let (server, responder) = dns_responder(2);
        let resolver = GuestResolver::with_servers(vec![server]);
        assert_eq!(
            resolver.lookup("store.example").expect("lookup"),
            vec![Ipv4Addr::LOCALHOST]
        );
        let error = resolver.lookup("nowhere.example").expect_err("nxdomain");
        assert!(matches!(error, ResolveError::NotFound(_)), "{error}");
        responder.join().expect("responder");
    }

    #[test]
    fn the_http_client_reaches_a_store_by_name() {
        let (server, responder) = dns_responder(1);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let store = std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
        let agent = ureq::Agent::with_parts(
            ureq::Agent::config_builder().build(),
            ureq::unversioned::transport::DefaultConnector::new(),
            GuestResolver::with_servers(vec![server]),
        );
        let body = agent
            .get(&format!("http://store.example:{port}/model.sealed"))
            .call()
            .expect("GET by name")
            .into_body()
            .read_to_string()
            .expect("body");
        assert_eq!(body, "ok");
        store.join().expect("store");
        responder.join().expect("responder");
    }

    #[test]
    fn resolv_conf_names_the_servers() {
        let text = "# written by veil-agent\nnameserver 10.0.2.3\nsearch example\nnameserver fd00::3\nnameserver bogus\n";
        assert_eq!(
            nameservers(text),
            vec![
                "10.0.2.3:53".parse::<SocketAddr>().expect("v4"),
                "[fd00::3]:53".parse::<SocketAddr>().expect("v6"),
            ]
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("resolv.conf");
        std::fs::write(&path, "search example\n").expect("write");
        let resolver = GuestResolver {
            servers: Servers::ResolvConf(path),
        };
        let error = resolver.lookup("store.example").expect_err("no server");
        assert!(matches!(error, ResolveError::NoServer { .. }), "{error}");
    }

    #[test]
    fn hostile_answers_are_refused_without_panicking() {
        assert!(build_query(1, "").is_err());
        assert!(build_query(1, &"a".repeat(64)).is_err());
        assert!(build_query(1, "a..b").is_err());
        let query = build_query(7, "store.example.").expect("query");
        // Every prefix of a valid answer, and a pointer loop, parse to a refusal.
        let mut answer = query.clone();
        answer[2] = 0x81;
        answer[7] = 1;
        answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 1, 2, 3]);
        assert_eq!(
            parse_answer(7, "store.example", &answer),
            Answer::Addresses(vec![Ipv4Addr::new(10, 1, 2, 3)])
        );
        for end in 0..answer.len() {
            assert_ne!(
                parse_answer(7, "store.example", &answer[..end]),
                Answer::Addresses(vec![Ipv4Addr::new(10, 1, 2, 3)]),
                "prefix {end}"
            );
        }
        assert_eq!(parse_answer(8, "x", &answer), Answer::OtherId);
        let mut looping = answer.clone();
        looping[12] = 0x3f; // a label running off the end
        assert_eq!(parse_answer(7, "x", &looping), Answer::Malformed);
    }
}
