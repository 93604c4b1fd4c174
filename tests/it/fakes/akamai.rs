//! A fake Akamai Fast Purge (CCU v3): verifies EG1-HMAC-SHA256 itself (scheme, the `Host`
//! received, path, whole body), refuses timestamps off its clock by more than 30 s, enforces
//! the 50,000-byte body cap and token buckets (requests, and objects per type; a 429 costs
//! nothing), sends `X-Ratelimit-*` headers, and records every call.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const CLIENT_TOKEN: &str = "akab-client-token-fake-0001";
pub const ACCESS_TOKEN: &str = "akab-access-token-fake-0001";
pub const CLIENT_SECRET: &str = "fakeClientSecret0001fakeClientSecret0001xx=";

#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    pub capacity: f64,
    pub per_second: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(capacity: f64, per_second: f64) -> Bucket {
        Bucket {
            capacity,
            per_second,
            tokens: capacity,
            at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_second)
            .min(self.capacity);
        self.at = now;
    }
}

#[derive(Clone, Debug)]
pub struct Call {
    pub path: String,
    pub objects: Value,
    pub body_len: usize,
    pub status: u16,
}

struct Fake {
    requests: Bucket,
    objects: HashMap<String, Bucket>,
    estimated_seconds: u64,
    max_body: usize,
    /// The fake's clock runs this many seconds ahead of the host's.
    clock_offset: i64,
    nonces: HashSet<String>,
    next_status: Vec<u16>,
    calls: Vec<Call>,
}

#[derive(Clone)]
pub struct FakeAkamai {
    pub addr: SocketAddr,
    state: Arc<Mutex<Fake>>,
}

impl FakeAkamai {
    /// Documented buckets: requests 100 refilling 50/s; URL 10,000 (200/s), CP code 300
    /// (0.5/s), tag 5,000 (500/min).
    pub async fn start(estimated_seconds: u64) -> FakeAkamai {
        let state = Arc::new(Mutex::new(Fake {
            requests: Bucket::new(100.0, 50.0),
            objects: HashMap::from([
                ("url".to_owned(), Bucket::new(10_000.0, 200.0)),
                ("cpcode".to_owned(), Bucket::new(300.0, 0.5)),
                ("tag".to_owned(), Bucket::new(5_000.0, 500.0 / 60.0)),
            ]),
            estimated_seconds,
            max_body: 50_000,
            clock_offset: 0,
            nonces: HashSet::new(),
            next_status: Vec::new(),
            calls: Vec::new(),
        }));
        let app = axum::Router::new()
            .route(
                "/ccu/v3/{action}/{kind}/{network}",
                axum::routing::post(purge),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeAkamai { addr, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_objects_bucket(&self, kind: &str, bucket: Bucket) {
        self.state
            .lock()
            .unwrap()
            .objects
            .insert(kind.into(), bucket);
    }

    pub fn set_max_body(&self, bytes: usize) {
        self.state.lock().unwrap().max_body = bytes;
    }

    pub fn set_clock_offset(&self, secs: i64) {
        self.state.lock().unwrap().clock_offset = secs;
    }

    /// Answers the next call with this status (an api-problem+json body).
    pub fn fail_next(&self, status: u16) {
        self.state.lock().unwrap().next_status.push(status);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn accepted(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.status == 201)
            .collect()
    }
}

fn b64_hmac(key: &[u8], data: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks the EdgeGrid header with the fake's own code; `Err` is the problem to answer.
fn verify(
    fake: &mut Fake,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), (u16, &'static str)> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or((401, "missing Authorization"))?;
    let rest = auth
        .strip_prefix("EG1-HMAC-SHA256 ")
        .ok_or((401, "not EG1-HMAC-SHA256"))?;
    let mut fields = HashMap::new();
    for part in rest.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or((401, "malformed Authorization"))?;
        fields.insert(k, v);
    }
    let field = |k: &str| {
        fields
            .get(k)
            .copied()
            .ok_or((401, "malformed Authorization"))
    };
    if field("client_token")? != CLIENT_TOKEN || field("access_token")? != ACCESS_TOKEN {
        return Err((401, "The client token or access token is invalid"));
    }
    let ts = field("timestamp")?;
    let at = chrono::NaiveDateTime::parse_from_str(ts, "%Y%m%dT%H:%M:%S+0000")
        .map_err(|_| (400, "Invalid timestamp"))?;
    let now = chrono::Utc::now().timestamp() + fake.clock_offset;
    if (at.and_utc().timestamp() - now).abs() > 30 {
        return Err((400, "Invalid timestamp"));
    }
    let nonce = field("nonce")?;
    if !fake.nonces.insert(nonce.to_owned()) {
        return Err((401, "Nonce reused"));
    }
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let hash = if body.is_empty() {
        String::new()
    } else {
        STANDARD.encode(Sha256::digest(body))
    };
    let unsigned = auth.split("signature=").next().unwrap_or("");
    let data = format!("POST\thttp\t{host}\t{path}\t\t{hash}\t{unsigned}");
    let key = b64_hmac(CLIENT_SECRET.as_bytes(), ts.as_bytes());
    if b64_hmac(key.as_bytes(), data.as_bytes()) != field("signature")? {
        return Err((401, "The signature does not match"));
    }
    Ok(())
}

fn problem(status: u16, title: &str, detail: &str, date: SystemTime) -> Response {
    let (ct, body) = if status == 401 || detail == "Invalid timestamp" {
        (
            "application/problem+json",
            json!({"type": "https://problems.luna.akamaiapis.net/-/pep-authn/deny", "title": title, "detail": detail, "status": status}),
        )
    } else {
        (
            "application/api-problem+json",
            json!({"supportId": "fake-support-1", "httpStatus": status, "title": title, "detail": detail, "describedBy": "https://api.ccu.akamai.com/ccu/v2/errors/x"}),
        )
    };
    (
        StatusCode::from_u16(status).unwrap(),
        [
            ("content-type", ct.to_owned()),
            ("date", httpdate::fmt_http_date(date)),
        ],
        body.to_string(),
    )
        .into_response()
}

async fn purge(
    State(state): State<Arc<Mutex<Fake>>>,
    Path((action, kind, network)): Path<(String, String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut fake = state.lock().unwrap();
    let date = SystemTime::now() + std::time::Duration::from_secs(fake.clock_offset.max(0) as u64);
    let objects: Value = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("objects").cloned())
        .unwrap_or(Value::Null);
    let mut call = Call {
        path: uri.path().into(),
        objects: objects.clone(),
        body_len: body.len(),
        status: 201,
    };
    let response = answer(
        &mut fake, &action, &kind, &network, &uri, &headers, &body, &objects, date,
    );
    call.status = response.status().as_u16();
    fake.calls.push(call);
    response
}

#[allow(clippy::too_many_arguments)]
fn answer(
    fake: &mut Fake,
    action: &str,
    kind: &str,
    network: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    objects: &Value,
    date: SystemTime,
) -> Response {
    if let Err((status, detail)) = verify(fake, uri, headers, body) {
        return problem(
            status,
            if status == 400 {
                "Bad request"
            } else {
                "Not authorized"
            },
            detail,
            date,
        );
    }
    if !fake.next_status.is_empty() {
        let status = fake.next_status.remove(0);
        return problem(status, "Scripted", "scripted fault", date);
    }
    if !["invalidate", "delete"].contains(&action) || !["staging", "production"].contains(&network)
    {
        return problem(404, "Not found", "no such resource", date);
    }
    if body.len() > fake.max_body {
        return problem(
            413,
            "Request Entity Too Large",
            "The request body exceeds 50,000 bytes",
            date,
        );
    }
    let Some(list) = objects.as_array().filter(|l| !l.is_empty()) else {
        return problem(400, "Bad request", "objects must be a non-empty list", date);
    };
    let typed = match kind {
        "url" | "tag" => list.iter().all(Value::is_string),
        "cpcode" => list.iter().all(Value::is_u64),
        _ => false,
    };
    if !typed {
        return problem(400, "Bad request", "objects of the wrong type", date);
    }
    let n = list.len() as f64;
    fake.requests.refill();
    let Some(mut bucket) = fake.objects.get(kind).copied() else {
        return problem(404, "Not found", "no such type", date);
    };
    bucket.refill();
    let allowed = fake.requests.tokens >= 1.0 && bucket.tokens >= n;
    if allowed {
        fake.requests.tokens -= 1.0;
        bucket.tokens -= n;
    }
    fake.objects.insert(kind.into(), bucket);
    let r = fake.requests;
    let limit_headers = [
        ("x-ratelimit-limit", r.capacity.to_string()),
        ("x-ratelimit-limit-per-second", r.per_second.to_string()),
        ("x-ratelimit-remaining", r.tokens.floor().to_string()),
        ("x-ratelimit-limit-objects", bucket.capacity.to_string()),
        (
            "x-ratelimit-limit-per-second-objects",
            bucket.per_second.to_string(),
        ),
        (
            "x-ratelimit-remaining-objects",
            bucket.tokens.floor().to_string(),
        ),
        (
            "x-ratelimit-seconds-to-refresh-limit",
            ((r.capacity - r.tokens) / r.per_second).ceil().to_string(),
        ),
        (
            "x-ratelimit-seconds-to-refresh-limit-objects",
            ((bucket.capacity - bucket.tokens) / bucket.per_second)
                .ceil()
                .to_string(),
        ),
    ];
    let mut response = if allowed {
        let id = format!("purge-{}", fake.calls.len() + 1);
        (StatusCode::CREATED, json!({"httpStatus": 201, "estimatedSeconds": fake.estimated_seconds, "purgeId": id, "supportId": format!("support-{id}"), "detail": "Request accepted"}).to_string()).into_response()
    } else {
        problem(429, "Too many requests", "rate limit exceeded", date)
    };
    for (k, v) in limit_headers {
        response.headers_mut().insert(k, v.parse().unwrap());
    }
    response
}
