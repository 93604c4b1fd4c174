//! CDNetworks end to end: gRPC in, the fake CDN Pro and Content Management APIs out (real HTTP,
//! their own check of both authentication schemes).

mod cdnpro;
mod content;

use std::path::Path;

use tempfile::TempDir;

use crate::fakes::cdnetworks::{ACCESS_KEY, API_KEY, SECRET_KEY, USERNAME};
use crate::support::{TestApp, config, spawn_app};

#[derive(Clone, Copy, Debug)]
pub enum Scheme {
    AkSk,
    ApiKey,
}

/// The service with one provider `name` of `kind` (`cdnpro` or `cdnetworks`) at `endpoint`.
/// `keys` are extra provider keys, `tables` extra provider tables (e.g. `[providers.limits]`);
/// `secret` replaces the right secret key or API key; `dispatch` are extra `[dispatch]` keys.
pub async fn service(
    kind: &str,
    endpoint: &str,
    scheme: Scheme,
    secret: Option<&str>,
    keys: &str,
    tables: &str,
    dispatch: &str,
) -> (TestApp, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let provider = provider_toml(kind, endpoint, scheme, secret, keys, dir.path());
    let toml =
        format!("[dispatch]\nretry_max_elapsed = \"20s\"\n{dispatch}\n{provider}\n{tables}\n");
    (spawn_app(config(&toml)).await, dir)
}

/// The provider table of one provider `name` of `kind` at `endpoint`, its keys in files under
/// `dir`; `secret` replaces the right secret key or API key, `keys` are extra provider keys.
pub fn provider_toml(
    kind: &str,
    endpoint: &str,
    scheme: Scheme,
    secret: Option<&str>,
    keys: &str,
    dir: &Path,
) -> String {
    let file = |name: &str, value: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        path
    };
    let auth = match scheme {
        Scheme::AkSk => format!(
            "scheme = \"aksk\"\naccess_key_file = {:?}\nsecret_key_file = {:?}\n",
            file("ak", ACCESS_KEY),
            file("sk", secret.unwrap_or(SECRET_KEY))
        ),
        Scheme::ApiKey => format!(
            "scheme = \"api_key\"\nusername = \"{USERNAME}\"\napi_key_file = {:?}\n",
            file("apikey", secret.unwrap_or(API_KEY))
        ),
    };
    format!(
        "[[providers]]\nname = \"{kind}\"\ntype = \"{kind}\"\nendpoint = \"{endpoint}\"\ntimeout = \"2s\"\n{keys}\n[providers.auth]\n{auth}"
    )
}

/// Creates a purge and waits until it is terminal.
pub use crate::support::create;

/// Debug output of either product never shows a secret.
#[test]
fn debug_output_and_config_errors_never_show_secrets() {
    use purge_service::providers::cdnetworks::{
        CdnPro, CdnProSettings, ContentManagement, ContentSettings,
    };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "super-secret-value").unwrap();
    let aksk = format!(
        "[auth]\nscheme = \"aksk\"\naccess_key_file = {key:?}\nsecret_key_file = {key:?}\n"
    );
    let settings: CdnProSettings = toml::from_str(&aksk).unwrap();
    let pro = CdnPro::new(&settings, reqwest::Client::new()).unwrap();
    let shown = format!("{pro:?}");
    assert!(!shown.contains("super-secret-value"), "{shown}");
    let api_key =
        format!("[auth]\nscheme = \"api_key\"\nusername = \"u\"\napi_key_file = {key:?}\n");
    let settings: ContentSettings = toml::from_str(&api_key).unwrap();
    let cm = ContentManagement::new(&settings, reqwest::Client::new()).unwrap();
    let shown = format!("{cm:?}");
    assert!(
        !shown.contains("super-secret-value") && shown.contains("ApiKey"),
        "{shown}"
    );

    // A scheme without its fields, or with another scheme's, is refused by name.
    let missing: ContentSettings = toml::from_str(&format!(
        "[auth]\nscheme = \"api_key\"\napi_key_file = {key:?}\n"
    ))
    .unwrap();
    let err = ContentManagement::new(&missing, reqwest::Client::new()).unwrap_err();
    assert!(err.to_string().contains("needs username"), "{err}");
    let mixed: CdnProSettings = toml::from_str(&format!(
        "[auth]\nscheme = \"aksk\"\naccess_key_file = {key:?}\nsecret_key_file = {key:?}\nusername = \"u\"\n"
    ))
    .unwrap();
    let err = CdnPro::new(&mixed, reqwest::Client::new()).unwrap_err();
    assert!(err.to_string().contains("auth.username"), "{err}");
    assert!(!err.to_string().contains("super-secret-value"));
    assert!(toml::from_str::<CdnProSettings>("[auth]\nscheme = \"oauth\"\n").is_err());
}
