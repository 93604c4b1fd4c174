//! The `[server.tls]` settings: where the certificate, key and client CA are, and how long a
//! handshake may take. Shared by the config (which embeds them) and the TLS acceptor.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// TLS on the gRPC port. Files are PEM, re-read when they change (a Kubernetes Secret mount or
/// cert-manager's `tls.crt`/`tls.key`/`ca.crt` work as they are).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// The server's certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CAs whose client certificates are accepted; without it no client certificate is asked.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With a `client_ca_file`: whether a client must present a certificate.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// A connection that has not finished its handshake after this long is closed.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How often the files are checked for a new certificate.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(5)
}

/// Whether clients must prove who they are with a certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// The handshake fails without a certificate the client CA signed.
    #[default]
    Required,
    /// A certificate is verified when sent; callers may still use a bearer token instead.
    Optional,
}

impl ServerTlsConfig {
    /// A config with the default timeouts.
    pub fn new(cert_file: PathBuf, key_file: PathBuf) -> ServerTlsConfig {
        ServerTlsConfig {
            cert_file,
            key_file,
            client_ca_file: None,
            client_auth: ClientAuth::Required,
            handshake_timeout: default_handshake_timeout(),
            reload_interval: default_reload_interval(),
        }
    }
}
