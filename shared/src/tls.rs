//! TLS for both planes' listeners (rustls, ring): `MCPGW_TLS_CERT` (PEM certificate chain) and
//! `MCPGW_TLS_KEY` (PEM private key). Both or neither.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub const ENV_TLS_CERT: &str = "MCPGW_TLS_CERT";
pub const ENV_TLS_KEY: &str = "MCPGW_TLS_KEY";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("set both {ENV_TLS_CERT} and {ENV_TLS_KEY}, or neither")]
    Incomplete,
    #[error("cannot read the certificate chain {path}: {source}")]
    Cert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCert { path: PathBuf },
    #[error("cannot read the private key {path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// The listener's TLS configuration, when a certificate is configured.
pub fn server_config(cert: Option<&Path>, key: Option<&Path>) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => return Err(TlsError::Incomplete),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|source| TlsError::Cert { path: cert.into(), source })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert { path: cert.into() });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key { path: key.into(), source })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Config)?;
    Ok(Some(Arc::new(config)))
}

/// Certificates of a PEM bundle (an extra trust anchor such as `MCPGW_CONTROL_CA`).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect())
        .map_err(|source| TlsError::Cert { path: path.into(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert { path: path.into() });
    }
    Ok(certs)
}
