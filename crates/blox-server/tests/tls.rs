//! HTTPS in-process: the router served by `axum::serve` over `blox_server::tls::TlsListener`, with a
//! self-signed certificate, to `blox_client` trusting it. Handshakes run side by side: clients that
//! connect and say nothing, or speak HTTP in clear, hold up no other.

use std::future::IntoFuture as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use blox_api::TaskQuery;
use blox_client::{Client, ClientOptions};
use blox_server::tls::{TlsConfig, TlsListener};
use blox_server::{AppState, tls::TlsError};
use blox_store::{MemStore, StoreOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Well below the handshake timeout (10 s): an answer within it was not held up by a handshake.
const DEADLINE: Duration = Duration::from_secs(5);

fn certificate() -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("a certificate");
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

fn config(cert: &str, key: &str) -> Result<TlsConfig, TlsError> {
    TlsConfig::from_pem(
        cert.as_bytes(),
        Path::new("cert.pem"),
        key.as_bytes(),
        Path::new("key.pem"),
    )
}

#[tokio::test]
async fn silent_and_clear_text_clients_hold_up_no_other() {
    let (cert, key) = certificate();
    let tls = config(&cert, &key).expect("a usable certificate and key");
    let shutdown = CancellationToken::new();
    let store = Arc::new(MemStore::new(StoreOptions::default()));
    let state = AppState::new(store, None, shutdown.clone()).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let served = axum::serve(TlsListener::new(listener, &tls), blox_server::router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    let server = tokio::spawn(served);

    // Queued before the real client: accepted first, they never finish a handshake.
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(TcpStream::connect(address).await.unwrap());
    }
    let mut clear = TcpStream::connect(address).await.unwrap();
    clear
        .write_all(b"GET /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();

    let client = Client::with_options(
        format!("https://127.0.0.1:{}", address.port()),
        &ClientOptions {
            ca_certs_pem: Some(cert.clone().into_bytes()),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let tasks = tokio::time::timeout(DEADLINE, client.list_tasks(&TaskQuery::default()))
        .await
        .expect("answered while other handshakes wait")
        .expect("served over HTTPS");
    assert!(tasks.items.is_empty());

    // The clear-text client got no HTTP answer, only the end of its connection.
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, clear.read_to_end(&mut answer))
        .await
        .expect("the connection is closed")
        .ok();
    assert!(
        !answer.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // A client that does not trust the certificate is refused by its own side.
    let untrusting = Client::new(format!("https://127.0.0.1:{}", address.port()));
    let err = untrusting.list_tasks(&TaskQuery::default()).await.unwrap_err();
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");

    drop((client, untrusting, silent));
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}

#[test]
fn unusable_certificates_and_keys_are_named() {
    let (cert, key) = certificate();
    let (_, other_key) = certificate();
    let message = |result: Result<TlsConfig, TlsError>| result.unwrap_err().to_string();
    assert_eq!(
        message(config("", &key)),
        "the TLS certificate file cert.pem holds no usable PEM certificate"
    );
    assert_eq!(
        message(config(&cert, &cert)),
        "the TLS key file key.pem holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1)"
    );
    let mismatch = message(config(&cert, &other_key));
    assert!(
        mismatch.starts_with("the TLS certificate and key cannot be used: "),
        "{mismatch}"
    );
    let missing = TlsConfig::from_pem_files(
        Path::new("/nonexistent/cert.pem"),
        Path::new("/nonexistent/key.pem"),
    );
    assert!(
        message(missing).starts_with("cannot read the TLS certificate /nonexistent/cert.pem: "),
        "unreadable files are named"
    );
}
