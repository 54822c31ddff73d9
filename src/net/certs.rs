//! Trial certificates for a deployment (`flexp-run certs`): a CA, the server's certificate and
//! one per client, all ECDSA P-256.
//!
//! Identities are names: the server's certificate is valid for `localhost`, `127.0.0.1` and
//! `flexp-server`; client K's for the DNS name `client-K` (its subject alternative name, also
//! its common name), which is what the server checks a claimed client id against. Real
//! deployments bring their own PKI: any CA-signed certificates with those names work.

use crate::error::{Error, Result};
use crate::fsutil::{write_atomic, write_atomic_private};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::path::Path;

/// The DNS name a client's certificate must be valid for.
pub fn client_name(k: u32) -> String {
    format!("client-{k}")
}

/// Names the server's trial certificate is valid for; a client connects to one of them.
pub const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "flexp-server"];

fn tls_err(what: &str, e: rcgen::Error) -> Error {
    Error::Input(format!("generating {what}: {e}"))
}

/// Writes `ca.pem`, `server.pem`/`server.key` and `client-K.pem`/`client-K.key` for
/// `K = 0..clients` into `out` (created if needed). Private keys are written readable by their
/// owner only.
pub fn write_trial_certs(out: &Path, clients: u32) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "flexp trial CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(|e| tls_err("the CA key", e))?;
    let ca = CertifiedIssuer::self_signed(ca, ca_key).map_err(|e| tls_err("the CA", e))?;
    write_atomic(&out.join("ca.pem"), ca.pem().as_bytes())?;

    let server_names: Vec<String> = SERVER_NAMES.iter().map(|s| s.to_string()).collect();
    let mut server =
        CertificateParams::new(server_names).map_err(|e| tls_err("the server certificate", e))?;
    // `new` files "127.0.0.1" as a DNS name; a client connecting by address checks an IP SAN.
    server
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::V4(
            std::net::Ipv4Addr::LOCALHOST,
        )));
    server
        .distinguished_name
        .push(DnType::CommonName, "flexp-server");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    write_leaf(out, "server", server, &ca)?;

    for k in 0..clients {
        let name = client_name(k);
        let mut c = CertificateParams::new(vec![name.clone()])
            .map_err(|e| tls_err("a client certificate", e))?;
        c.distinguished_name.push(DnType::CommonName, name.clone());
        c.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        write_leaf(out, &name, c, &ca)?;
    }
    Ok(())
}

/// `NAME.pem` (the certificate signed by `ca`) and `NAME.key` (its key, owner-only).
fn write_leaf(
    out: &Path,
    name: &str,
    params: CertificateParams,
    ca: &CertifiedIssuer<'_, KeyPair>,
) -> Result<()> {
    let key = KeyPair::generate().map_err(|e| tls_err(name, e))?;
    let cert = params.signed_by(&key, ca).map_err(|e| tls_err(name, e))?;
    write_atomic(&out.join(format!("{name}.pem")), cert.pem().as_bytes())?;
    write_atomic_private(
        &out.join(format!("{name}.key")),
        key.serialize_pem().as_bytes(),
    )
}
