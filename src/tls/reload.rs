//! Certificate rotation without a restart: the files are read again every few seconds and,
//! when their content changed, a new rustls config replaces the old one for new connections.
//! A new set that cannot be used keeps the old one and logs an error once.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::certs::{self, CertInfo, TlsError};
use super::settings::ServerTlsConfig;

/// The rustls config new connections get; a small `Clone` handle.
#[derive(Clone)]
pub struct Reloading {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ServerTlsConfig,
    current: ArcSwap<rustls::ServerConfig>,
    /// When the served certificate expires, in seconds since the epoch.
    not_after: AtomicI64,
}

impl Reloading {
    /// Loads the files once; errors here stop the start (there is nothing older to keep).
    pub fn load(settings: &ServerTlsConfig) -> Result<Reloading, TlsError> {
        let (config, info) = certs::server_config(settings)?;
        log_loaded("serving TLS certificate", settings, &info);
        Ok(Reloading {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                current: ArcSwap::from_pointee(config),
                not_after: AtomicI64::new(info.not_after_unix),
            }),
        })
    }

    /// The config for the next handshake.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.inner.current.load_full()
    }

    /// When the certificate served now expires, in seconds since the epoch (the expiry gauge).
    pub fn not_after_unix(&self) -> i64 {
        self.inner.not_after.load(Ordering::Relaxed)
    }

    pub fn handshake_timeout(&self) -> std::time::Duration {
        self.inner.settings.handshake_timeout
    }

    /// Checks the files every `reload_interval` until `stop`.
    pub async fn watch(self, stop: CancellationToken) {
        let settings = &self.inner.settings;
        let mut seen = fingerprint(settings);
        let mut every = tokio::time::interval(settings.reload_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let now = fingerprint(settings);
            if now == seen {
                continue;
            }
            seen = now;
            // A Secret update swaps all files at once, cert-manager writes them one by one:
            // a half-written pair fails here and the next change (the other file) loads.
            match certs::server_config(settings) {
                Ok((config, info)) => {
                    self.inner.current.store(Arc::new(config));
                    self.inner
                        .not_after
                        .store(info.not_after_unix, Ordering::Relaxed);
                    log_loaded("rotated TLS certificate", settings, &info);
                }
                Err(e) => {
                    tracing::error!(
                        error = %e,
                        cause = ?std::error::Error::source(&e).map(|s| s.to_string()),
                        "new TLS files cannot be used; keeping the current certificate"
                    );
                }
            }
        }
    }
}

fn log_loaded(what: &str, settings: &ServerTlsConfig, info: &CertInfo) {
    tracing::info!(
        cert_file = %settings.cert_file.display(),
        serial = %info.serial,
        not_after = %info.not_after,
        subject = %info.subject,
        client_ca = ?settings.client_ca_file,
        "{what}"
    );
}

/// A digest of every file's content (an unreadable file counts as its error), so a symlink
/// swap is seen even when modification times are not.
fn fingerprint(settings: &ServerTlsConfig) -> [u8; 32] {
    let mut hash = Sha256::new();
    let files = [
        Some(&settings.cert_file),
        Some(&settings.key_file),
        settings.client_ca_file.as_ref(),
    ];
    for path in files.into_iter().flatten() {
        match std::fs::read(path) {
            Ok(bytes) => {
                hash.update((bytes.len() as u64).to_be_bytes());
                hash.update(&bytes);
            }
            Err(e) => hash.update(format!("error {:?}", e.kind())),
        }
    }
    hash.finalize().into()
}
