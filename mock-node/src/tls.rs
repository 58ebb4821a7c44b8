//! The mock node's TLS mode: a certificate and key (PEM) served with `tokio-rustls`,
//! as a listener axum serves like a plain one.
//!
//! Handshakes run on tasks of their own, so a client that stalls or rejects the
//! certificate (the router's untrusted-node tests do) holds up no other connection.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The certificate (chain) and key a TLS mock node presents.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    config: Arc<ServerConfig>,
}

impl TlsIdentity {
    /// From a PEM certificate chain (leaf first) and a PEM private key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> io::Result<TlsIdentity> {
        let invalid =
            |what: &str, e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"));
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("certificate PEM", &e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| invalid("key PEM", &e))?;
        let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
            .map_err(|e| invalid("TLS identity", &e))?;
        Ok(TlsIdentity {
            config: Arc::new(config),
        })
    }
}

/// Accepts TCP connections and yields those whose TLS handshake succeeded. It owns the
/// TCP listener, so the address is free again as soon as the node stops.
pub(crate) struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: Arc<AtomicU64>,
    done_tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    done: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// `handshakes` counts the connections whose handshake succeeded.
    pub(crate) fn new(tcp: TcpListener, identity: &TlsIdentity, handshakes: Arc<AtomicU64>) -> TlsListener {
        let (done_tx, done) = mpsc::channel(64);
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(identity.config.clone()),
            handshakes,
            done_tx,
            done,
        }
    }

    fn start_handshake(&self, tcp: TcpStream, peer: SocketAddr) {
        let (acceptor, done, handshakes) = (self.acceptor.clone(), self.done_tx.clone(), self.handshakes.clone());
        tokio::spawn(async move {
            if let Ok(stream) = acceptor.accept(tcp).await {
                handshakes.fetch_add(1, Ordering::Relaxed);
                let _ = done.send((stream, peer)).await;
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                Some(handshaken) = self.done.recv() => return handshaken,
                accepted = self.tcp.accept() => match accepted {
                    Ok((tcp, peer)) => self.start_handshake(tcp, peer),
                    // Out of file descriptors and the like: wait, as axum does.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                },
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}
