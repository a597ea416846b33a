//! TLS to PostgreSQL, for `sslmode=require` (libpq's `verify-ca` and `verify-full` mean the
//! same here): rustls with aws-lc-rs, and the server's certificate always verified, name
//! included, against the system's roots plus the URL's `sslrootcert` file. That is
//! stricter than libpq's `require`, which encrypts without verifying. Other modes connect
//! without TLS, so a local server's self-signed certificate never stands in the way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

use super::PgError;

/// A database URL with what tokio-postgres does not read taken out: `sslrootcert`, and
/// libpq's verifying modes (which tokio-postgres does not know) turned into `require`.
#[derive(Debug)]
pub struct Prepared {
    pub url: String,
    pub root_cert: Option<PathBuf>,
}

pub fn prepare(url: &str) -> Result<Prepared, String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok(Prepared { url: url.to_owned(), root_cert: None });
    };
    let mut kept = Vec::new();
    let mut root_cert = None;
    let mut verifying = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match (key, value) {
            ("sslrootcert", file) => {
                let decoded = percent_encoding::percent_decode_str(file).decode_utf8_lossy().into_owned();
                root_cert = Some(PathBuf::from(decoded));
            }
            ("sslmode", "verify-ca" | "verify-full") => {
                verifying = true;
                kept.push("sslmode=require".to_owned());
            }
            ("sslmode", "require") => {
                verifying = true;
                kept.push(pair.to_owned());
            }
            _ => kept.push(pair.to_owned()),
        }
    }
    if root_cert.is_some() && !verifying {
        return Err("sslrootcert needs sslmode=require (or verify-ca, verify-full)".into());
    }
    let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok(Prepared { url, root_cert })
}

/// The TLS connector: system roots plus every certificate of `root_cert`.
pub fn connector(root_cert: Option<&Path>) -> Result<MakeRustlsConnect, PgError> {
    let extra: Vec<CertificateDer<'static>> = match root_cert {
        None => Vec::new(),
        Some(path) => {
            let shown = path.display();
            let pem = std::fs::read(path).map_err(|e| PgError::BadUrl(format!("sslrootcert {shown}: {e}")))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| PgError::BadUrl(format!("sslrootcert {shown}: {e}")))?;
            if certs.is_empty() {
                return Err(PgError::BadUrl(format!("sslrootcert {shown}: it holds no PEM certificate")));
            }
            certs
        }
    };
    let provider = Arc::new(aws_lc_rs::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
        .map_err(|e| PgError::BadUrl(format!("cannot set up TLS: {e}")))?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::BadUrl(format!("cannot set up TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_parameters_are_taken_out() {
        let p = prepare("postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=3").unwrap();
        assert_eq!(p.url, "postgres://u@h/db?sslmode=require&connect_timeout=3");
        assert_eq!(p.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        let p = prepare("postgres://u@h/db").unwrap();
        assert_eq!((p.url.as_str(), p.root_cert), ("postgres://u@h/db", None));
        assert!(prepare("postgres://u@h/db?sslrootcert=/x").unwrap_err().contains("sslmode=require"));
    }
}
