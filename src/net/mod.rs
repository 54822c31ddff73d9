//! The deployment: a FlexP-SFL server and its clients as separate processes, over gRPC with
//! mutual TLS (proto/flexp.proto).
//!
//! - [`proto`]: the generated messages and service.
//! - [`wire`]: tensors as checksummed, size-limited frames, and their strict reassembly.
//! - [`certs`]: trial certificates; [`tls`]: mutual-TLS settings and the client identity check.
//! - [`session`]: the server's handshake and message routing; [`client`]: a client's connection.

pub mod certs;
pub mod client;
pub mod exchange;
pub mod serve;
pub mod session;
pub mod tls;
pub mod wire;
pub mod worker;

/// The protocol's messages and the `SplitTraining` service, generated from proto/flexp.proto.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("flexp.v1");
}

/// The HTTP/2 flow-control window of a session (stream and connection), in bytes. HTTP/2's
/// default of 64 KiB stalls a message of megabytes on a window update every 64 KiB; 16 MiB
/// lets a step's activations or gradients flow in one go (measured: docs/performance.md).
pub(crate) const FLOW_WINDOW: u32 = 16 << 20;
