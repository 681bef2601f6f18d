//! Certificates made at run time (rcgen, ECDSA P-256): one CA per test, server certificates
//! with the workload's SPIFFE URI SAN plus `DNS:localhost` and `IP:127.0.0.1`, and client
//! certificates with exactly the URI SAN a case's `source.principal` names (cached per
//! principal), or with no URI SAN at all (a subject DN only, which is not an identity).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::wire::ClientTls;

/// A certificate and its PKCS#8 key.
#[derive(Debug)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

/// A test CA.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// The files an Envoy listener needs for mTLS.
#[derive(Clone, Debug)]
pub struct ServerFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "cluster.local");
    dn.push(DnType::CommonName, cn);
    dn
}

impl Ca {
    pub fn new() -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn("meshauthz-e2e-root-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Ca { issuer })
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A leaf certificate: subject `O=cluster.local, CN=<cn>`, the given URI SAN (if any), DNS
    /// and IP SANs; usable for both server and client authentication.
    pub fn leaf(&self, cn: &str, uri: Option<&str>, dns: &[&str], ips: &[IpAddr]) -> Result<Leaf> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(cn);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if let Some(uri) = uri {
            params.subject_alt_names.push(SanType::URI(
                uri.try_into().with_context(|| format!("URI SAN {uri:?}"))?,
            ));
        }
        for d in dns {
            params
                .subject_alt_names
                .push(SanType::DnsName((*d).try_into()?));
        }
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }

    /// Writes `ca.crt`, `<name>.crt` and `<name>.key` for an Envoy server whose identity is
    /// `spiffe_id`; the certificate also names `localhost` and 127.0.0.1.
    pub fn write_server(&self, dir: &Path, name: &str, spiffe_id: &str) -> Result<ServerFiles> {
        let leaf = self.leaf(
            name,
            Some(spiffe_id),
            &["localhost"],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        )?;
        let files = ServerFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.ca, self.pem())?;
        std::fs::write(&files.cert, &leaf.cert_pem)?;
        std::fs::write(&files.key, &leaf.key_pem)?;
        Ok(files)
    }
}

/// Which client certificate a connection presents.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientIdentity {
    /// A certificate whose only URI SAN is this (a SPIFFE ID, as the case's `source.principal`).
    Uri(String),
    /// A certificate with a subject DN (`O=cluster.local, CN=no-uri-san`) and no SAN at all.
    SubjectOnly,
}

/// rustls client configs trusting the CA, one per client identity (cached).
pub struct ClientCerts {
    ca: Arc<Ca>,
    provider: Arc<CryptoProvider>,
    verifier: Arc<LocalhostVerifier>,
    cache: Mutex<HashMap<ClientIdentity, Arc<ClientConfig>>>,
}

impl std::fmt::Debug for ClientCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCerts").finish_non_exhaustive()
    }
}

impl ClientCerts {
    pub fn new(ca: Arc<Ca>) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca.der())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()?;
        Ok(ClientCerts {
            ca,
            provider,
            verifier: Arc::new(LocalhostVerifier(inner)),
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The client config presenting `identity`'s certificate.
    pub fn config(&self, identity: &ClientIdentity) -> Result<Arc<ClientConfig>> {
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| anyhow!("client certificate cache poisoned"))?;
        if let Some(c) = cache.get(identity) {
            return Ok(c.clone());
        }
        let leaf = match identity {
            ClientIdentity::Uri(uri) => self.ca.leaf("client", Some(uri), &[], &[])?,
            ClientIdentity::SubjectOnly => self.ca.leaf("no-uri-san", None, &[], &[])?,
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der));
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(self.verifier.clone())
            .with_client_auth_cert(vec![leaf.cert_der], key)?;
        let config = Arc::new(config);
        cache.insert(identity.clone(), config.clone());
        Ok(config)
    }

    /// TLS settings for one connection: `sni` is sent as SNI; `None` sends no SNI.
    pub fn client_tls(&self, identity: &ClientIdentity, sni: Option<&str>) -> Result<ClientTls> {
        let server_name = match sni {
            Some(s) => ServerName::try_from(s.to_string())
                .map_err(|e| anyhow!("SNI {s:?} is not a DNS name: {e}"))?,
            None => ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into()),
        };
        Ok(ClientTls {
            config: self.config(identity)?,
            server_name,
        })
    }
}

/// A client config from PEM files (e.g. the demo certificates of `examples/envoy/make-certs.sh`):
/// trusts `ca`, presents `cert` and `key`; Envoy's certificate is checked for `localhost`.
pub fn client_config_from_pem(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).with_context(|| format!("{}", ca.display()))? {
        roots.add(c?)?;
    }
    let inner =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("{}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("{}", key.display()))?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(LocalhostVerifier(inner)))
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// A client config trusting `ca` that presents no certificate (an edge client).
pub fn server_only_config_from_pem(ca: &Path) -> Result<Arc<ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).with_context(|| format!("{}", ca.display()))? {
        roots.add(c?)?;
    }
    let inner =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(LocalhostVerifier(inner)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Verifies Envoy's certificate chain against the test CA for the name `localhost`, whatever
/// SNI the case sends (an SNI such as `outbound_.8000_._.httpbin.foo.svc.cluster.local` is a
/// routing label, not the certificate's name).
#[derive(Debug)]
struct LocalhostVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for LocalhostVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name =
            ServerName::try_from("localhost").map_err(|e| rustls::Error::General(e.to_string()))?;
        self.0
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
