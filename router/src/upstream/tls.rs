//! TLS to nodes: the rustls client configurations and a readable reason when a
//! handshake fails.
//!
//! A node's certificate is verified against the system's roots plus the operator's
//! `--ca-file`s, unless the node is marked `tls_insecure` (the operator's explicit
//! choice). The crypto provider is `ring`, given explicitly so that no process-wide
//! default has to be installed. Plain `http://` nodes never come here.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::UpstreamError;

/// How a node's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CertificateCheck {
    /// Against the system's roots and the `--ca-file`s.
    #[default]
    Verify,
    /// Not at all: the operator marked the node `tls_insecure`.
    Skip,
}

impl CertificateCheck {
    pub fn for_node(tls_insecure: bool) -> CertificateCheck {
        if tls_insecure {
            CertificateCheck::Skip
        } else {
            CertificateCheck::Verify
        }
    }
}

/// The client configuration of each [`CertificateCheck`].
pub(super) struct ClientConfigs {
    pub verify: ClientConfig,
    pub skip: ClientConfig,
}

/// Builds both configurations; fails on a CA file that cannot be read or holds no
/// certificate (a start-up error: the operator asked for it).
pub(super) fn client_configs(ca_files: &[PathBuf]) -> Result<ClientConfigs, UpstreamError> {
    let provider = Arc::new(ring::default_provider());
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for e in &system.errors {
        tracing::warn!(error = %e, "cannot load some of the system's CA certificates");
    }
    let (loaded, ignored) = roots.add_parsable_certificates(system.certs);
    tracing::debug!(loaded, ignored, "system CA certificates for https nodes");
    for path in ca_files {
        let certs = read_ca_file(path)?;
        let count = certs.len();
        for cert in certs {
            roots.add(cert).map_err(|e| ca_file_error(path, e))?;
        }
        tracing::info!(path = %path.display(), certificates = count, "trusting a CA file for https nodes");
    }
    let builder = || {
        ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamError::Request(format!("TLS setup: {e}")))
    };
    let verify = builder()?.with_root_certificates(roots).with_no_client_auth();
    let skip = builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider.clone())))
        .with_no_client_auth();
    Ok(ClientConfigs { verify, skip })
}

fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, UpstreamError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ca_file_error(path, e))?;
    if certs.is_empty() {
        return Err(ca_file_error(path, "no PEM CERTIFICATE block"));
    }
    Ok(certs)
}

fn ca_file_error(path: &Path, e: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::CaFile(format!("{}: {e}", path.display()))
}

/// The verifier of `tls_insecure` nodes: any certificate is accepted, but the
/// handshake signatures are still checked (the connection is encrypted to whoever
/// holds the presented certificate's key).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a TLS handshake failed, readably ("certificate verify failed: UnknownIssuer"),
/// or `None` when `e` is no TLS failure.
pub(super) fn tls_failure(e: &(dyn StdError + 'static)) -> Option<String> {
    Some(match find_rustls_error(e)? {
        rustls::Error::InvalidCertificate(c) => format!("certificate verify failed: {c}"),
        other => format!("TLS handshake failed: {other}"),
    })
}

/// The rustls error inside `e`. The connector wraps it in `io::Error`s, whose
/// `source()` skips the wrapped error itself, so those are opened with `get_ref`.
fn find_rustls_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        current = match err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_read_as_a_verification_failure_through_io_wrappers() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, tls));
        assert_eq!(
            tls_failure(&wrapped).as_deref(),
            Some("certificate verify failed: UnknownIssuer")
        );
        assert_eq!(tls_failure(&std::io::Error::other("connection refused")), None);
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::TempDir::new().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_configs(std::slice::from_ref(&empty)).err().expect("refused");
        assert_eq!(
            err.to_string(),
            format!("cannot use CA file {}: no PEM CERTIFICATE block", empty.display())
        );
        let missing = dir.path().join("missing.pem");
        assert!(client_configs(&[missing]).is_err());
    }
}
