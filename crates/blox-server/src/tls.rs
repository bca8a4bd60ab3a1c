//! HTTPS: the server's certificate chain and key (PEM) in a rustls configuration with the ring
//! provider (the AWS SDK's; no second crypto library), and [`TlsListener`], which wraps the
//! connections of any axum listener in TLS so that `axum::serve` serves the same router over HTTPS.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at most; past that, no connection is accepted until one ends.
pub const MAX_HANDSHAKES: usize = 256;

/// The server's TLS configuration.
#[derive(Clone)]
pub struct TlsConfig(Arc<rustls::ServerConfig>);

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Nothing of the key, whatever rustls's own Debug would show.
        f.write_str("TlsConfig { .. }")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the TLS certificate file {} holds no usable PEM certificate{}", path.display(), detail(.problem))]
    Certificate { path: PathBuf, problem: Option<String> },
    #[error(
        "the TLS key file {} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1){}",
        path.display(),
        detail(.problem)
    )]
    Key { path: PathBuf, problem: Option<String> },
    #[error("the TLS certificate and key cannot be used: {0}")]
    Config(rustls::Error),
}

fn detail(problem: &Option<String>) -> String {
    problem.as_ref().map(|p| format!(": {p}")).unwrap_or_default()
}

impl TlsConfig {
    /// Reads the certificate chain (the server's certificate first) and its private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TlsConfig, TlsError> {
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                what,
                path: path.to_owned(),
                source,
            })
        };
        TlsConfig::from_pem(&read("certificate", cert)?, cert, &read("key", key)?, key)
    }

    /// The same from PEM bytes; the paths name them in errors.
    pub fn from_pem(
        cert: &[u8],
        cert_path: &Path,
        key: &[u8],
        key_path: &Path,
    ) -> Result<TlsConfig, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Certificate {
                path: cert_path.to_owned(),
                problem: Some(e.to_string()),
            })?;
        if chain.is_empty() {
            return Err(TlsError::Certificate {
                path: cert_path.to_owned(),
                problem: None,
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Key {
            path: key_path.to_owned(),
            problem: match e {
                rustls::pki_types::pem::Error::NoItemsFound => None,
                other => Some(other.to_string()),
            },
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(TlsError::Config)?;
        // axum serves HTTP/1.1 (its http2 feature is off).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConfig(Arc::new(config)))
    }
}

type Handshake<L> =
    Pin<Box<dyn Future<Output = Option<(TlsStream<<L as Listener>::Io>, <L as Listener>::Addr)>> + Send>>;

/// Accepts connections of `L` and hands them on once their TLS handshake is done. Handshakes run
/// concurrently (at most [`MAX_HANDSHAKES`], each for at most [`HANDSHAKE_TIMEOUT`]), so that a slow
/// or silent client holds up no other; one that fails is dropped, counted and logged at debug level.
pub struct TlsListener<L: Listener> {
    inner: L,
    acceptor: TlsAcceptor,
    handshakes: FuturesUnordered<Handshake<L>>,
}

impl<L: Listener> TlsListener<L> {
    pub fn new(inner: L, config: &TlsConfig) -> TlsListener<L> {
        TlsListener {
            inner,
            acceptor: TlsAcceptor::from(config.0.clone()),
            handshakes: FuturesUnordered::new(),
        }
    }
}

impl<L> Listener for TlsListener<L>
where
    L: Listener,
    L::Addr: 'static,
{
    type Io = TlsStream<L::Io>;
    type Addr = L::Addr;

    // Cancellation-safe as long as `L::accept` is (axum's own listeners are): a connection accepted
    // joins `handshakes`, which live in `self`.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                (io, addr) = self.inner.accept(), if self.handshakes.len() < MAX_HANDSHAKES => {
                    let accept = self.acceptor.accept(io);
                    self.handshakes.push(Box::pin(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                            Ok(Ok(stream)) => Some((stream, addr)),
                            Ok(Err(err)) => {
                                handshake_failed("error");
                                tracing::debug!(error = %err, "TLS handshake failed");
                                None
                            }
                            Err(_) => {
                                handshake_failed("timeout");
                                tracing::debug!("TLS handshake timed out");
                                None
                            }
                        }
                    }));
                }
                Some(done) = self.handshakes.next(), if !self.handshakes.is_empty() => {
                    if let Some(connection) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

fn handshake_failed(reason: &'static str) {
    ::metrics::counter!(crate::metrics::TLS_HANDSHAKE_FAILURES, "reason" => reason).increment(1);
}
