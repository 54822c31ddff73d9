//! Mutual TLS for the deployment: the server's and a client's TLS settings from a certificate
//! folder (as `flexp-run certs` writes it, or the user's own PKI in the same file names), and
//! the check that a client's certificate names the client id it claims.

use super::certs::client_name;
use crate::error::{Error, Result};
use std::path::Path;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

fn read(dir: &Path, file: &str) -> Result<Vec<u8>> {
    let p = dir.join(file);
    std::fs::read(&p).map_err(|e| {
        Error::Input(format!(
            "TLS folder {}: cannot read {file} ({e}); `flexp-run certs --out {} --clients N` \
             writes trial certificates",
            dir.display(),
            dir.display()
        ))
    })
}

/// The server's settings from `dir`: its identity (`server.pem`, `server.key`) and the CA that
/// signs client certificates (`ca.pem`); a client without a certificate that CA signed cannot
/// complete the handshake.
pub fn server_config(dir: &Path) -> Result<ServerTlsConfig> {
    let identity = Identity::from_pem(read(dir, "server.pem")?, read(dir, "server.key")?);
    Ok(ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(Certificate::from_pem(read(dir, "ca.pem")?)))
}

/// Client `k`'s settings from `dir`: its identity (`client-K.pem`, `client-K.key`), the CA that
/// signed the server's certificate (`ca.pem`), and the name the server's certificate must be
/// valid for (`server_name`).
pub fn client_config(dir: &Path, k: u32, server_name: &str) -> Result<ClientTlsConfig> {
    let name = client_name(k);
    let identity = Identity::from_pem(
        read(dir, &format!("{name}.pem"))?,
        read(dir, &format!("{name}.key"))?,
    );
    Ok(ClientTlsConfig::new()
        .identity(identity)
        .ca_certificate(Certificate::from_pem(read(dir, "ca.pem")?))
        .domain_name(server_name))
}

/// Whether the peer's certificate chain (leaf first, as TLS presents it; already verified
/// against the CA by the handshake) is valid for client `claimed`'s name. The error says what
/// the certificate is not valid for.
pub fn check_client_identity(
    peer_certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
    claimed: u32,
) -> std::result::Result<(), String> {
    let leaf = peer_certs
        .and_then(|c| c.first())
        .ok_or_else(|| "no client certificate was presented".to_string())?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("the client certificate cannot be parsed: {e}"))?;
    let name = client_name(claimed);
    let server_name = rustls::pki_types::ServerName::try_from(name.as_str())
        .map_err(|e| format!("{name}: {e}"))?;
    cert.verify_is_valid_for_subject_name(&server_name)
        .map_err(|_| {
            format!(
                "the client certificate is not valid for {name}: a client may only claim the id \
                 its certificate names"
            )
        })
}
