//! Host names in the delivery's URLs, resolved without glibc.
//!
//! The agent is a static glibc binary: its `getaddrinfo` needs NSS modules that the
//! initramfs does not have, so `http://store.example/...` cannot be looked up the usual
//! way. [`GuestResolver`] asks the name servers of the guest's `/etc/resolv.conf` (the
//! agent writes it: QEMU user networking's DNS, 10.0.2.3) directly, with one DNS query
//! for IPv4 addresses over UDP. IP literals skip DNS. The messages are encoded and parsed by
//! `hickory-proto`; only the UDP exchange (one socket, bounded retries) is veil's.
//!
//! What the node can observe: the names the guest looks up (QEMU's DNS forwards them), as
//! it can observe the connections to the store and the broker anyway.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
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
        rcode: u16,
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
    let (id, query) = build_query(name).map_err(QueryError::Answer)?;
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
            Answer::NotFound => {
                return Err(QueryError::Answer(ResolveError::NotFound(name.to_string())))
            }
            Answer::Failed(rcode) => {
                return Err(QueryError::Answer(ResolveError::ServerFailure {
                    server,
                    name: name.to_string(),
                    rcode,
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

/// A recursive query for the A records of `name`, with a random id (the answer must echo
/// it, so another host cannot slip in an answer without seeing the query); returns the id
/// and the wire bytes.
fn build_query(name: &str) -> Result<(u16, Vec<u8>), ResolveError> {
    let invalid = || ResolveError::InvalidName(name.to_string());
    if name.trim_end_matches('.').is_empty() {
        return Err(invalid());
    }
    let name = Name::from_ascii(name).map_err(|_| invalid())?;
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name, RecordType::A));
    let bytes = message.to_vec().map_err(|_| invalid())?;
    Ok((message.metadata.id, bytes))
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Not the answer to this query.
    OtherId,
    /// The IPv4 addresses in the answer section.
    Addresses(Vec<Ipv4Addr>),
    /// No A record (e.g. only a CNAME without its target's address).
    Empty,
    /// The name does not exist (NXDOMAIN).
    NotFound,
    /// Another error code.
    Failed(u16),
    /// Truncated, not a response, or unparsable.
    Malformed,
}

fn parse_answer(id: u16, name: &str, bytes: &[u8]) -> Answer {
    let Ok(message) = Message::from_vec(bytes) else {
        tracing::debug!(name, "malformed DNS answer");
        return Answer::Malformed;
    };
    let header = &message.metadata;
    if header.id != id {
        return Answer::OtherId;
    }
    // A truncated answer would need TCP; the guest's DNS (slirp) answers A queries in one
    // datagram.
    if header.message_type != MessageType::Response || header.truncation {
        return Answer::Malformed;
    }
    match header.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Answer::NotFound,
        other => return Answer::Failed(other.into()),
    }
    let addresses: Vec<Ipv4Addr> = message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(address) => Some(address.0),
            _ => None,
        })
        .collect();
    if addresses.is_empty() {
        Answer::Empty
    } else {
        Answer::Addresses(addresses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::OpCode;
    use hickory_proto::rr::rdata::{A, TXT};
    use hickory_proto::rr::Record;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// The answer a name server gives to `query`: `store.example` is 127.0.0.1 (after a TXT
    /// record to skip), every other name NXDOMAIN.
    fn reply_to(query: &[u8]) -> Vec<u8> {
        let query = Message::from_vec(query).expect("a DNS query");
        let question = query.queries[0].clone();
        let mut reply = Message::response(query.metadata.id, OpCode::Query);
        reply.metadata.recursion_desired = true;
        reply.metadata.recursion_available = true;
        let name = question.name().clone();
        if name == Name::from_ascii("store.example.").expect("name") {
            reply.add_answer(Record::from_rdata(
                name.clone(),
                60,
                RData::TXT(TXT::new(vec!["x".into()])),
            ));
            reply.add_answer(Record::from_rdata(
                name,
                60,
                RData::A(A(Ipv4Addr::LOCALHOST)),
            ));
        } else {
            reply.metadata.response_code = ResponseCode::NXDomain;
        }
        reply.add_query(question);
        reply.to_vec().expect("encode")
    }

    /// A one-thread DNS responder on 127.0.0.1 ([`reply_to`]), for up to `queries` queries.
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
                let _ = socket.send_to(&reply_to(&buffer[..length]), peer);
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
        assert!(build_query("").is_err());
        assert!(build_query(&"a".repeat(64)).is_err());
        assert!(build_query("a..b").is_err());
        let (id, query) = build_query("store.example.").expect("query");
        let answer = reply_to(&query);
        assert_eq!(
            parse_answer(id, "store.example", &answer),
            Answer::Addresses(vec![Ipv4Addr::LOCALHOST])
        );
        // Every prefix of a valid answer parses to a refusal, never to the addresses.
        for end in 0..answer.len() {
            assert_ne!(
                parse_answer(id, "store.example", &answer[..end]),
                Answer::Addresses(vec![Ipv4Addr::LOCALHOST]),
                "prefix {end}"
            );
        }
        assert_eq!(
            parse_answer(id.wrapping_add(1), "x", &answer),
            Answer::OtherId
        );
        // The query itself is not an answer.
        assert_eq!(parse_answer(id, "x", &query), Answer::Malformed);
        let mut running_off = answer.clone();
        running_off[12] = 0x3f; // a label longer than the message
        assert_eq!(parse_answer(id, "x", &running_off), Answer::Malformed);
        let (_, unknown) = build_query("nowhere.example").expect("query");
        let nxdomain = reply_to(&unknown);
        let unknown_id = u16::from_be_bytes([nxdomain[0], nxdomain[1]]);
        assert_eq!(parse_answer(unknown_id, "x", &nxdomain), Answer::NotFound);
    }
}
