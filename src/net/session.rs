//! The server's side of a client session (`SplitTraining.Session`): the handshake, and the
//! routing of each authenticated client's messages to the training loop.
//!
//! A session opens with `Hello`. The server refuses, with a gRPC status that names the problem
//! and without touching any state: a first message that is not `Hello`, another protocol
//! version, a client id outside the run, and a claimed id that the client's certificate does
//! not name (the TLS handshake has already refused certificates no trusted CA signed). An
//! accepted client gets `Welcome` and from then on its messages reach the training loop tagged
//! with its authenticated id, whatever header they carry: a client can only speak for itself.
//! A client that connects again replaces its earlier session.

use super::proto::split_training_server::SplitTraining;
use super::proto::{client_message, ClientMessage, Hello, Protocol, ServerMessage, Welcome};
use super::tls::check_client_identity;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// What the training loop hears from the sessions.
#[derive(Debug)]
pub enum Event {
    /// Client `client` completed the handshake.
    Joined {
        /// Its id.
        client: u32,
        /// Its Hello.
        hello: Hello,
    },
    /// A message from an authenticated client.
    Message {
        /// The client's authenticated id.
        client: u32,
        /// What it sent.
        message: ClientMessage,
    },
    /// The client's stream ended or broke.
    Left {
        /// Its id.
        client: u32,
        /// Why, when the stream broke rather than ended (a message over the size limit, a
        /// malformed HTTP/2 or protobuf frame, a reset connection).
        why: Option<String>,
    },
}

/// Messages queued towards one client before its session applies back-pressure.
const OUTBOX: usize = 16;

/// The sending end of one client's session stream.
type Outbox = mpsc::Sender<Result<ServerMessage, Status>>;

/// State shared by every session and the training loop.
pub struct Hub {
    clients: u32,
    /// What each client is told at the handshake (its cut, its initial adapters).
    welcome: Vec<Welcome>,
    /// The sender towards each client's current session.
    outboxes: Mutex<Vec<Option<Outbox>>>,
    /// A counter per client, bumped by each new session, so a replaced session's end does not
    /// unregister its successor.
    generations: Mutex<Vec<u64>>,
    events: mpsc::UnboundedSender<Event>,
}

impl Hub {
    /// A hub for `welcome.len()` clients, greeting client K with `welcome[K]`; events go to
    /// `events`.
    pub fn new(welcome: Vec<Welcome>, events: mpsc::UnboundedSender<Event>) -> Arc<Hub> {
        let clients = welcome.len() as u32;
        Arc::new(Hub {
            clients,
            welcome,
            outboxes: Mutex::new(vec![None; clients as usize]),
            generations: Mutex::new(vec![0; clients as usize]),
            events,
        })
    }

    /// Sends `message` to client `k`'s current session; false when it has none or it is gone.
    pub async fn send(&self, k: u32, message: ServerMessage) -> bool {
        let tx = lock(&self.outboxes).get(k as usize).and_then(|o| o.clone());
        match tx {
            Some(tx) => tx.send(Ok(message)).await.is_ok(),
            None => false,
        }
    }

    /// Validates a session's first message against the client's certificate.
    fn admit(
        &self,
        first: Option<ClientMessage>,
        certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    ) -> Result<Hello, Status> {
        let hello = match first.and_then(|m| m.body) {
            Some(client_message::Body::Hello(h)) => h,
            _ => return Err(Status::invalid_argument("a session must open with Hello")),
        };
        if hello.protocol != Protocol::V1 as i32 {
            return Err(Status::failed_precondition(format!(
                "protocol version {} is not spoken here (this server speaks {})",
                hello.protocol,
                Protocol::V1 as i32
            )));
        }
        if hello.client >= self.clients {
            return Err(Status::invalid_argument(format!(
                "client id {} is not in this run (clients 0..{})",
                hello.client, self.clients
            )));
        }
        check_client_identity(certs, hello.client).map_err(Status::permission_denied)?;
        Ok(hello)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `SplitTraining` service over a [`Hub`].
pub struct Service {
    hub: Arc<Hub>,
}

impl Service {
    /// The service of `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Service { hub }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl SplitTraining for Service {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        let certs = request.peer_certs();
        let mut inbound = request.into_inner();
        let first = inbound.message().await?;
        let hello = self.hub.admit(first, certs.as_deref().map(Vec::as_slice))?;
        let k = hello.client;
        let (tx, rx) = mpsc::channel(OUTBOX);
        tx.send(Ok(ServerMessage {
            body: Some(super::proto::server_message::Body::Welcome(
                self.hub.welcome[k as usize].clone(),
            )),
        }))
        .await
        .map_err(|_| Status::unavailable("session closed during the handshake"))?;
        let generation = {
            let mut g = lock(&self.hub.generations);
            g[k as usize] += 1;
            g[k as usize]
        };
        lock(&self.hub.outboxes)[k as usize] = Some(tx);
        let _ = self.hub.events.send(Event::Joined { client: k, hello });
        let hub = self.hub.clone();
        tokio::spawn(async move {
            let mut why = None;
            while let Some(next) = inbound.next().await {
                match next {
                    Ok(message) => {
                        if hub
                            .events
                            .send(Event::Message { client: k, message })
                            .is_err()
                        {
                            break;
                        }
                    }
                    // tonic refuses a message over the decoding limit, or a frame it cannot
                    // parse, before it reaches us; the session ends there.
                    Err(status) => {
                        why = Some(format!("{} ({:?})", status.message(), status.code()));
                        break;
                    }
                }
            }
            // Unregister only if no newer session of the same client took over.
            if lock(&hub.generations)[k as usize] == generation {
                lock(&hub.outboxes)[k as usize] = None;
                let _ = hub.events.send(Event::Left { client: k, why });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
