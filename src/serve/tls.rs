//! TLS for `aurum serve` (rustls): the certificate chain and key come from PEM files and are
//! read again on [`Certificates::reload`] (SIGHUP), without a restart: connections already
//! open keep the certificate they shook hands with, new ones get the new one. A reload that
//! fails (a file half-written, a key that does not match) keeps the old certificate and says
//! why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::{invalid, Result};

/// The certificate and key files, and what was last read from them.
#[derive(Debug)]
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Reads `cert` (the server's certificate first, then any intermediates) and `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Certificates>> {
        // ring, as the client side (ureq) uses: aws-lc-rs would bring a C and cmake build.
        // Deprecated in rustls 0.23.48 for lacking post-quantum key exchange, which no
        // client of aurum's asks for yet.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = read(cert, key, &provider)?;
        Ok(Arc::new(Certificates {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: RwLock::new(current),
        }))
    }

    /// Reads the files again; on an error the certificate in use stays.
    pub fn reload(&self) -> Result<()> {
        let fresh = read(&self.cert, &self.key, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The rustls configuration of a server presenting these certificates.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("TLS: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn read(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<std::result::Result<_, _>>())
        .map_err(|e| invalid(format!("--tls-cert {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(invalid(format!(
            "--tls-cert {}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)",
            cert.display()
        )));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        invalid(format!(
            "--tls-key {}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1): {e}",
            key.display()
        ))
    })?;
    let certified = CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        invalid(format!(
            "--tls-key {} does not go with --tls-cert {}: {e}",
            key.display(),
            cert.display()
        ))
    })?;
    Ok(Arc::new(certified))
}
