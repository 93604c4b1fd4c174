//! How providers and groups are configured: the provider type with its own settings, limit
//! overrides, and groups that fan out to several providers. Every provider type is listed
//! once, in the `provider_types!` line below; its settings type implements [`ProviderFactory`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ProviderFactory;
use crate::limiter::Rate;

/// Generates [`ProviderSettings`], tagged by `type = "..."` in the config, and its dispatch to
/// each settings type's [`ProviderFactory`].
macro_rules! provider_types {
    ($($tag:literal => $variant:ident($settings:ty)),+ $(,)?) => {
        /// The provider type and its own settings.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "type")]
        pub enum ProviderSettings {
            $(#[serde(rename = $tag)] $variant($settings),)+
        }

        impl ProviderSettings {
            /// Every `type` a provider may have.
            pub const TYPES: &[&str] = &[$($tag),+];

            /// The settings as the factory of their provider.
            pub fn factory(&self) -> &dyn ProviderFactory {
                match self {
                    $(ProviderSettings::$variant(s) => s,)+
                }
            }
        }
    };
}

// The one line per provider type: `type => Variant(SettingsType)`.
provider_types! {
    "sandbox" => Sandbox(super::sandbox::SandboxSettings),
    "edgeone" => Edgeone(super::edgeone::EdgeOneSettings),
    "cdnpro" => Cdnpro(super::cdnetworks::CdnProSettings),
    "cdnetworks" => Cdnetworks(super::cdnetworks::ContentSettings),
    "cloudflare" => Cloudflare(super::cloudflare::CloudflareSettings),
    "fastly" => Fastly(super::fastly::FastlySettings),
    "cloudfront" => Cloudfront(super::cloudfront::CloudFrontSettings),
    "akamai" => Akamai(super::akamai::AkamaiSettings),
}

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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    pub providers: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_type_is_a_config_type_and_builds() {
        let err = toml::from_str::<ProviderConfig>("name = \"x\"\ntype = \"nope\"").unwrap_err();
        for t in ProviderSettings::TYPES {
            assert!(err.to_string().contains(&format!("`{t}`")), "{t}: {err}");
        }
        let sandbox: ProviderConfig = toml::from_str("name = \"s\"\ntype = \"sandbox\"").unwrap();
        let mut registry = crate::providers::Registry::default();
        let http = reqwest::Client::new();
        let built = sandbox.settings.factory().build("s", &http, &mut registry);
        assert!(built.is_ok() && registry.sandbox("s").is_some());
    }
}
