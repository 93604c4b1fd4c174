//! A fake Cloudflare purge API (`zones/{zone}/purge_cache` and `invalidate_cache`): API token
//! or legacy email + key, one field per body, per-call caps answered as Cloudflare does
//! (`{success:false, errors:[{code, message}]}`), a request budget answered 429 with
//! `Retry-After` and `Ratelimit` headers, scripted faults, and a log of every call.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub const ZONE: &str = "023e105f4ecef8ad9ca31a8372d0c353";
pub const TOKEN: &str = "cf-fake-token-0001";
pub const EMAIL: &str = "ops@example.com";
pub const GLOBAL_KEY: &str = "cf-fake-global-key-0001";

/// One call as the fake saw it.
#[derive(Clone, Debug)]
pub struct Call {
    pub at: SystemTime,
    /// `purge_cache` or `invalidate_cache`.
    pub action: String,
    pub body: Value,
    /// `token`, `legacy` or `none`.
    pub auth: &'static str,
    /// The HTTP status answered.
    pub status: u16,
    pub ray: String,
}

struct Fake {
    url_cap: usize,
    item_cap: usize,
    /// Requests allowed per window, and the window.
    rate: (usize, Duration),
    recent: VecDeque<SystemTime>,
    /// Scripted answers (status, code, message, Retry-After seconds), first out first.
    faults: VecDeque<(u16, u32, String, Option<u64>)>,
    calls: Vec<Call>,
    next: u64,
}

#[derive(Clone)]
pub struct FakeCloudflare {
    pub addr: SocketAddr,
    state: Arc<Mutex<Fake>>,
}

impl FakeCloudflare {
    /// A fake allowing `rate.0` calls per `rate.1`, with the documented default caps.
    pub async fn start(rate: (usize, Duration)) -> FakeCloudflare {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(Fake {
            url_cap: 30,
            item_cap: 100,
            rate,
            recent: VecDeque::new(),
            faults: VecDeque::new(),
            calls: Vec::new(),
            next: 0,
        }));
        let app = axum::Router::new()
            .fallback(axum::routing::post(handle))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeCloudflare { addr, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}/client/v4", self.addr)
    }

    /// The next call is answered `status` with `code` and `message` (and `Retry-After`).
    pub fn fault(&self, status: u16, code: u32, message: &str, retry_after: Option<u64>) {
        self.state
            .lock()
            .unwrap()
            .faults
            .push_back((status, code, message.into(), retry_after));
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Bodies of the accepted calls of `action`.
    pub fn accepted(&self, action: &str) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|c| c.status == 200 && c.action == action)
            .map(|c| c.body)
            .collect()
    }
}

fn error(code: u32, message: &str) -> Value {
    json!({"success": false, "errors": [{"code": code, "message": message}], "messages": [], "result": null})
}

/// Which credentials a call carries: `Err` is Cloudflare's answer to bad ones.
fn authenticate(headers: &HeaderMap) -> Result<&'static str, (u16, Value)> {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    match (get("authorization"), get("x-auth-email"), get("x-auth-key")) {
        (Some(auth), _, _) => match auth.strip_prefix("Bearer ") {
            Some(TOKEN) => Ok("token"),
            _ => Err((401, error(10000, "Authentication error"))),
        },
        (None, Some(EMAIL), Some(GLOBAL_KEY)) => Ok("legacy"),
        (None, Some(_), Some(_)) => Err((403, error(9103, "Unknown X-Auth-Key or X-Auth-Email"))),
        (None, None, _) => Err((400, error(9106, "Missing X-Auth-Email header"))),
        (None, Some(_), None) => Err((400, error(9107, "Missing X-Auth-Key header"))),
    }
}

/// Checks the body: exactly one field, within its cap, prefixes without a scheme.
fn check_body(fake: &Fake, body: &Value) -> Result<(), (u16, Value)> {
    let fields = ["files", "prefixes", "hosts", "tags", "purge_everything"];
    let present: Vec<&str> = fields
        .into_iter()
        .filter(|f| body.get(*f).is_some())
        .collect();
    let [field] = present.as_slice() else {
        return Err((
            400,
            error(
                1012,
                "Request must contain one of \"purge_everything\", \"files\", \"tags\", \"hosts\" or \"prefixes\"",
            ),
        ));
    };
    if *field == "purge_everything" {
        return match body[*field] {
            Value::Bool(true) => Ok(()),
            _ => Err((400, error(1012, "purge_everything must be true"))),
        };
    }
    let items = body[*field].as_array().cloned().unwrap_or_default();
    let cap = if *field == "files" {
        fake.url_cap
    } else {
        fake.item_cap
    };
    if items.len() > cap {
        return Err((
            400,
            error(
                1122,
                &format!("Too many {field} in one request: at most {cap} are allowed"),
            ),
        ));
    }
    for item in &items {
        let text = match item {
            Value::String(s) => s.clone(),
            Value::Object(o) if *field == "files" => o
                .get("url")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            _ => return Err((400, error(1012, "Invalid item"))),
        };
        if *field == "prefixes" && (text.contains("://") || text.contains('?')) {
            return Err((
                400,
                error(1030, "Prefixes must not contain a scheme or query"),
            ));
        }
        if *field == "tags" && text.chars().count() > 1024 {
            return Err((400, error(1030, "Tags are at most 1024 characters")));
        }
    }
    Ok(())
}

async fn handle(
    State(state): State<Arc<Mutex<Fake>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut fake = state.lock().unwrap();
    fake.next += 1;
    let ray = format!("8f{:014x}-SJC", fake.next);
    let now = SystemTime::now();
    let path = uri.path().to_owned();
    let action = path.rsplit('/').next().unwrap_or("").to_owned();
    let zone_ok = path == format!("/client/v4/zones/{ZONE}/{action}")
        && ["purge_cache", "invalidate_cache"].contains(&action.as_str());
    let (count, per) = fake.rate;
    while fake
        .recent
        .front()
        .is_some_and(|t| now.duration_since(*t).unwrap_or_default() >= per)
    {
        fake.recent.pop_front();
    }
    let mut extra: Vec<(&str, String)> = Vec::new();
    let auth = authenticate(&headers);
    let (status, answer) = if !zone_ok {
        (404, error(7003, "Could not route to the requested path"))
    } else if let Err(refusal) = &auth {
        refusal.clone()
    } else if fake.recent.len() >= count {
        let oldest = *fake.recent.front().unwrap();
        let wait = per.saturating_sub(now.duration_since(oldest).unwrap_or_default());
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        extra.push(("retry-after", secs.to_string()));
        extra.push(("ratelimit", format!("\"default\";r=0;t={secs}")));
        (429, error(10429, "Rate limited: too many purge requests"))
    } else if let Some((status, code, message, retry_after)) = fake.faults.pop_front() {
        if let Some(secs) = retry_after {
            extra.push(("retry-after", secs.to_string()));
        }
        (status, error(code, &message))
    } else {
        fake.recent.push_back(now);
        match check_body(&fake, &parsed) {
            Err(refusal) => refusal,
            Ok(()) => {
                let left = count.saturating_sub(fake.recent.len());
                extra.push((
                    "ratelimit",
                    format!("\"default\";r={left};t={}", per.as_secs()),
                ));
                (
                    200,
                    json!({"success": true, "errors": [], "messages": [], "result": {"id": ZONE}}),
                )
            }
        }
    };
    extra.push((
        "ratelimit-policy",
        format!("\"default\";q={count};w={}", per.as_secs().max(1)),
    ));
    fake.calls.push(Call {
        at: now,
        action,
        body: parsed,
        auth: auth.clone().unwrap_or("none"),
        status,
        ray: ray.clone(),
    });
    let mut response = (
        axum::http::StatusCode::from_u16(status).unwrap(),
        axum::Json(answer),
    )
        .into_response();
    let h = response.headers_mut();
    h.insert("cf-ray", ray.parse().unwrap());
    for (name, value) in extra {
        h.insert(name, value.parse().unwrap());
    }
    response
}
