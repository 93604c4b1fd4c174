//! The HTTP side of CloudFront: one SigV4-signed request per attempt, signing exactly the
//! headers sent, and reading `<ErrorResponse>` answers into classified errors.

use std::time::Duration;

use chrono::Utc;
use reqwest::Method;

use super::api;
use super::credentials::{Credentials, expose};
use super::sign::{SigV4Input, amz_date, authorization};
use crate::providers::ProviderError;
use crate::providers::http::{read_error, send_error};

const REGION: &str = "us-east-1";
const SERVICE: &str = "cloudfront";
const CONTENT_TYPE: &str = "text/xml";

/// A successful answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub text: String,
    pub request_id: Option<String>,
}

/// A refusal, with its `<Code>` still unclassified (a reused caller reference is not an
/// error of the batch).
#[derive(Debug)]
pub enum Failure {
    Api {
        status: u16,
        code: String,
        message: String,
    },
    Other(ProviderError),
}

#[derive(Debug)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: url::Url,
    /// `host[:port]` of the endpoint, signed and sent as `Host`.
    pub host: String,
    pub credentials: Credentials,
    pub timeout: Duration,
}

impl Client {
    /// Sends one signed request to `path` (below the endpoint's own path).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
    ) -> Result<Reply, Failure> {
        let what = format!("{method} {path}");
        let keys = self.credentials.keys().await.map_err(Failure::Other)?;
        let mut url = self.base.clone();
        let full_path = format!("{}{path}", self.base.path().trim_end_matches('/'));
        url.set_path(&full_path);
        let date = amz_date(Utc::now());
        let mut headers: Vec<(&str, &str)> = vec![("host", &self.host), ("x-amz-date", &date)];
        if body.is_some() {
            headers.push(("content-type", CONTENT_TYPE));
        }
        if let Some(token) = &keys.session_token {
            headers.push(("x-amz-security-token", expose(token)));
        }
        let bytes = body.unwrap_or("").as_bytes();
        let auth = authorization(&SigV4Input {
            access_key_id: expose(&keys.access_key_id),
            secret_access_key: expose(&keys.secret_access_key),
            region: REGION,
            service: SERVICE,
            method: method.as_str(),
            path: url.path(),
            query: &[],
            headers: &headers,
            amz_date: &date,
            body: bytes,
        });
        let mut req = self
            .http
            .request(method, url)
            .timeout(self.timeout)
            .header("Authorization", auth);
        for (name, value) in &headers {
            req = req.header(*name, *value);
        }
        if body.is_some() {
            req = req.body(bytes.to_vec());
        }
        let response = req
            .send()
            .await
            .map_err(|e| Failure::Other(send_error(&what, e)))?;
        let status = response.status().as_u16();
        let request_id = response
            .headers()
            .get("x-amz-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response
            .text()
            .await
            .map_err(|e| Failure::Other(read_error(&what, e)))?;
        if (200..300).contains(&status) {
            return Ok(Reply {
                status,
                text,
                request_id,
            });
        }
        let parsed: Option<api::ErrorResponse> = api::parse(&what, &text).ok();
        let (code, message, rid) = match parsed {
            Some(e) => (e.error.code, e.error.message, e.request_id.or(request_id)),
            None => (String::new(), text.chars().take(200).collect(), request_id),
        };
        Err(Failure::Api {
            status,
            code,
            message: format!(
                "{what}: {message} (request {})",
                rid.as_deref().unwrap_or("?")
            ),
        })
    }
}
