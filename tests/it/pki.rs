//! Certificates made at test time with rcgen (no key material in the repository): a CA, the
//! server's leaf for `localhost`/127.0.0.1, client leaves naming callers by DNS name or URI.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};

/// A certificate and its key, PEM.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A test certificate authority.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let pem = params.self_signed(&key).expect("self-signed").pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// The server's certificate for `localhost` and 127.0.0.1, with `serial`.
    pub fn server(&self, serial: u64) -> Pem {
        self.leaf(
            vec![
                SanType::DnsName("localhost".try_into().expect("dns")),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            serial,
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        )
    }

    /// A client certificate naming `dns` (a DNS name) or a URI (`spiffe://...`).
    pub fn client(&self, name: &str) -> Pem {
        self.leaf(
            vec![san(name)],
            7,
            ExtendedKeyUsagePurpose::ClientAuth,
            false,
        )
    }

    /// A client certificate that expired in 2020.
    pub fn expired_client(&self, name: &str) -> Pem {
        self.leaf(
            vec![san(name)],
            8,
            ExtendedKeyUsagePurpose::ClientAuth,
            true,
        )
    }

    fn leaf(
        &self,
        sans: Vec<SanType>,
        serial: u64,
        usage: ExtendedKeyUsagePurpose,
        expired: bool,
    ) -> Pem {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = sans;
        params
            .distinguished_name
            .push(DnType::CommonName, "test leaf");
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn san(name: &str) -> SanType {
    if name.contains("://") {
        SanType::URI(name.try_into().expect("uri"))
    } else {
        SanType::DnsName(name.try_into().expect("dns"))
    }
}

/// Writes `text` to `dir/name`; returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// The serial of a PEM certificate as the service logs it.
pub fn serial_of(pem: &str) -> String {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
    purge_service::tls::certs::info(&der).expect("x509").serial
}
