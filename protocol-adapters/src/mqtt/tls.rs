//! TLS for the external-broker client: rustls (ring provider), verifying the broker against a
//! given CA or the system's roots, with an optional client certificate (mutual TLS).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::sync::Arc;

/// PEM material for a TLS connection, as read from files by the caller.
#[derive(Clone, Default)]
pub struct TlsFiles {
    /// CA certificate(s) the broker's certificate must chain to; `None`: the system's roots.
    pub ca: Option<Vec<u8>>,
    /// The gateway's certificate chain and private key, for brokers that ask for one.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca.as_ref().map(|c| format!("{} bytes", c.len())))
            .field("client", &self.client.as_ref().map(|_| "<certificate and key>"))
            .finish()
    }
}

/// Why a TLS configuration could not be built; says which part is wrong.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no PEM certificate found in the CA file")]
    NoCa,
    #[error("the CA file: {0}")]
    BadCa(String),
    #[error("no PEM certificate found in the client certificate file")]
    NoClientCert,
    #[error("the client key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {0}")]
    BadKey(String),
    #[error("the system's CA certificates could not be loaded: {0}")]
    NativeRoots(String),
    #[error("the client certificate and key do not work together: {0}")]
    ClientAuth(String),
}

/// Build the rustls client configuration for `files`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match &files.ca {
        Some(pem) => {
            let certs = certificates(pem).map_err(TlsError::BadCa)?;
            if certs.is_empty() {
                return Err(TlsError::NoCa);
            }
            for c in certs {
                roots.add(c).map_err(|e| TlsError::BadCa(e.to_string()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                let why = native.errors.first().map_or("none found".to_owned(), ToString::to_string);
                return Err(TlsError::NativeRoots(why));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::ClientAuth(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &files.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certificates(cert).map_err(|_| TlsError::NoClientCert)?;
            if chain.is_empty() {
                return Err(TlsError::NoClientCert);
            }
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::BadKey(e.to_string()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| TlsError::ClientAuth(e.to_string()))?
        }
    };
    Ok(Arc::new(config))
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_material_is_named() {
        let files = TlsFiles { ca: Some(b"not pem".to_vec()), client: None };
        assert!(matches!(client_config(&files), Err(TlsError::NoCa)));
        let files = TlsFiles {
            ca: Some(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec()),
            client: None,
        };
        assert!(matches!(client_config(&files), Err(TlsError::BadCa(_))), "{:?}", client_config(&files));
    }
}
