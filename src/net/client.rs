//! A client's connection to the server: the TLS channel, the session stream, and the handshake.

use super::proto::split_training_client::SplitTrainingClient;
use super::proto::{client_message, server_message, ClientMessage, Hello, ServerMessage, Welcome};
use crate::error::{Error, Result};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::Streaming;

/// An open session: what the server said at the handshake, and both directions of the stream.
pub struct Session {
    /// The server's greeting.
    pub welcome: Welcome,
    /// Messages towards the server.
    pub outbound: mpsc::Sender<ClientMessage>,
    /// Messages from the server.
    pub inbound: Streaming<ServerMessage>,
}

fn status(what: &str, s: tonic::Status) -> Error {
    Error::Net(format!("{what}: {} ({:?})", s.message(), s.code()))
}

/// Connects to `addr` (`host:port`) over mutual TLS, opens a session and says `hello`; returns
/// once the server has welcomed the client. A server that refuses or resets the TCP connection
/// (not listening yet, or restarting) is retried with exponential backoff until `timeout`. `max_message_bytes`
/// bounds each message the client accepts.
pub async fn connect(
    addr: &str,
    tls: ClientTlsConfig,
    hello: Hello,
    timeout: Duration,
    max_message_bytes: usize,
) -> Result<Session> {
    let endpoint = Channel::from_shared(format!("https://{addr}"))
        .map_err(|e| Error::Input(format!("server address {addr:?}: {e}")))?
        .tls_config(tls)
        .map_err(|e| Error::Net(format!("TLS settings: {e}")))?
        .connect_timeout(timeout)
        // See `FLOW_WINDOW`.
        .initial_stream_window_size(Some(super::FLOW_WINDOW))
        .initial_connection_window_size(Some(super::FLOW_WINDOW));
    // A server that is not listening yet (still loading, or restarting) is retried with
    // backoff until `timeout`; a refusal at the TLS or session level is final.
    let give_up = tokio::time::Instant::now() + timeout;
    let mut wait = Duration::from_millis(100);
    let channel = loop {
        match endpoint.connect().await {
            Ok(c) => break c,
            Err(e) => {
                let debug = format!("{e:?}");
                // The server not listening (yet, or any more): worth waiting for. A TLS or
                // certificate failure is not.
                let transient = [
                    "ConnectionRefused",
                    "ConnectionReset",
                    "ConnectionAborted",
                    "BrokenPipe",
                ]
                .iter()
                .any(|k| debug.contains(k));
                if !transient || tokio::time::Instant::now() + wait > give_up {
                    return Err(Error::Net(format!("connecting to {addr}: {e} ({e:?})")));
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    };
    let mut client = SplitTrainingClient::new(channel)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let (outbound, rx) = mpsc::channel(16);
    outbound
        .send(ClientMessage {
            body: Some(client_message::Body::Hello(hello)),
        })
        .await
        .map_err(|_| Error::Net("session closed before Hello".into()))?;
    let mut inbound = tokio::time::timeout(timeout, client.session(ReceiverStream::new(rx)))
        .await
        .map_err(|_| Error::Net(format!("no answer from {addr} within {timeout:?}")))?
        .map_err(|s| status("the server refused the session", s))?
        .into_inner();
    let first = tokio::time::timeout(timeout, inbound.message())
        .await
        .map_err(|_| Error::Net(format!("no Welcome from {addr} within {timeout:?}")))?
        .map_err(|s| status("the server refused the session", s))?;
    match first.and_then(|m| m.body) {
        Some(server_message::Body::Welcome(welcome)) => Ok(Session {
            welcome,
            outbound,
            inbound,
        }),
        other => Err(Error::Net(format!(
            "the server answered Hello with {other:?} instead of Welcome"
        ))),
    }
}
