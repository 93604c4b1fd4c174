//! What every configurable part shares, so that none of them imports the config module: the
//! error of a bad setting (one, or every problem of a config at once), and where a secret
//! comes from.

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
    /// Every problem found at once, each under the path of its field.
    #[error("invalid config: {0}")]
    Problems(ConfigProblems),
}

/// The problems of a config, each a field path (`providers.edge.limits.account`) and what is
/// wrong with it; shown one per line under its section (the path's first part).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigProblems(Vec<(String, String)>);

impl ConfigProblems {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push((path.into(), message.into()));
    }

    /// Records the error of `check` under `path`, if any.
    pub fn check<E: std::fmt::Display>(&mut self, path: impl Into<String>, check: Result<(), E>) {
        if let Err(e) = check {
            self.push(path, e.to_string());
        }
    }

    /// The `(path, message)` pairs in the order they were found.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(p, m)| (p.as_str(), m.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when there is none, else [`ConfigError::Problems`].
    pub fn into_result(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Problems(self))
        }
    }
}

impl std::fmt::Display for ConfigProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let section = |path: &str| path.split(['.', '[']).next().unwrap_or("").to_owned();
        let mut sections: Vec<String> = Vec::new();
        for (path, _) in &self.0 {
            let s = section(path);
            if !sections.contains(&s) {
                sections.push(s);
            }
        }
        let n = self.0.len();
        write!(f, "{n} problem{}", if n == 1 { "" } else { "s" })?;
        for s in &sections {
            write!(f, "\n[{s}]")?;
            for (path, message) in self.0.iter().filter(|(p, _)| section(p) == *s) {
                write!(f, "\n  {path}: {message}")?;
            }
        }
        Ok(())
    }
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
