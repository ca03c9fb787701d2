//! TLS for the API and sandbox-proxy listener (rustls): a certificate and
//! key the operator gives, or a local certificate authority and a wildcard
//! certificate for the server's domain made at first start, for users who
//! have no certificate for it.
//!
//! The generated files live in `<data>/tls/`: `ca.pem` (what clients
//! trust) and `ca-key.pem`, the authority, which may sign for the domain,
//! its subdomains and `localhost` only; `cert.pem` and `key.pem`, for `D`,
//! `*.D` and this host's own names (`localhost`, `127.0.0.1`, `::1`);
//! `made.json`, the domain and when the certificate expires. Keys have mode
//! 0600. They are kept across starts; a new domain makes a new authority,
//! and a certificate with less than a month left is made again by the same
//! one.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const ACCEPT_QUEUE: usize = 64;
/// A generated certificate's life: under the 398 days browsers accept.
const LEAF_DAYS: i64 = 397;
/// It is made again when it has less than this left.
const RENEW_DAYS: i64 = 30;
/// The generated authority's life.
const CA_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("the certificate {} does not go with the key {}: {reason}", cert.display(), key.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot make a certificate for '{domain}': {reason}")]
    Generate { domain: String, reason: String },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TlsError {
    let path = path.to_owned();
    move |source| TlsError::Io {
        action,
        path,
        source,
    }
}

/// The certificate and key a listener serves, and the authority that
/// signed them when this server made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `<data>/tls/ca.pem` when generated.
    pub ca: Option<PathBuf>,
}

/// The files in `dir` for `domain`, made now if missing or for another
/// domain (a new authority), or renewed with the same authority when the
/// certificate has less than [`RENEW_DAYS`] left. `now` is Unix seconds.
pub fn local_ca(dir: &Path, domain: &str, now: i64) -> Result<TlsFiles, TlsError> {
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ca: Some(dir.join("ca.pem")),
    };
    let (ca_pem, ca_key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let made: Option<Made> = std::fs::read(dir.join(MADE))
        .ok()
        .and_then(|text| serde_json::from_slice(&text).ok());
    let same_domain = made.as_ref().is_some_and(|m| m.domain == domain);
    let fresh = made.is_some_and(|m| m.expires - now > RENEW_DAYS * 86_400)
        && [&files.cert, &files.key].iter().all(|f| f.is_file());
    // The authority stays while the domain does: clients trust it once.
    let kept_ca = (same_domain && ca_pem.is_file())
        .then(|| std::fs::read_to_string(&ca_key_path).ok())
        .flatten()
        .and_then(|pem| rcgen::KeyPair::from_pem(&pem).ok());
    if same_domain && fresh && kept_ca.is_some() {
        return Ok(files);
    }
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let failed = |e: rcgen::Error| TlsError::Generate {
        domain: domain.to_owned(),
        reason: e.to_string(),
    };
    let ca_key = match kept_ca {
        Some(key) => key,
        None => {
            let key = rcgen::KeyPair::generate().map_err(failed)?;
            let cert = ca_params(domain, now).self_signed(&key).map_err(failed)?;
            write(&ca_key_path, &key.serialize_pem(), 0o600)?;
            write(&ca_pem, &cert.pem(), 0o644)?;
            tracing::info!(domain, ca = %ca_pem.display(), "made a local certificate authority");
            key
        }
    };
    let issuer = rcgen::Issuer::new(ca_params(domain, now), ca_key);
    // The host's own names too: `hearth` on this host reaches it by them.
    let names = vec![
        domain.to_owned(),
        format!("*.{domain}"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let mut leaf = rcgen::CertificateParams::new(names).map_err(failed)?;
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, domain);
    leaf.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = at(now, -1);
    leaf.not_after = at(now, LEAF_DAYS);
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let cert = leaf.signed_by(&key, &issuer).map_err(failed)?;
    write(&files.key, &key.serialize_pem(), 0o600)?;
    write(&files.cert, &cert.pem(), 0o644)?;
    let made = Made {
        domain: domain.to_owned(),
        expires: now + LEAF_DAYS * 86_400,
    };
    let made = serde_json::to_string(&made).expect("plain data serialises");
    write(&dir.join(MADE), &made, 0o644)?;
    tracing::info!(domain, cert = %files.cert.display(), "made a certificate for the domain");
    Ok(files)
}

/// What `made.json` records.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Made {
    domain: String,
    /// Unix seconds.
    expires: i64,
}

const MADE: &str = "made.json";

/// The local authority of `domain`: it signs certificates for the domain,
/// its subdomains and `localhost` only (name constraints; addresses are
/// not constrained), so trusting it trusts no other name. The same every time but for the dates: what signs again
/// with a kept key.
fn ca_params(domain: &str, now: i64) -> rcgen::CertificateParams {
    use rcgen::{BasicConstraints, DnType, GeneralSubtree, IsCa, KeyUsagePurpose, NameConstraints};
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, format!("Hearth local CA for {domain}"));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![
            GeneralSubtree::DnsName(domain.to_owned()),
            GeneralSubtree::DnsName("localhost".to_owned()),
        ],
        excluded_subtrees: Vec::new(),
    });
    ca.not_before = at(now, -1);
    ca.not_after = at(now, CA_DAYS);
    ca
}

/// `days` from `now` (Unix seconds).
fn at(now: i64, days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(now + days * 86_400)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(io_err("write", path))
}

/// A server configuration serving the PEM certificate chain `cert` with
/// the PEM key `key`, over HTTP/2 or HTTP/1.1 (ALPN).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_io(e, "read", cert))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_io(e, "read", cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: key.to_owned(),
        },
        other => pem_io(other, "read", key),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mismatch = |e: rustls::Error| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(mismatch)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(mismatch)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn pem_io(e: rustls::pki_types::pem::Error, action: &'static str, path: &Path) -> TlsError {
    match e {
        rustls::pki_types::pem::Error::Io(source) => io_err(action, path)(source),
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoCertificate {
            path: path.to_owned(),
        },
        other => io_err(action, path)(io::Error::new(
            io::ErrorKind::InvalidData,
            other.to_string(),
        )),
    }
}

/// A listener that hands out connections once their TLS handshake is
/// done. Handshakes run on their own tasks, so a slow client holds up no
/// other; one that does not finish in [`HANDSHAKE_TIMEOUT`] is dropped.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(ACCEPT_QUEUE);
        let tls = TlsAcceptor::from(config);
        let acceptor = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors and the like: wait, go on.
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            ready,
            local,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The acceptor only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const NOW: i64 = 1_800_000_000;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn a_local_ca_is_made_once_kept_renewed_and_replaced_for_another_domain() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let files = local_ca(&tls, "hearth.test", NOW).unwrap();
        let ca = files.ca.clone().unwrap();
        for (path, mode) in [
            (&files.key, 0o600),
            (&tls.join("ca-key.pem"), 0o600),
            (&files.cert, 0o644),
            (&ca, 0o644),
        ] {
            let got = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(got, mode, "mode of {}", path.display());
        }
        let (cert, ca_text) = (read(&files.cert), read(&ca));
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");

        // Kept while valid.
        assert_eq!(local_ca(&tls, "hearth.test", NOW + 86_400).unwrap(), files);
        assert_eq!(read(&files.cert), cert);
        // Renewed by the same authority when under a month is left.
        let late = NOW + (LEAF_DAYS - RENEW_DAYS + 1) * 86_400;
        local_ca(&tls, "hearth.test", late).unwrap();
        assert_ne!(read(&files.cert), cert, "a new certificate");
        assert_eq!(read(&ca), ca_text, "the same authority");
        // Another domain: another authority.
        local_ca(&tls, "other.test", late).unwrap();
        assert_ne!(read(&ca), ca_text);
    }

    /// A TLS client that trusts only `ca` and offers `alpn`.
    fn client(ca: &Path, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    #[tokio::test]
    async fn the_listener_serves_the_domain_its_subdomains_and_the_host_over_h2_or_http1() {
        use axum::serve::Listener;
        let dir = tempfile::tempdir().unwrap();
        let files = local_ca(dir.path(), "hearth.test", now()).unwrap();
        let config = server_config(&files.cert, &files.key).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut listener = TlsListener::new(tcp, config).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await;
                let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                let _ = stream.write_all(&alpn.unwrap_or_default()).await;
                let _ = stream.shutdown().await;
            }
        });
        let ca = files.ca.unwrap();
        let connect = |name: &'static str, alpn: &'static [&'static [u8]]| {
            let connector = client(&ca, alpn);
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from(name).unwrap();
                let mut stream = connector.connect(name, tcp).await?;
                let mut got = Vec::new();
                stream.read_to_end(&mut got).await?;
                Ok::<_, io::Error>(got)
            }
        };
        // A client that never speaks holds up nobody.
        let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(
            connect("49983-abc.hearth.test", &[b"h2", b"http/1.1"])
                .await
                .unwrap(),
            b"h2"
        );
        assert_eq!(
            connect("hearth.test", &[b"http/1.1"]).await.unwrap(),
            b"http/1.1"
        );
        assert_eq!(connect("localhost", &[b"h2"]).await.unwrap(), b"h2");
        assert_eq!(connect("127.0.0.1", &[b"h2"]).await.unwrap(), b"h2");
        let wrong = connect("example.com", &[b"h2"]).await.unwrap_err();
        assert!(wrong.to_string().contains("certificate"), "{wrong}");
        let deep = connect("a.b.hearth.test", &[b"h2"]).await.unwrap_err();
        assert!(deep.to_string().contains("certificate"), "{deep}");
        server.abort();
    }

    fn now() -> i64 {
        i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap()
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = local_ca(dir.path(), "hearth.test", NOW).unwrap();
        let missing = dir.path().join("nope.pem");
        let e = server_config(&missing, &files.key).unwrap_err();
        assert!(e.to_string().contains("nope.pem"), "{e}");
        let e = server_config(&files.key, &files.key).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        let e = server_config(&files.cert, &files.cert).unwrap_err();
        assert!(matches!(e, TlsError::NoKey { .. }), "{e}");
        let other = local_ca(&dir.path().join("other"), "other.test", NOW).unwrap();
        let e = server_config(&files.cert, &other.key).unwrap_err();
        assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
    }
}
