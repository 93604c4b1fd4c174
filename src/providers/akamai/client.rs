//! The HTTP side of Fast Purge: one EdgeGrid-signed POST per attempt (signing the scheme and
//! `Host` actually sent and the whole body), the `X-Ratelimit-*` headers, both problem shapes,
//! and one re-signing after "Invalid timestamp" with the clock corrected from the answer.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::Utc;
use reqwest::header::HeaderMap;
use secrecy::ExposeSecret;
use serde_json::Value;

use super::edgerc::EdgeGridCredentials;
use super::sign::{EdgeGridInput, authorization, timestamp};
use crate::providers::ProviderError;
use crate::providers::http::{read_error, send_error};

/// What an `X-Ratelimit-*` header set says (missing headers stay `None`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RateLimits {
    pub limit: Option<f64>,
    pub limit_per_second: Option<f64>,
    pub remaining: Option<f64>,
    pub limit_objects: Option<f64>,
    pub limit_per_second_objects: Option<f64>,
    pub remaining_objects: Option<f64>,
    pub seconds_to_refresh: Option<f64>,
    pub seconds_to_refresh_objects: Option<f64>,
}

impl RateLimits {
    pub fn from_headers(headers: &HeaderMap) -> RateLimits {
        let num = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        RateLimits {
            limit: num("x-ratelimit-limit"),
            limit_per_second: num("x-ratelimit-limit-per-second"),
            remaining: num("x-ratelimit-remaining"),
            limit_objects: num("x-ratelimit-limit-objects"),
            limit_per_second_objects: num("x-ratelimit-limit-per-second-objects"),
            remaining_objects: num("x-ratelimit-remaining-objects"),
            seconds_to_refresh: num("x-ratelimit-seconds-to-refresh-limit"),
            seconds_to_refresh_objects: num("x-ratelimit-seconds-to-refresh-limit-objects"),
        }
    }

    /// How long until a request for `objects` objects has the tokens it needs: the shortfall
    /// over the refill rate of each bucket, else the refresh time it gives; a second when the
    /// headers say nothing.
    pub fn wait_for(&self, objects: usize) -> Duration {
        let refill = |need: f64, remaining: Option<f64>, per_second: Option<f64>| match (
            remaining, per_second,
        ) {
            (Some(r), Some(p)) if p > 0.0 => Some(((need - r).max(0.0) / p).max(0.0)),
            _ => None,
        };
        let requests =
            refill(1.0, self.remaining, self.limit_per_second).or(self.seconds_to_refresh);
        let objects = refill(
            objects as f64,
            self.remaining_objects,
            self.limit_per_second_objects,
        )
        .or(self.seconds_to_refresh_objects);
        match requests.into_iter().chain(objects).reduce(f64::max) {
            Some(secs) => Duration::from_secs_f64(secs.clamp(0.05, 300.0)),
            None => Duration::from_secs(1),
        }
    }
}

/// An answer read off the wire.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub limits: RateLimits,
    pub retry_after: Option<Duration>,
}

impl Reply {
    pub fn text(&self, name: &str) -> Option<String> {
        match self.body.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// `title: detail` of either problem shape.
    pub fn problem(&self) -> String {
        let title = self.text("title").unwrap_or_default();
        match self.text("detail") {
            Some(detail) if !detail.is_empty() => format!("{title}: {detail}"),
            _ if title.is_empty() => self.body.to_string().chars().take(200).collect(),
            _ => title,
        }
    }

    fn invalid_timestamp(&self) -> bool {
        self.status == 400
            && self
                .problem()
                .to_ascii_lowercase()
                .contains("invalid timestamp")
    }
}

#[derive(Debug)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: url::Url,
    /// `host[:port]` sent as `Host` and signed.
    pub host: String,
    pub credentials: EdgeGridCredentials,
    pub timeout: Duration,
    /// Akamai's clock minus ours, learned from an "Invalid timestamp" answer's `Date`.
    skew_secs: AtomicI64,
    /// The last `X-Ratelimit-*` figures seen.
    pub last_limits: Mutex<RateLimits>,
}

impl Client {
    pub fn new(
        http: reqwest::Client,
        base: url::Url,
        host: String,
        credentials: EdgeGridCredentials,
        timeout: Duration,
    ) -> Client {
        Client {
            http,
            base,
            host,
            credentials,
            timeout,
            skew_secs: AtomicI64::new(0),
            last_limits: Mutex::new(RateLimits::default()),
        }
    }

    pub fn skew(&self) -> i64 {
        self.skew_secs.load(Ordering::Relaxed)
    }

    /// POSTs `body` to `path`; "Invalid timestamp" is answered once at once, signed with the
    /// clock of the answer's `Date`.
    pub async fn post(&self, path: &str, body: &[u8]) -> Result<Reply, ProviderError> {
        let mut resigned = false;
        loop {
            let (reply, server_time) = self.post_once(path, body).await?;
            if reply.invalid_timestamp() && !resigned {
                resigned = true;
                if let Some(server) = server_time {
                    let skew = server - Utc::now().timestamp();
                    self.skew_secs.store(skew, Ordering::Relaxed);
                    tracing::warn!(skew_secs = skew, problem = %reply.problem(), "Akamai refused our timestamp; signing again with its clock");
                }
                continue;
            }
            return Ok(reply);
        }
    }

    async fn post_once(
        &self,
        path: &str,
        body: &[u8],
    ) -> Result<(Reply, Option<i64>), ProviderError> {
        let what = format!("POST {path}");
        let mut url = self.base.clone();
        url.set_path(&format!("{}{path}", self.base.path().trim_end_matches('/')));
        let now = Utc::now() + chrono::Duration::seconds(self.skew());
        let ts = timestamp(now);
        let nonce = uuid::Uuid::new_v4().to_string();
        let c = &self.credentials;
        let path_and_query = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let auth = authorization(&EdgeGridInput {
            client_token: c.client_token.expose_secret(),
            client_secret: c.client_secret.expose_secret(),
            access_token: c.access_token.expose_secret(),
            timestamp: &ts,
            nonce: &nonce,
            method: "POST",
            scheme: url.scheme(),
            host: &self.host,
            path_and_query: &path_and_query,
            body,
        });
        let response = self
            .http
            .post(url)
            .timeout(self.timeout)
            .header("Host", &self.host)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .header("Authorization", auth)
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| send_error(&what, e))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let limits = RateLimits::from_headers(&headers);
        if limits != RateLimits::default() {
            *self.last_limits.lock().expect("limits lock") = limits;
        }
        let server_time = headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok());
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.map_err(|e| read_error(&what, e))?;
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((
            Reply {
                status,
                body,
                limits,
                retry_after,
            },
            server_time,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_headers_are_read_and_give_the_wait() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("X-Ratelimit-Limit", "100"),
            ("X-Ratelimit-Limit-Per-Second", "50"),
            ("X-Ratelimit-Remaining", "10"),
            ("X-Ratelimit-Limit-Objects", "10000"),
            ("X-Ratelimit-Limit-Per-Second-Objects", "200"),
            ("X-Ratelimit-Remaining-Objects", "0"),
            ("X-Ratelimit-Seconds-To-Refresh-Limit", "0"),
            ("X-Ratelimit-Seconds-To-Refresh-Limit-Objects", "50"),
        ] {
            h.insert(k, v.parse().unwrap());
        }
        let limits = RateLimits::from_headers(&h);
        assert_eq!(limits.remaining_objects, Some(0.0));
        assert_eq!(limits.limit_per_second_objects, Some(200.0));
        // 400 objects at 200 a second: two seconds.
        assert_eq!(limits.wait_for(400), Duration::from_secs(2));
        assert_eq!(RateLimits::default().wait_for(1), Duration::from_secs(1));
    }
}
