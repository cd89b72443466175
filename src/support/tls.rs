//! TLS to the stores. Redis: `rediss://` URLs (redis-rs with rustls), trusting `tls.ca_file`
//! when set. PostgreSQL: tokio-postgres with a rustls connector of trackd's own, following the
//! URL's `sslmode` as libpq does — `disable`; `prefer` (the default) and `require` encrypt
//! without checking the certificate (unless a CA file is configured, which makes `require`
//! check the chain); `verify-ca` checks the chain; `verify-full` the chain and the host name.
//!
//! The trusted authorities ([`Tls`]) come from the `tls` section: the CA file, or else the
//! system's certificates.

use crate::config::TlsSettings;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// The authorities a deployment trusts for TLS to its stores (from the `tls` section): the CA
/// file's, or else the system's.
#[derive(Clone, Default)]
pub struct Tls {
    ca_pem: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.ca_pem.is_some() {
            "Tls(ca_file)"
        } else {
            "Tls(system roots)"
        })
    }
}

impl Tls {
    pub fn from_settings(t: &TlsSettings) -> Result<Self, String> {
        if t.ca_file.as_os_str().is_empty() {
            return Ok(Self::default());
        }
        let pem = std::fs::read(&t.ca_file)
            .map_err(|e| format!("tls.ca_file {}: {e}", t.ca_file.display()))?;
        if CertificateDer::pem_slice_iter(&pem).next().is_none() {
            return Err(format!(
                "tls.ca_file {}: no PEM certificate in it",
                t.ca_file.display()
            ));
        }
        Ok(Self {
            ca_pem: Some(pem.into()),
        })
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        match &self.ca_pem {
            Some(pem) => {
                for cert in CertificateDer::pem_slice_iter(pem).flatten() {
                    let _ = roots.add(cert);
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        roots
    }

    /// A Redis client for `url`, trusting these authorities for `rediss://`.
    pub fn redis_client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        match self
            .redis_certificates()
            .filter(|_| url.starts_with("rediss://"))
        {
            Some(certs) => redis::Client::build_with_tls(url, certs),
            None => redis::Client::open(url),
        }
    }

    /// These authorities for a Redis Cluster client (`None`: the system's).
    pub fn redis_certificates(&self) -> Option<redis::TlsCertificates> {
        self.ca_pem.as_ref().map(|pem| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.to_vec()),
        })
    }

    /// The URL tokio-postgres can parse (it knows `sslmode` only up to `require`) and the
    /// connector that checks what the URL's `sslmode` asks of the certificate.
    pub fn postgres(&self, url: &str) -> (String, PostgresTls) {
        let (url, verify) = if url.contains("sslmode=verify-full") {
            (
                url.replace("sslmode=verify-full", "sslmode=require"),
                Verify::ChainAndName,
            )
        } else if url.contains("sslmode=verify-ca") {
            (
                url.replace("sslmode=verify-ca", "sslmode=require"),
                Verify::Chain,
            )
        } else if url.contains("sslmode=require") && self.ca_pem.is_some() {
            (url.to_owned(), Verify::Chain)
        } else {
            (url.to_owned(), Verify::Nothing)
        };
        (url, PostgresTls::new(verify, self))
    }
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    ChainAndName,
}

/// tokio-postgres's TLS connector, over rustls.
#[derive(Clone)]
pub struct PostgresTls {
    config: Arc<ClientConfig>,
}

impl PostgresTls {
    fn new(verify: Verify, tls: &Tls) -> Self {
        let builder = ClientConfig::builder();
        let config = match verify {
            Verify::ChainAndName => builder.with_root_certificates(tls.roots()),
            Verify::Chain | Verify::Nothing => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient::new(verify, tls))),
        }
        .with_no_client_auth();
        Self {
            config: Arc::new(config),
        }
    }
}

/// Checks less than the name (libpq's `verify-ca`, `require`, `prefer`): the chain to a
/// trusted root, or nothing; the handshake's signatures are checked either way.
#[derive(Debug)]
struct Lenient {
    verify: Verify,
    inner: Option<Arc<WebPkiServerVerifier>>,
    schemes: Vec<SignatureScheme>,
}

impl Lenient {
    fn new(verify: Verify, tls: &Tls) -> Self {
        let inner = (verify == Verify::Chain)
            .then(|| {
                WebPkiServerVerifier::builder(Arc::new(tls.roots()))
                    .build()
                    .ok()
            })
            .flatten();
        let schemes = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes();
        Self {
            verify,
            inner,
            schemes,
        }
    }
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.verify == Verify::Nothing {
            return Ok(ServerCertVerified::assertion());
        }
        let Some(inner) = &self.inner else {
            return Err(rustls::Error::General("no trusted roots".into()));
        };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

impl<S> MakeTlsConnect<S> for PostgresTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = ConnectOne;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<ConnectOne> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(ConnectOne {
            config: Arc::clone(&self.config),
            name,
        })
    }
}

/// One connection's TLS handshake.
pub struct ConnectOne {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for ConnectOne
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await
                .map(TlsStream)
        })
    }
}

/// An encrypted connection to PostgreSQL.
pub struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
