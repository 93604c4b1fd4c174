//! What every configurable part shares, so that none of them imports the config module: the
//! error of a bad setting, and where a secret comes from.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Where a secret comes from: an environment variable or a file, never the config itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SecretRef {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

impl SecretRef {
    pub fn new(env: Option<String>, file: Option<PathBuf>) -> SecretRef {
        SecretRef { env, file }
    }

    /// Reads the secret; `what` names it in errors (never its value).
    pub fn resolve(&self, what: &str) -> Result<SecretString, ConfigError> {
        if let Some(var) = &self.env {
            return std::env::var(var)
                .map(|v| SecretString::from(v.trim().to_owned()))
                .map_err(|_| {
                    ConfigError::Invalid(format!("{what}: environment variable {var} is not set"))
                });
        }
        if let Some(path) = &self.file {
            return std::fs::read_to_string(path)
                .map(|v| SecretString::from(v.trim().to_owned()))
                .map_err(|e| {
                    ConfigError::Invalid(format!("{what}: cannot read {}: {e}", path.display()))
                });
        }
        Err(ConfigError::Invalid(format!(
            "{what}: set {what}_env or {what}_file"
        )))
    }
}
