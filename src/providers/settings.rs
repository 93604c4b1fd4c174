//! How providers and groups are configured: the provider type with its own settings, limit
//! overrides, and groups that fan out to several providers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::sandbox::SandboxSettings;
use crate::limiter::Rate;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProviderConfig {
    /// What callers put in `CreatePurgeRequest.provider`.
    pub name: String,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(flatten)]
    pub settings: ProviderSettings,
}

/// Overrides of a provider's documented limits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub submit: Option<Vec<Rate>>,
    pub status: Option<Vec<Rate>>,
    /// Per-call cap by kind name (`URL`, `PREFIX`, ...).
    pub max_per_call: BTreeMap<String, usize>,
    /// Names the account the call budgets (API rate limits) and documented daily quotas belong
    /// to. Providers naming the same account (two EdgeOne zones under one SecretId, say) share
    /// them; they must be of one type with the same `submit` and `status`. Quotas a provider
    /// reports itself (EdgeOne's, per zone) stay with that provider. By default each provider
    /// is its own account.
    #[serde(default, deserialize_with = "string_or_number")]
    pub account: Option<String>,
}

/// A string that may arrive as a number from an environment variable (`...__ACCOUNT=1300012345`).
pub fn string_or_number<'de, D>(d: D) -> Result<Option<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        S(String),
        I(i64),
    }
    Ok(Option::<Raw>::deserialize(d)?.map(|r| match r {
        Raw::S(s) => s,
        Raw::I(i) => i.to_string(),
    }))
}

/// The provider type and its own settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ProviderSettings {
    Sandbox(SandboxSettings),
    Edgeone(crate::providers::edgeone::EdgeOneSettings),
    Cdnpro(crate::providers::cdnetworks::CdnProSettings),
    Cdnetworks(crate::providers::cdnetworks::ContentSettings),
    Cloudfront(crate::providers::cloudfront::CloudFrontSettings),
    Akamai(crate::providers::akamai::AkamaiSettings),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    pub providers: Vec<String>,
}
