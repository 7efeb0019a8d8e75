//! The trust an HTTPS client puts in a server: the CA file the administrator names (`--ca`,
//! node.toml's `ca`), else the system's trust store (the Debian, Red Hat or SUSE bundle, or
//! `SSL_CERT_FILE`). Every client of aurum (a node updating, an installer, `pull`, a cache
//! tier, the BMC calls) builds its TLS configuration here, so they all trust the same way and
//! fail the same way: naming the server and what to do.
//!
//! The server side (rustls, certificate reload on SIGHUP) is `serve`'s.

use std::path::Path;

use crate::error::{Error, Result};

/// The system bundles, in the order tried (what `rustls-native-certs` reads on Linux).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
];

/// The certificates of a PEM file (anything else in it is skipped); an error names the file.
pub fn read_certificates(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>> {
    let pem = std::fs::read(path)
        .map_err(|e| Error::Invalid(format!("cannot read the CA file {}: {e}", path.display())))?;
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(Error::Invalid(format!(
            "the CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

/// The client TLS configuration: trust `ca` alone when given, else the system's store.
pub fn client_config(ca: Option<&Path>) -> Result<ureq::tls::TlsConfig> {
    let certs = match ca {
        Some(ca) => read_certificates(ca)?,
        None => {
            let env = std::env::var_os("SSL_CERT_FILE");
            let bundle = env
                .as_deref()
                .map(Path::new)
                .into_iter()
                .chain(SYSTEM_BUNDLES.iter().map(Path::new))
                .find(|p| p.is_file());
            match bundle {
                Some(b) => read_certificates(b)?,
                // No system store (a minimal initramfs): Mozilla's roots, built in.
                None => {
                    return Ok(ureq::tls::TlsConfig::builder()
                        .root_certs(ureq::tls::RootCerts::WebPki)
                        .build())
                }
            }
        }
    };
    Ok(ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
        .build())
}

/// What to tell an administrator about a TLS failure talking to `server`, from ureq's error
/// text: an unknown CA and a name mismatch say which setting fixes them.
pub fn explain(server: &str, error: &str) -> String {
    let hint = if error.contains("UnknownIssuer") || error.contains("unknown issuer") {
        "its certificate is not signed by a CA this node trusts: give the CA's certificate with \
         --ca FILE (or `ca` in node.toml, AURUM_CA), or install it in the system's trust store"
    } else if error.contains("NotValidForName") || error.contains("not valid for name") {
        "its certificate does not name the host in the URL: use the name the certificate has"
    } else if error.contains("Expired") || error.contains("NotValidYet") {
        "its certificate is expired or not yet valid: check the server's certificate and both clocks"
    } else {
        "the TLS handshake failed"
    };
    format!("{server}: TLS: {hint} ({error})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "not a certificate\n").unwrap();
        let e = client_config(Some(&f)).unwrap_err().to_string();
        assert!(
            e.contains("ca.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = client_config(Some(&dir.path().join("none")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the CA file"), "{e}");
        assert!(explain("https://m", "invalid peer certificate: UnknownIssuer").contains("--ca"));
    }
}
