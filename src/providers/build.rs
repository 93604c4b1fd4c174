//! Builds the provider registry from configuration, applying limit overrides.

use std::sync::Arc;

use super::sandbox::Sandbox;
use super::settings::{GroupConfig, ProviderConfig, ProviderSettings};
use super::{Provider, ProviderHandle, Registry};
use crate::model::PurgeKind;
use crate::settings::ConfigError;

/// One shared HTTP client for every provider: connection pools and TLS set up once.
pub fn http_client() -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .user_agent(concat!("purge-service/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ConfigError::Invalid(format!("cannot build the HTTP client: {e}")))
}

pub fn registry(
    providers: &[ProviderConfig],
    groups: &[GroupConfig],
    http: &reqwest::Client,
) -> Result<Registry, ConfigError> {
    let mut registry = Registry::default();
    for pc in providers {
        let client: Arc<dyn Provider> = match &pc.settings {
            ProviderSettings::Sandbox(s) => {
                let sandbox = Sandbox::new(s.clone()).map_err(|e| {
                    ConfigError::Invalid(format!("providers.{}.fail_pattern: {e}", pc.name))
                })?;
                registry.insert_sandbox(&pc.name, sandbox.clone());
                Arc::new(sandbox)
            }
            ProviderSettings::Edgeone(s) => {
                Arc::new(super::edgeone::EdgeOne::new(s, http.clone())?)
            }
            ProviderSettings::Cdnpro(s) => {
                Arc::new(super::cdnetworks::CdnPro::new(s, http.clone())?)
            }
            ProviderSettings::Cdnetworks(s) => {
                Arc::new(super::cdnetworks::ContentManagement::new(s, http.clone())?)
            }
            ProviderSettings::Cloudfront(s) => {
                Arc::new(super::cloudfront::CloudFront::new(s, http.clone())?)
            }
            ProviderSettings::Akamai(s) => Arc::new(super::akamai::Akamai::new(s, http.clone())?),
        };
        registry.insert(handle(pc, client));
    }
    for g in groups {
        registry.insert_group(g.name.clone(), g.providers.clone());
    }
    Ok(registry)
}

fn handle(pc: &ProviderConfig, client: Arc<dyn Provider>) -> ProviderHandle {
    let mut caps = client.capabilities();
    if let Some(submit) = &pc.limits.submit {
        caps.submit_rates = submit.clone();
    }
    if let Some(status) = &pc.limits.status {
        caps.status_rates = status.clone();
    }
    for (kind, cap) in &pc.limits.max_per_call {
        let kind = PurgeKind::parse(kind).expect("validated kind");
        if let Some(c) = caps.max_per_call.get_mut(&kind) {
            *c = (*cap).max(1);
        }
    }
    let mut handle = ProviderHandle::new(pc.name.clone(), client, caps);
    if let Some(account) = &pc.limits.account {
        handle.budget = format!("account:{account}");
    }
    handle
}

/// Resolves every provider's secrets once, so `check-config` reports a missing one.
pub fn check_secrets(providers: &[ProviderConfig]) -> Result<(), ConfigError> {
    let http = http_client()?;
    registry(providers, &[], &http).map(|_| ())
}
