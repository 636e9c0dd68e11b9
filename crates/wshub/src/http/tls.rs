//! TLS for the listener: HTTPS and wss:// with rustls, from PEM files that can be read
//! again while serving (SIGHUP in the `wshub` binary): new handshakes use the new pair,
//! open connections keep theirs, and a bad new pair is refused with the old one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, ServerConfig};

/// A certificate and its key, from PEM files; see [`crate::serve_tls`].
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<TlsAcceptor>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Which file was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsError {
    /// The certificate file: unreadable, not PEM, or no certificate in it.
    Cert(String),
    /// The key file: unreadable, not PEM, or no private key in it.
    Key(String),
    /// Both read, but the key is not the certificate's (or rustls refused the pair).
    Mismatch(String),
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Cert(why) | TlsError::Key(why) | TlsError::Mismatch(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for TlsError {}

impl Tls {
    /// Reads the certificate chain and the private key (PKCS#8, PKCS#1 or SEC1), and
    /// checks that they belong together.
    pub fn from_pem_files(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Result<Tls, TlsError> {
        let (cert, key) = (cert.into(), key.into());
        let acceptor = load(&cert, &key)?;
        Ok(Tls {
            cert,
            key,
            current: RwLock::new(acceptor),
        })
    }

    /// Reads both files again. On success new handshakes use them; on failure nothing
    /// changes and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let acceptor = load(&self.cert, &self.key)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = acceptor;
        Ok(())
    }

    /// The acceptor for the next handshake.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn load(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect)
        .map_err(|e| {
            TlsError::Cert(format!(
                "cannot read a PEM certificate from `{}`: {e}",
                cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert(format!(
            "`{}` holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            cert.display()
        )));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        TlsError::Key(format!(
            "cannot read a PEM private key from `{}`: {e}",
            key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Mismatch(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs.clone(), private.clone_key())
        .map_err(|e| {
            TlsError::Mismatch(format!(
                "the key in `{}` does not fit the certificate in `{}`: {e}",
                key.display(),
                cert.display()
            ))
        })?;
    // rustls checks the pair only when it can; say it plainly either way.
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| TlsError::Key(format!("`{}`: {e}", key.display())))?;
    let certified = rustls::sign::CertifiedKey::new(certs, signing);
    if let Err(e) = certified.keys_match() {
        return Err(TlsError::Mismatch(format!(
            "the key in `{}` does not fit the certificate in `{}`: {e}",
            key.display(),
            cert.display()
        )));
    }
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
