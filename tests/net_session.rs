//! The deployment's handshake over real mutual TLS on 127.0.0.1 (a server on a port the OS
//! picks, clients with certificates from `flexp::net::certs`): a client with its own
//! certificate is welcomed; a certificate from a CA the server does not trust fails the TLS
//! handshake; a client presenting client 0's certificate while claiming id 1 is refused by name;
//! another protocol version, an id outside the run and a session that does not open with Hello
//! are refused too; and after each refusal the server still welcomes the next good client. The
//! trial certificates are also checked with openssl-independent means: each is accepted only
//! for its own name.

use flexp::net::certs::write_trial_certs;
use flexp::net::client::connect;
use flexp::net::proto::split_training_server::SplitTrainingServer;
use flexp::net::proto::{Hello, Protocol, Welcome};
use flexp::net::session::{Event, Hub, Service};
use flexp::net::tls::{check_client_identity, client_config, server_config};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flexp-net-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn hello(client: u32) -> Hello {
    Hello {
        protocol: Protocol::V1 as i32,
        client,
        train_examples: 10,
        test_examples: 2,
    }
}

const T: Duration = Duration::from_secs(10);

/// Starts a server for 3 clients on 127.0.0.1; returns its address, the event stream and a
/// handle that stops it when dropped.
async fn start(
    tls: &Path,
) -> (
    String,
    mpsc::UnboundedReceiver<Event>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (events, rx) = mpsc::unbounded_channel();
    let welcome = Welcome {
        protocol: Protocol::V1 as i32,
        config_toml: "rounds = 2\n".into(),
        ..Welcome::default()
    };
    let hub = Hub::new(vec![welcome; 3], events);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .tls_config(server_config(tls).unwrap())
        .unwrap()
        .add_service(SplitTrainingServer::new(Service::new(hub)));
    tokio::spawn(async move {
        server
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await
            .unwrap();
    });
    (addr, rx, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_admits_each_client_only_as_itself() {
    let dir = tmp("handshake");
    let certs = dir.join("certs");
    let other = dir.join("other-ca");
    write_trial_certs(&certs, 3).unwrap();
    write_trial_certs(&other, 3).unwrap();
    let (addr, mut events, _stop) = start(&certs).await;
    let limit = 1 << 20;

    let good = |k: u32| {
        let addr = addr.clone();
        let certs = certs.clone();
        async move {
            connect(
                &addr,
                client_config(&certs, k, "localhost").unwrap(),
                hello(k),
                T,
                limit,
            )
            .await
        }
    };
    let s = good(1).await.unwrap();
    assert_eq!(s.welcome.config_toml, "rounds = 2\n");
    match events.recv().await.unwrap() {
        Event::Joined { client, hello } => assert_eq!((client, hello.train_examples), (1, 10)),
        e => panic!("{e:?}"),
    }

    // A certificate no trusted CA signed never gets past TLS.
    let e = connect(
        &addr,
        client_config(&other, 2, "localhost").unwrap(),
        hello(2),
        T,
        limit,
    )
    .await
    .err()
    .expect("an untrusted certificate must be refused")
    .to_string();
    assert!(e.contains("network"), "{e}");
    assert!(good(2).await.is_ok(), "the server keeps serving");

    // Client 0's certificate, claiming to be client 1.
    let e = connect(
        &addr,
        client_config(&certs, 0, "localhost").unwrap(),
        hello(1),
        T,
        limit,
    )
    .await
    .err()
    .expect("a borrowed identity must be refused")
    .to_string();
    assert!(
        e.contains("not valid for client-1") && e.contains("PermissionDenied"),
        "{e}"
    );

    let mut h = hello(0);
    h.protocol = 7;
    let e = connect(
        &addr,
        client_config(&certs, 0, "localhost").unwrap(),
        h,
        T,
        limit,
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("protocol version 7") && e.contains("speaks 1"),
        "{e}"
    );

    let e = connect(
        &addr,
        client_config(&certs, 0, "localhost").unwrap(),
        hello(9),
        T,
        limit,
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("client id 9 is not in this run"), "{e}");

    // The server's name must match what the client expects of it.
    let e = connect(
        &addr,
        client_config(&certs, 0, "elsewhere").unwrap(),
        hello(0),
        T,
        limit,
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("network"), "{e}");

    // After all that, client 0 is welcomed, and only good sessions ever joined.
    assert!(good(0).await.is_ok());
    let mut joined = vec![1];
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(300), events.recv()).await {
        if let Event::Joined { client, .. } = ev {
            joined.push(client);
        }
    }
    joined.sort();
    assert_eq!(joined, vec![0, 1, 2]);
    drop(s);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn each_trial_certificate_names_only_its_own_client() {
    let dir = tmp("names");
    // Through the command, as a user writes them.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_flexp-run"))
        .args(["certs", "--clients", "2", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client-0.pem",
        "client-1.key",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    assert!(!dir.join("client-2.pem").exists());
    let der = |name: &str| {
        let pem = std::fs::read_to_string(dir.join(format!("{name}.pem"))).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        rustls::pki_types::CertificateDer::from(base64_decode(&b64))
    };
    for k in 0..2u32 {
        let c = [der(&format!("client-{k}"))];
        assert_eq!(check_client_identity(Some(&c), k), Ok(()));
        let e = check_client_identity(Some(&c), 1 - k).unwrap_err();
        assert!(e.contains(&format!("client-{}", 1 - k)), "{e}");
    }
    assert!(check_client_identity(Some(&[der("server")]), 0).is_err());
    assert!(check_client_identity(None, 0)
        .unwrap_err()
        .contains("no client certificate"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("client-0.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "private keys are owner-only");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Standard base64 (RFC 4648) without padding checks: enough to read a PEM body.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').map(val).collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            n |= (b as u32) << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}
