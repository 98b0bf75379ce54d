//! The cluster's certificate authority: a root key pair and its
//! self-signed certificate, made once at bootstrap (and again by a
//! rotation), kept only by servers.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateSigningRequestDer;
use serde::{Deserialize, Serialize};

use super::{certificates, fingerprint, Credentials, PkiError, Request, Role};

/// How long a root is valid: rotation replaces it long before.
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Clocks of different hosts disagree a little: certificates start this
/// far in the past.
pub(super) const SKEW: Duration = Duration::from_secs(3600);

/// A root: its certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ca {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("digest", &self.digest()).finish_non_exhaustive()
    }
}

/// A certificate a root has just signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// PEM: the certificate, then the root that signed it (a joining node
    /// pins the root from this chain).
    pub chain: String,
    pub fingerprint: String,
}

fn sign_err(e: rcgen::Error) -> PkiError {
    PkiError::Sign(e.to_string())
}

fn subject(cluster: &str, role: &str, name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, cluster);
    dn.push(DnType::OrganizationalUnitName, role);
    dn
}

/// What a root's certificate says, whoever signs it.
fn root_params(dn: DistinguishedName, not_after: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(serial());
    params.not_before = (SystemTime::now() - SKEW).into();
    params.not_after = not_after.into();
    params
}

fn serial() -> SerialNumber {
    // Positive and 16 bytes: unique without a counter to keep.
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

impl Ca {
    /// A new root for `cluster`, named after it and a random tag, so
    /// that the roots of one cluster (before and after a rotation) never
    /// share a name and a certificate's issuer says which one signed it.
    pub fn new(cluster: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign_err)?;
        let tag = format!("{:08x}", rand::random::<u32>());
        let name = format!("berth root CA {} {tag}", &cluster[..cluster.len().min(12)]);
        let params = root_params(subject(cluster, "ca", &name), SystemTime::now() + ROOT_VALIDITY);
        let cert = params.self_signed(&key).map_err(sign_err)?;
        Ok(Ca { cert: cert.pem(), key: key.serialize_pem() })
    }

    /// The root's distinguished name, as certificates it signed name their issuer.
    pub fn name(&self) -> String {
        certificates(&self.cert).ok().and_then(|c| super::subject(&c[0]).ok()).unwrap_or_default()
    }

    /// `next`'s certificate signed by this root (PEM): during a rotation,
    /// chains carry it after their root, so a peer that still trusts only
    /// this root can verify certificates `next` signs.
    pub fn cross_sign(&self, next: &Ca) -> Result<String, PkiError> {
        use rustls::pki_types::pem::PemObject;
        let next_cert = rustls::pki_types::CertificateDer::from_pem_slice(next.cert.as_bytes())
            .map_err(|_| PkiError::Pem("certificate"))?;
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&next_cert).map_err(|e| PkiError::Unreadable(e.to_string()))?;
        // The same name, written the same way, as `next`'s own certificate.
        let attr = |a: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>| {
            a.and_then(|a| a.as_str().ok()).map(str::to_owned).ok_or(PkiError::Missing("root name"))
        };
        let name = attr(parsed.subject().iter_common_name().next())?;
        let cluster = attr(parsed.subject().iter_organization().next())?;
        let dn = subject(&cluster, "ca", &name);
        let not_after =
            SystemTime::UNIX_EPOCH + Duration::from_secs(parsed.validity().not_after.timestamp().max(0).unsigned_abs());
        let params = root_params(dn, not_after);
        let next_key = KeyPair::from_pem(&next.key).map_err(sign_err)?;
        let key = KeyPair::from_pem(&self.key).map_err(sign_err)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert, key).map_err(sign_err)?;
        Ok(params.signed_by(&next_key, &issuer).map_err(sign_err)?.pem())
    }

    /// SHA-256 of the root certificate: what a join token pins.
    pub fn digest(&self) -> String {
        super::digest(&self.cert)
    }

    /// Signs the public key of `csr` (PEM) into a certificate naming
    /// `name` as `role` of `cluster`, valid for `validity`. Everything the
    /// request asks for besides its key is ignored: the authority decides
    /// who the holder is.
    pub fn issue(
        &self,
        csr: &str,
        cluster: &str,
        role: Role,
        name: &str,
        validity: Duration,
    ) -> Result<Issued, PkiError> {
        use rustls::pki_types::pem::PemObject;
        let der = CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
            .map_err(|_| PkiError::Pem("certificate request"))?;
        let request = CertificateSigningRequestParams::from_der(&der).map_err(sign_err)?;
        let key = KeyPair::from_pem(&self.key).map_err(sign_err)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert, key).map_err(sign_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject(cluster, role.as_str(), name);
        if let Some(dns) = role.dns_name() {
            let dns = dns.try_into().map_err(sign_err)?;
            params.subject_alt_names = vec![SanType::DnsName(dns)];
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(serial());
        let now = SystemTime::now();
        params.not_before = (now - SKEW).into();
        params.not_after = (now + validity).into();
        let cert = params.signed_by(&request.public_key, &issuer).map_err(sign_err)?;
        Ok(Issued { chain: format!("{}{}", cert.pem(), self.cert), fingerprint: fingerprint(cert.der()) })
    }

    /// A key pair made here and its certificate, trusting `roots`: the
    /// bootstrap server's own, and users' (made where the root is).
    pub fn credentials(
        &self,
        cluster: &str,
        role: Role,
        name: &str,
        validity: Duration,
        roots: &str,
    ) -> Result<Credentials, PkiError> {
        let request = Request::new()?;
        let issued = self.issue(&request.csr, cluster, role, name, validity)?;
        request.complete(issued.chain, roots.to_owned())
    }
}
