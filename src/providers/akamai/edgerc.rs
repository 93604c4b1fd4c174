//! Akamai API client credentials: host, client token, client secret and access token, from
//! env/files or from one section of an `.edgerc` INI file.

use std::collections::HashMap;
use std::path::Path;

use secrecy::SecretString;

use crate::settings::ConfigError;

/// One API client's credentials.
pub struct EdgeGridCredentials {
    /// The API host (`akab-....luna.akamaiapis.net`), without scheme.
    pub host: String,
    pub client_token: SecretString,
    pub client_secret: SecretString,
    pub access_token: SecretString,
}

impl std::fmt::Debug for EdgeGridCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeGridCredentials")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// A line of an `.edgerc` file that is not `[section]`, `key = value` or a comment.
#[derive(Debug, thiserror::Error)]
pub enum EdgercError {
    #[error("line {0}: expected `key = value` or `[section]`")]
    NotKeyValue(usize),
    #[error("line {0}: a key before any [section]")]
    KeyBeforeSection(usize),
}

/// The sections of an `.edgerc` file: `[name]` headers, `key = value` lines (values may be
/// quoted), `#` and `;` comments.
pub fn parse(text: &str) -> Result<HashMap<String, HashMap<String, String>>, EdgercError> {
    let mut sections: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut current: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim().to_owned();
            sections.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(EdgercError::NotKeyValue(n + 1));
        };
        let Some(section) = &current else {
            return Err(EdgercError::KeyBeforeSection(n + 1));
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        sections
            .get_mut(section)
            .expect("section exists")
            .insert(key.trim().to_ascii_lowercase(), value.to_owned());
    }
    Ok(sections)
}

/// The host as `.edgerc` files write it, without a scheme or trailing `/`.
pub fn bare_host(host: &str) -> String {
    let host = host.trim();
    let host = host
        .strip_prefix("https://")
        .or_else(|| host.strip_prefix("http://"))
        .unwrap_or(host);
    host.trim_end_matches('/').to_owned()
}

/// Reads `section` of the `.edgerc` file at `path`; errors name the file, section and key.
pub fn from_file(path: &Path, section: &str) -> Result<EdgeGridCredentials, ConfigError> {
    let what = format!("akamai edgerc_file {}", path.display());
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Invalid(format!("{what}: cannot read it: {e}")))?;
    let sections = parse(&text).map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))?;
    let s = sections.get(section).ok_or_else(|| {
        ConfigError::Invalid(format!("{what}: no section [{section}] (edgerc_section)"))
    })?;
    let get = |key: &str| {
        s.get(key)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| ConfigError::Invalid(format!("{what}: [{section}] has no {key}")))
    };
    Ok(EdgeGridCredentials {
        host: bare_host(&get("host")?),
        client_token: SecretString::from(get("client_token")?),
        client_secret: SecretString::from(get("client_secret")?),
        access_token: SecretString::from(get("access_token")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn sections_and_keys_are_read() {
        let text = "# comment\n[default]\nclient_secret = abc=\nhost = akab-h.luna.akamaiapis.net/\naccess_token = \"akab-a\"\nclient_token = akab-c\nmax-body = 131072\n\n[ccu]\n; other\nhost=h2\n";
        let sections = parse(text).unwrap();
        assert_eq!(sections["default"]["client_secret"], "abc=");
        assert_eq!(sections["default"]["access_token"], "akab-a");
        assert_eq!(sections["ccu"]["host"], "h2");
        assert!(
            parse("host = x\n")
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
        let dir = tempfile_dir();
        let path = dir.join("edgerc");
        std::fs::write(&path, text).unwrap();
        let creds = from_file(&path, "default").unwrap();
        assert_eq!(creds.host, "akab-h.luna.akamaiapis.net");
        assert_eq!(creds.client_secret.expose_secret(), "abc=");
        assert!(!format!("{creds:?}").contains("abc="));
        let err = from_file(&path, "ccu").unwrap_err().to_string();
        assert!(err.contains("[ccu] has no client_token"), "{err}");
        let err = from_file(&path, "nope").unwrap_err().to_string();
        assert!(err.contains("no section [nope]"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("edgerc-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
