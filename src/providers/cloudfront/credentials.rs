//! Where CloudFront's keys come from: static keys (env or files, with an optional session
//! token), or a pod's web identity token exchanged at STS (`AssumeRoleWithWebIdentity`, an
//! unsigned form POST answered in XML), cached and exchanged again before they expire.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::api;
use crate::providers::ProviderError;
use crate::providers::http::{read_error, send_error};

/// Temporary credentials are exchanged again this long before they expire.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// One set of keys to sign with.
#[derive(Clone)]
pub struct Keys {
    pub access_key_id: SecretString,
    pub secret_access_key: SecretString,
    pub session_token: Option<SecretString>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys { .. }")
    }
}

/// The STS side of the web identity path.
#[derive(Debug)]
pub struct WebIdentity {
    pub http: reqwest::Client,
    pub sts_endpoint: url::Url,
    pub role_arn: String,
    pub token_file: PathBuf,
    pub session_name: String,
    pub timeout: Duration,
    cached: tokio::sync::Mutex<Option<(Keys, DateTime<Utc>)>>,
}

#[derive(Debug)]
pub enum Credentials {
    Static(Keys),
    WebIdentity(Box<WebIdentity>),
}

impl WebIdentity {
    pub fn new(
        http: reqwest::Client,
        sts_endpoint: url::Url,
        role_arn: String,
        token_file: PathBuf,
        timeout: Duration,
    ) -> WebIdentity {
        WebIdentity {
            http,
            sts_endpoint,
            role_arn,
            token_file,
            session_name: format!("purge-service-{}", uuid::Uuid::new_v4().simple()),
            timeout,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The cached keys while they have more than `REFRESH_BEFORE` left, else fresh ones. One
    /// exchange at a time: concurrent callers wait for it and share its answer.
    async fn keys(&self) -> Result<Keys, ProviderError> {
        let mut cached = self.cached.lock().await;
        if let Some((keys, expires)) = cached.as_ref()
            && Utc::now() + REFRESH_BEFORE < *expires
        {
            return Ok(keys.clone());
        }
        let (keys, expires) = self.assume().await?;
        tracing::info!(role_arn = %self.role_arn, %expires, "assumed role with the web identity token");
        *cached = Some((keys.clone(), expires));
        Ok(keys)
    }

    async fn assume(&self) -> Result<(Keys, DateTime<Utc>), ProviderError> {
        const WHAT: &str = "STS AssumeRoleWithWebIdentity";
        // Read every time: the kubelet rotates the projected token.
        let token = std::fs::read_to_string(&self.token_file).map_err(|e| ProviderError::Auth {
            message: format!(
                "{WHAT}: cannot read web_identity_token_file {}: {e}",
                self.token_file.display()
            ),
        })?;
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", "AssumeRoleWithWebIdentity")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", &self.role_arn)
            .append_pair("RoleSessionName", &self.session_name)
            .append_pair("WebIdentityToken", token.trim())
            .finish();
        let response = self
            .http
            .post(self.sts_endpoint.clone())
            .timeout(self.timeout)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| send_error(WHAT, e))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| read_error(WHAT, e))?;
        if !(200..300).contains(&status) {
            let error: api::ErrorResponse =
                api::parse(WHAT, &text).unwrap_or_else(|_| api::ErrorResponse {
                    error: Default::default(),
                    request_id: None,
                });
            let message = format!(
                "{WHAT}: {} (request {})",
                error.error.message,
                error.request_id.as_deref().unwrap_or("?")
            );
            return Err(api::classify(
                status,
                &error.error.code,
                &message,
                Duration::ZERO,
            ));
        }
        let answer: AssumeResponse = api::parse(WHAT, &text)?;
        let c = answer.result.credentials;
        let expires =
            c.expiration
                .parse::<DateTime<Utc>>()
                .map_err(|e| ProviderError::Protocol {
                    message: format!("{WHAT}: Expiration {:?}: {e}", c.expiration),
                })?;
        Ok((
            Keys {
                access_key_id: SecretString::from(c.access_key_id),
                secret_access_key: SecretString::from(c.secret_access_key),
                session_token: Some(SecretString::from(c.session_token)),
            },
            expires,
        ))
    }
}

impl Credentials {
    /// The keys to sign the next request with.
    pub async fn keys(&self) -> Result<Keys, ProviderError> {
        match self {
            Credentials::Static(keys) => Ok(keys.clone()),
            Credentials::WebIdentity(w) => w.keys().await,
        }
    }
}

/// Exposes a key for signing; kept in one place so a grep finds every use.
pub fn expose(s: &SecretString) -> &str {
    s.expose_secret()
}

#[derive(Deserialize)]
struct AssumeResponse {
    #[serde(rename = "AssumeRoleWithWebIdentityResult")]
    result: AssumeResult,
}

#[derive(Deserialize)]
struct AssumeResult {
    #[serde(rename = "Credentials")]
    credentials: StsCredentials,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sts_answer_is_read() {
        let text = "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleWithWebIdentityResult><SubjectFromWebIdentityToken>system:serviceaccount:ns:sa</SubjectFromWebIdentityToken><Credentials><SessionToken>tok</SessionToken><SecretAccessKey>sec</SecretAccessKey><Expiration>2030-01-01T00:00:00Z</Expiration><AccessKeyId>ASIAEXAMPLE</AccessKeyId></Credentials></AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>";
        let answer: AssumeResponse = api::parse("sts", text).unwrap();
        assert_eq!(answer.result.credentials.access_key_id, "ASIAEXAMPLE");
        assert_eq!(answer.result.credentials.expiration, "2030-01-01T00:00:00Z");
    }
}
