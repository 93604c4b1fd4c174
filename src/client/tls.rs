//! The client's transport: which addresses use TLS (an `https://` address, or any address when
//! `--ca-cert` is given), the CA that vouches for the server (the system's and the public web
//! roots without one), the client certificate of mutual TLS, and clear errors for flags that
//! do not fit together. Key material is read from files and never printed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// TLS flags shared by every `purge` subcommand.
#[derive(Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// PEM file of the CA certificate(s) the server's certificate must chain to; turns TLS on
    /// for host:port addresses (without it, TLS only for https:// ones, trusting the system's
    /// and the public web roots).
    #[arg(long, env = "PURGE_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate (chain, leaf first) for mutual TLS; needs --key.
    #[arg(long, env = "PURGE_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "PURGE_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the --addr host (e.g.
    /// connecting to an IP or through a tunnel).
    #[arg(
        long,
        visible_alias = "domain",
        env = "PURGE_TLS_SERVER_NAME",
        value_name = "NAME"
    )]
    pub tls_server_name: Option<String>,
}

/// TLS flags that cannot be used as given.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--cert {0:?} needs --key (the certificate's private key)")]
    CertWithoutKey(PathBuf),
    #[error("--key {0:?} needs --cert (the client certificate it belongs to)")]
    KeyWithoutCert(PathBuf),
    #[error("cannot read {flag} {path:?}: {source}")]
    Read {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag} {path:?} holds no PEM {what}")]
    NotPem {
        flag: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("--tls-server-name {0:?} is not a DNS name or IP address")]
    ServerName(String),
    #[error(
        "--addr {addr:?} is plaintext (http://) but {flag} asks for TLS: use https:// or a host:port address"
    )]
    PlaintextAddr { addr: String, flag: &'static str },
    #[error(
        "{flag} needs TLS, which --addr {addr:?} does not use: give --ca-cert or an https:// address"
    )]
    NoTls { addr: String, flag: &'static str },
    #[error("--addr {0:?}: the scheme must be http:// or https://")]
    Scheme(String),
    #[error("--addr {0:?} is not a valid address")]
    Address(String),
    #[error("TLS settings for --addr {addr:?} were refused: {source}")]
    Config {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// The TLS flags, checked and read once: how every address is reached.
#[derive(Clone, Debug, Default)]
pub struct Transport {
    ca: Option<Certificate>,
    identity: Option<Identity>,
    server_name: Option<String>,
    /// The flag that turned TLS on for host:port addresses (`--ca-cert`), or the first TLS
    /// flag given, for error messages.
    flag: Option<&'static str>,
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

fn not_pem(flag: &'static str, path: &Path, what: &'static str) -> TlsError {
    TlsError::NotPem {
        flag,
        path: path.to_owned(),
        what,
    }
}

/// `pem` holds at least one certificate.
fn check_certs(flag: &'static str, path: &Path, pem: &[u8]) -> Result<(), TlsError> {
    let mut certs = CertificateDer::pem_slice_iter(pem);
    match certs.next() {
        Some(Ok(_)) if certs.all(|c| c.is_ok()) => Ok(()),
        _ => Err(not_pem(flag, path, "certificate")),
    }
}

impl TlsArgs {
    /// Checks the flags together and reads the files.
    pub fn transport(&self) -> Result<Transport, TlsError> {
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let cert_pem = read("--cert", cert)?;
                check_certs("--cert", cert, &cert_pem)?;
                let key_pem = read("--key", key)?;
                if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
                    return Err(not_pem("--key", key, "private key"));
                }
                Some(Identity::from_pem(cert_pem, key_pem))
            }
            (Some(cert), None) => return Err(TlsError::CertWithoutKey(cert.clone())),
            (None, Some(key)) => return Err(TlsError::KeyWithoutCert(key.clone())),
            (None, None) => None,
        };
        let ca = match &self.ca_cert {
            Some(path) => {
                let pem = read("--ca-cert", path)?;
                check_certs("--ca-cert", path, &pem)?;
                Some(Certificate::from_pem(pem))
            }
            None => None,
        };
        if let Some(name) = &self.tls_server_name
            && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            return Err(TlsError::ServerName(name.clone()));
        }
        let flag = if self.ca_cert.is_some() {
            Some("--ca-cert")
        } else if self.cert.is_some() {
            Some("--cert")
        } else if self.tls_server_name.is_some() {
            Some("--tls-server-name")
        } else {
            None
        };
        Ok(Transport {
            ca,
            identity,
            server_name: self.tls_server_name.clone(),
            flag,
        })
    }
}

impl Transport {
    /// The endpoint of one `--addr`: TLS for https://, and for host:port when --ca-cert is
    /// given; plaintext otherwise, where a TLS-only flag is an error.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, TlsError> {
        let (scheme, rest) = match addr.split_once("://") {
            Some((scheme, rest)) => (Some(scheme.to_ascii_lowercase()), rest),
            None => (None, addr),
        };
        let tls = match scheme.as_deref() {
            Some("https") => true,
            Some("http") => {
                if let Some(flag) = self.flag {
                    return Err(TlsError::PlaintextAddr {
                        addr: addr.to_owned(),
                        flag,
                    });
                }
                false
            }
            Some(_) => return Err(TlsError::Scheme(addr.to_owned())),
            None => self.ca.is_some(),
        };
        if !tls && let Some(flag) = self.flag {
            return Err(TlsError::NoTls {
                addr: addr.to_owned(),
                flag,
            });
        }
        let url = format!("{}://{rest}", if tls { "https" } else { "http" });
        let endpoint =
            Endpoint::from_shared(url).map_err(|_| TlsError::Address(addr.to_owned()))?;
        let endpoint = endpoint.connect_timeout(Duration::from_secs(5));
        if !tls {
            return Ok(endpoint);
        }
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(ca.clone()),
            None => config.with_enabled_roots(),
        };
        if let Some(identity) = &self.identity {
            config = config.identity(identity.clone());
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        endpoint
            .tls_config(config)
            .map_err(|source| TlsError::Config {
                addr: addr.to_owned(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_flags_that_do_not_fit_are_refused_by_name() {
        let plain = TlsArgs::default().transport().unwrap();
        assert!(plain.endpoint("127.0.0.1:50051").is_ok());
        assert!(matches!(
            plain.endpoint("grpc://x:1"),
            Err(TlsError::Scheme(_))
        ));
        let named = TlsArgs {
            tls_server_name: Some("purge.example".into()),
            ..Default::default()
        }
        .transport()
        .unwrap();
        let err = named.endpoint("127.0.0.1:50051").unwrap_err().to_string();
        assert!(err.contains("--tls-server-name needs TLS"), "{err}");
        assert!(named.endpoint("https://127.0.0.1:50051").is_ok());
        let err = named
            .endpoint("http://127.0.0.1:1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("plaintext (http://)"), "{err}");
        let cert_only = TlsArgs {
            cert: Some("/nonexistent/c.pem".into()),
            ..Default::default()
        };
        assert!(matches!(
            cert_only.transport(),
            Err(TlsError::CertWithoutKey(_))
        ));
        let missing = TlsArgs {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let err = missing.transport().unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read --ca-cert \"/nonexistent/ca.pem\""),
            "{err}"
        );
        let bad_name = TlsArgs {
            tls_server_name: Some("not a name".into()),
            ..Default::default()
        };
        assert!(matches!(bad_name.transport(), Err(TlsError::ServerName(_))));
    }
}
