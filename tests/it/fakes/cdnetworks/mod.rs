//! Fakes of the CDNetworks APIs (CDN Pro and Content Management), sharing what both products
//! do the same way: both authentication schemes verified with the fakes' own code, a call log
//! with timestamps, scripted faults, and an `x-cnc-request-id` on every answer.

pub mod cdnpro;
pub mod content;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const ACCESS_KEY: &str = "FAKEACCESSKEY0001";
pub const SECRET_KEY: &str = "fakeCdnetworksSecretKey0001";
pub const USERNAME: &str = "fakeuser";
pub const API_KEY: &str = "fakeCdnetworksApiKey0001";

/// One request as a fake saw it.
#[derive(Clone, Debug)]
pub struct Call {
    pub at: SystemTime,
    pub method: String,
    pub path: String,
    pub body: Value,
    /// `aksk` or `api_key`: the scheme the request was signed with.
    pub auth: &'static str,
    /// The error code answered, if any.
    pub error: Option<String>,
}

/// A fault for the next call of a path.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this HTTP status and this error code in the body.
    Code(u16, &'static str),
}

/// A verdict of the fakes' own signature check: which scheme, or an error code.
pub fn verify(
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
    replays: &mut HashMap<String, Instant>,
) -> Result<&'static str, String> {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let auth = h("authorization");
    if h("x-cnc-auth-method") == "AKSK" {
        let rest = auth
            .strip_prefix("CNC-HMAC-SHA256 ")
            .ok_or("InvalidAuthorization")?;
        let parts: HashMap<&str, &str> =
            rest.split(", ").filter_map(|p| p.split_once('=')).collect();
        if parts.get("Credential") != Some(&ACCESS_KEY) || h("x-cnc-accesskey") != ACCESS_KEY {
            return Err("InvalidAccessKey".into());
        }
        if parts.get("SignedHeaders") != Some(&"content-type;host") {
            return Err("InvalidSignedHeaders".into());
        }
        let ts: i64 = h("x-cnc-timestamp")
            .parse()
            .map_err(|_| "InvalidTimestamp".to_string())?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        if (now - ts).abs() > 300 {
            return Err("TimestampExpired".into());
        }
        // The official SDK's canonical form: the query only for non-POST, URL-decoded; every
        // signed header value lowercased; the body only for POST and PUT.
        let signed_query = if method == "POST" {
            String::new()
        } else {
            percent_encoding::percent_decode_str(query)
                .decode_utf8_lossy()
                .into_owned()
        };
        let signed_body: &[u8] = if matches!(method, "POST" | "PUT") {
            body
        } else {
            b""
        };
        let canonical = format!(
            "{method}\n{path}\n{signed_query}\ncontent-type:{}\nhost:{}\n\ncontent-type;host\n{}",
            h("content-type").to_lowercase(),
            h("host").to_lowercase(),
            hex::encode(Sha256::digest(signed_body))
        );
        let to_sign = format!(
            "CNC-HMAC-SHA256\n{ts}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET_KEY.as_bytes()).unwrap();
        mac.update(to_sign.as_bytes());
        let expected = hex::encode(mac.finalize().into_bytes());
        if parts.get("Signature") != Some(&expected.as_str()) {
            return Err("SignatureDoesNotMatch".into());
        }
        // A signed request may not be replayed within 5 minutes.
        replays.retain(|_, at| at.elapsed() < Duration::from_secs(300));
        if replays.insert(auth.clone(), Instant::now()).is_some() {
            return Err("TimestampReused".into());
        }
        return Ok("aksk");
    }
    let date = h("date");
    let sent = httpdate::parse_http_date(&date).map_err(|_| "InvalidDate".to_string())?;
    let skew = match SystemTime::now().duration_since(sent) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > Duration::from_secs(300) {
        return Err("DateExpired".into());
    }
    let basic = auth.strip_prefix("Basic ").ok_or("InvalidAuthorization")?;
    let decoded = STANDARD
        .decode(basic)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or("InvalidAuthorization")?;
    let (user, password) = decoded.split_once(':').ok_or("InvalidAuthorization")?;
    if user != USERNAME {
        return Err("UserNameInvalid".into());
    }
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(API_KEY.as_bytes()).unwrap();
    mac.update(date.as_bytes());
    if password != STANDARD.encode(mac.finalize().into_bytes()) {
        return Err("SignatureDoesNotMatch".into());
    }
    Ok("api_key")
}

/// Keeps the calls of the last `window` and says whether one more fits under `max`.
pub fn admit(recent: &mut VecDeque<Instant>, max: usize, window: Duration) -> bool {
    let now = Instant::now();
    while recent
        .front()
        .is_some_and(|t| now.duration_since(*t) >= window)
    {
        recent.pop_front();
    }
    if recent.len() >= max {
        return false;
    }
    recent.push_back(now);
    true
}

/// A JSON answer carrying `x-cnc-request-id`.
pub fn reply(status: u16, request_id: u64, body: Value) -> Response {
    let mut r = (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
    r.headers_mut().insert(
        "x-cnc-request-id",
        format!("cnc-req-{request_id}").parse().unwrap(),
    );
    r
}

/// The strings of a JSON array field, or `None` when it is absent.
pub fn strings(v: &Value, name: &str) -> Option<Vec<String>> {
    v.get(name)?.as_array().map(|a| {
        a.iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    })
}
