//! Forwarding task events to containerd's ttrpc Events service, in order, across
//! containerd restarts.
//!
//! veil does not use containerd-shim 0.12's `RemotePublisher` here: it reconnects only when
//! ttrpc reports `RemoteClosed` or `LocalClosed`, but ttrpc 0.10 reports a connection whose
//! peer has gone as `Others("reserve channel capacity failed: channel closed")`. After a
//! node's containerd restarted, every event was retried on the dead connection and dropped,
//! so the new containerd never heard of an exit, an OOM kill or a delete. Here any
//! transport error drops the connection and the next try dials containerd again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::shim::event::Envelope;
use containerd_shim::protos::shim::events::ForwardRequest;
use containerd_shim::protos::shim_async::EventsClient;
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::ttrpc::r#async::Client;
use tokio::sync::mpsc;

/// Events waiting to be forwarded; past this, new ones are dropped (with a warning) rather
/// than let a containerd that stays away hold the shim's memory.
const QUEUE: usize = 1024;
/// One forward's bound: a containerd that accepted the connection but never answers must
/// not stall every later event.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long events are retried once containerd stops taking them (a restart takes seconds).
const RETRY_FOR: Duration = Duration::from_secs(120);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why an event was not queued.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event could not be encoded.
    #[error("encode the event: {0}")]
    Encode(String),
    /// Too many events are waiting for containerd.
    #[error("{QUEUE} events are already waiting for containerd, which does not take them")]
    QueueFull,
}

/// Where the shim's events go: one task forwards them in the order they were published.
pub struct Publisher {
    queue: mpsc::Sender<Envelope>,
    /// Events queued and not yet taken, refused or dropped.
    pending: Arc<AtomicUsize>,
}

impl Publisher {
    /// Connects to containerd's ttrpc address (`TTRPC_ADDRESS`: a path, or a `unix://` URL)
    /// and starts forwarding. The first connection must succeed: a shim that cannot reach
    /// the containerd that started it is misconfigured.
    pub async fn connect(address: &str) -> Result<Publisher, ttrpc::Error> {
        let address: Arc<str> = Arc::from(address);
        let client = dial(&address).await?;
        let (queue, events) = mpsc::channel(QUEUE);
        let pending = Arc::new(AtomicUsize::new(0));
        tokio::spawn(forward_in_order(
            address,
            Some(client),
            events,
            pending.clone(),
        ));
        Ok(Publisher { queue, pending })
    }

    /// Waits, at most `bound`, for every queued event to be forwarded: the shim's last
    /// events (the TaskDelete that lets it exit) must not die with it.
    pub async fn drain(&self, bound: Duration) {
        let deadline = tokio::time::Instant::now() + bound;
        while self.pending.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    events = self.pending.load(Ordering::SeqCst),
                    "shim exiting with events containerd has not taken"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Queues `event` under `topic` for `namespace`.
    pub fn publish(
        &self,
        topic: &str,
        namespace: &str,
        event: Box<dyn MessageDyn>,
    ) -> Result<(), PublishError> {
        let mut envelope = Envelope::new();
        envelope.set_topic(topic.to_owned());
        envelope.set_namespace(namespace.to_owned());
        envelope.set_timestamp(super::events::timestamp(std::time::SystemTime::now()));
        envelope.set_event(
            containerd_shim::util::convert_to_any(event)
                .map_err(|e| PublishError::Encode(e.to_string()))?,
        );
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.queue.try_send(envelope).map_err(|_| {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            PublishError::QueueFull
        })
    }
}

async fn dial(address: &str) -> Result<EventsClient, ttrpc::Error> {
    Ok(EventsClient::new(connect_unix(address).await?))
}

/// A ttrpc client on the unix socket `address`, given as containerd gives addresses: a
/// path, or a `unix://` URL.
pub(crate) async fn connect_unix(address: &str) -> Result<Client, ttrpc::Error> {
    let url = if address.starts_with("unix://") {
        address.to_string()
    } else {
        format!("unix://{address}")
    };
    Client::connect(&url).await
}

async fn forward_in_order(
    address: Arc<str>,
    client: Option<EventsClient>,
    mut events: mpsc::Receiver<Envelope>,
    pending: Arc<AtomicUsize>,
) {
    let mut link = Link {
        address,
        client,
        lost_at: None,
    };
    while let Some(envelope) = events.recv().await {
        link.forward(envelope).await;
        pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The connection to containerd's Events service, and since when it has been lost.
struct Link {
    address: Arc<str>,
    client: Option<EventsClient>,
    /// When containerd stopped taking events; [`RETRY_FOR`] counts from here, not from each
    /// event, so a containerd that stays away costs each waiting event one try, not 120 s.
    lost_at: Option<tokio::time::Instant>,
}

impl Link {
    /// Forwards one event, dialing containerd again after any transport error, until it
    /// is taken, refused, or containerd has been away for [`RETRY_FOR`].
    async fn forward(&mut self, envelope: Envelope) {
        let topic = envelope.topic.clone();
        let mut request = ForwardRequest::new();
        request.set_envelope(envelope);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let failure = match self.try_forward(&request).await {
                Ok(()) => {
                    self.lost_at = None;
                    return;
                }
                Err(ttrpc::Error::RpcStatus(status)) => {
                    // containerd answered: another try would get the same answer.
                    self.lost_at = None;
                    tracing::warn!(%topic, code = ?status.code(), message = %status.message(), "containerd refused the event");
                    return;
                }
                Err(error) => error.to_string(),
            };
            let lost_at = *self.lost_at.get_or_insert_with(tokio::time::Instant::now);
            if lost_at.elapsed() >= RETRY_FOR {
                tracing::warn!(%topic, address = %self.address, error = %failure, "event dropped: containerd has not taken events for {}s", RETRY_FOR.as_secs());
                return;
            }
            tracing::debug!(%topic, error = %failure, "event not forwarded yet; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One try, on the connection there is or a new one; a transport error drops it.
    async fn try_forward(&mut self, request: &ForwardRequest) -> Result<(), ttrpc::Error> {
        let client = match self.client.take() {
            Some(client) => client,
            None => {
                let client = dial(&self.address).await?;
                tracing::info!(address = %self.address, "connected to containerd's event service again");
                client
            }
        };
        let forwarded = forward_once(&client, request).await;
        if matches!(forwarded, Ok(()) | Err(ttrpc::Error::RpcStatus(_))) {
            self.client = Some(client);
        }
        forwarded
    }
}

async fn forward_once(client: &EventsClient, request: &ForwardRequest) -> Result<(), ttrpc::Error> {
    let context = ttrpc::context::with_timeout(FORWARD_TIMEOUT.as_nanos() as i64);
    client.forward(context, request).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use containerd_shim::protos::api::Empty;
    use containerd_shim::protos::events::task::TaskExit;
    use containerd_shim::protos::protobuf::Message;
    use containerd_shim::protos::shim_async::{create_events, Events};
    use containerd_shim::protos::ttrpc::asynchronous::transport::Listener;
    use containerd_shim::protos::ttrpc::asynchronous::{Server, TtrpcContext};

    /// containerd's Events service, as far as a shim sees it: it takes events, or refuses
    /// those of one topic.
    struct Containerd {
        taken: mpsc::UnboundedSender<(String, String)>,
        refuses: &'static str,
    }

    #[async_trait]
    impl Events for Containerd {
        async fn forward(&self, _: &TtrpcContext, request: ForwardRequest) -> ttrpc::Result<Empty> {
            let envelope = request.envelope();
            if envelope.topic() == self.refuses {
                return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                    ttrpc::Code::INVALID_ARGUMENT,
                    "not this one",
                )));
            }
            let exit = TaskExit::parse_from_bytes(&envelope.event.value).expect("a TaskExit");
            let _ = self
                .taken
                .send((envelope.topic().to_string(), exit.container_id));
            Ok(Empty::default())
        }
    }

    async fn serve(
        path: &std::path::Path,
        taken: mpsc::UnboundedSender<(String, String)>,
    ) -> Server {
        let _ = std::fs::remove_file(path);
        let listener =
            Listener::try_from(std::os::unix::net::UnixListener::bind(path).unwrap()).unwrap();
        let mut server = Server::new()
            .add_listener(listener)
            .register_service(create_events(Arc::new(Containerd {
                taken,
                refuses: "/tasks/refused",
            })));
        server.start().await.unwrap();
        server
    }

    fn exit_of(id: &str) -> Box<dyn MessageDyn> {
        Box::new(TaskExit {
            container_id: id.to_string(),
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn events_reach_a_containerd_that_restarted_in_the_order_they_were_published() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock.ttrpc");
        let (taken, mut received) = mpsc::unbounded_channel();
        let mut first = serve(&socket, taken.clone()).await;
        let publisher = Publisher::connect(socket.to_str().unwrap()).await.unwrap();
        publisher
            .publish("/tasks/exit", "default", exit_of("a"))
            .unwrap();
        assert_eq!(
            received.recv().await.unwrap(),
            ("/tasks/exit".to_string(), "a".to_string())
        );

        // containerd stops; events published meanwhile wait for the next one.
        first.shutdown().await.unwrap();
        drop(first);
        for id in ["b", "c"] {
            publisher
                .publish("/tasks/exit", "default", exit_of(id))
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _second = serve(&socket, taken.clone()).await;
        let next = tokio::time::timeout(Duration::from_secs(20), async {
            [
                received.recv().await.unwrap(),
                received.recv().await.unwrap(),
            ]
        })
        .await
        .expect("events after the restart");
        assert_eq!(next.map(|(_, id)| id), ["b".to_string(), "c".to_string()]);

        // An event containerd refuses is not retried, and does not hold back the next.
        publisher
            .publish("/tasks/refused", "default", exit_of("x"))
            .unwrap();
        publisher
            .publish("/tasks/exit", "default", exit_of("d"))
            .unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), received.recv())
            .await
            .expect("the event after a refused one")
            .unwrap();
        assert_eq!(next.1, "d");
        publisher.drain(Duration::from_secs(5)).await;
        assert_eq!(publisher.pending.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn draining_waits_for_queued_events_and_no_longer_than_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock.ttrpc");
        let (taken, mut received) = mpsc::unbounded_channel();
        let mut server = serve(&socket, taken).await;
        let publisher = Publisher::connect(socket.to_str().unwrap()).await.unwrap();
        for id in ["a", "b", "c"] {
            publisher
                .publish("/tasks/exit", "default", exit_of(id))
                .unwrap();
        }
        publisher.drain(Duration::from_secs(10)).await;
        for id in ["a", "b", "c"] {
            assert_eq!(
                received.try_recv().unwrap().1,
                id,
                "taken before drain returned"
            );
        }
        // With containerd gone, draining gives up at its bound.
        server.shutdown().await.unwrap();
        drop(server);
        publisher
            .publish("/tasks/exit", "default", exit_of("d"))
            .unwrap();
        let started = std::time::Instant::now();
        publisher.drain(Duration::from_millis(300)).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(publisher.pending.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_containerd_that_stays_away_costs_each_later_event_one_try() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock.ttrpc");
        let (taken, _received) = mpsc::unbounded_channel();
        let mut server = serve(&socket, taken).await;
        let publisher = Publisher::connect(socket.to_str().unwrap()).await.unwrap();
        server.shutdown().await.unwrap();
        drop(server);
        std::fs::remove_file(&socket).unwrap();

        let start = tokio::time::Instant::now();
        publisher
            .publish("/tasks/exit", "default", exit_of("a"))
            .unwrap();
        publisher.drain(RETRY_FOR * 2).await;
        assert_eq!(publisher.pending.load(Ordering::SeqCst), 0);
        assert!(start.elapsed() >= RETRY_FOR, "dropped before its bound");

        let later = tokio::time::Instant::now();
        for id in ["b", "c", "d"] {
            publisher
                .publish("/tasks/exit", "default", exit_of(id))
                .unwrap();
        }
        publisher.drain(RETRY_FOR).await;
        assert_eq!(publisher.pending.load(Ordering::SeqCst), 0);
        assert!(
            later.elapsed() < Duration::from_secs(1),
            "each later event waited: {:?}",
            later.elapsed()
        );
    }

    #[tokio::test]
    async fn a_shim_that_cannot_reach_containerd_at_start_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nothing.sock");
        assert!(Publisher::connect(missing.to_str().unwrap()).await.is_err());
    }
}
