//! TLS for the HTTPS upstream of the proxy's TLS tests and for memory-server's own HTTPS
//! (`tests/daemon_tls.rs`): a certificate authority made afresh by each test (rcgen), a
//! server certificate it signs for `localhost` and 127.0.0.1 (also as PEM files' text),
//! and a listener that serves an axum app over rustls on loopback.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::server::TlsStream;

/// A test CA and a server identity it issued.
pub struct TestCa {
    /// The CA's certificate, PEM: what a client's `ca_file` holds to trust the server.
    pub ca_pem: String,
    /// The same, DER, for a test's own TLS client.
    pub ca_der: CertificateDer<'static>,
    /// The server's certificate and private key (PKCS#8), PEM: what `memory-server
    /// --tls-cert`/`--tls-key` read.
    pub cert_pem: String,
    pub key_pem: String,
    pub acceptor: TlsAcceptor,
}

impl TestCa {
    /// A CA named `name`, and a certificate it signs for `localhost` and 127.0.0.1.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();

        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "localhost");
        let leaf = params.signed_by(&key, &ca).unwrap();

        let (cert_pem, key_pem) = (leaf.pem(), key.serialize_pem());
        let chain = vec![CertificateDer::from(leaf.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key).unwrap();
        let ca_der = CertificateDer::from(ca.der().to_vec());
        TestCa { ca_pem: ca.pem(), ca_der, cert_pem, key_pem, acceptor: TlsAcceptor::from(Arc::new(config)) }
    }
}

/// A loopback listener that completes the TLS handshake of each connection before
/// handing it to axum. Failed handshakes (a client that does not trust the certificate)
/// are recorded in `refused` and skipped.
pub struct TlsListener {
    pub tcp: TcpListener,
    pub acceptor: TlsAcceptor,
    pub refused: Arc<Mutex<Vec<String>>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else { continue };
            match self.acceptor.accept(stream).await {
                Ok(tls) => return (tls, addr),
                Err(e) => self.refused.lock().unwrap().push(e.to_string()),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
