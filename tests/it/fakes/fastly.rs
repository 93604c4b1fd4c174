//! A fake Fastly purge API: `Fastly-Key` checked, URL purges (`POST /purge/{host}/{path}`),
//! surrogate-key batches of at most 256, `purge_all` under an hourly budget answered 429 with
//! `Fastly-RateLimit-Remaining`/`-Reset`, errors as `{msg, detail}`, and a log of every call.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

pub const SERVICE: &str = "SU1Z0isxPaozGVKXdv0eY";
pub const TOKEN: &str = "fastly-fake-token-0001";

/// One call as the fake saw it.
#[derive(Clone, Debug)]
pub struct Call {
    /// The path and query as sent.
    pub path: String,
    pub body: Value,
    pub soft: bool,
    pub status: u16,
}

struct Fake {
    /// purge_all calls allowed per hour (Fastly's 1,000 by default).
    purge_all_budget: usize,
    purge_alls: VecDeque<SystemTime>,
    faults: VecDeque<(u16, String)>,
    calls: Vec<Call>,
    next: u64,
}

#[derive(Clone)]
pub struct FakeFastly {
    pub addr: SocketAddr,
    state: Arc<Mutex<Fake>>,
}

impl FakeFastly {
    pub async fn start() -> FakeFastly {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(Fake {
            purge_all_budget: 1_000,
            purge_alls: VecDeque::new(),
            faults: VecDeque::new(),
            calls: Vec::new(),
            next: 0,
        }));
        let app = axum::Router::new()
            .fallback(axum::routing::post(handle))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeFastly { addr, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_purge_all_budget(&self, n: usize) {
        self.state.lock().unwrap().purge_all_budget = n;
    }

    /// The next call is answered `status` with `msg`.
    pub fn fault(&self, status: u16, msg: &str) {
        self.state
            .lock()
            .unwrap()
            .faults
            .push_back((status, msg.into()));
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }
}

fn error(msg: &str, detail: &str) -> Value {
    json!({"msg": msg, "detail": detail})
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
    let id = format!("{}-{:06}", SERVICE, fake.next);
    let now = SystemTime::now();
    let path = uri.path();
    let soft = headers.get("fastly-soft-purge").is_some();
    let key = headers.get("fastly-key").and_then(|v| v.to_str().ok());
    let mut extra: Vec<(&str, String)> = Vec::new();
    let (status, answer) = if key != Some(TOKEN) {
        (
            401,
            error("Provided credentials are missing or invalid", ""),
        )
    } else if let Some((status, msg)) = fake.faults.pop_front() {
        (status, error(&msg, "scripted"))
    } else if path.starts_with("/purge/") {
        (200, json!({"status": "ok", "id": id}))
    } else if path == format!("/service/{SERVICE}/purge") {
        match parsed.get("surrogate_keys").and_then(Value::as_array) {
            None => (400, error("Bad request", "surrogate_keys is required")),
            Some(keys) if keys.len() > 256 => (
                400,
                error(
                    "Too many surrogate keys",
                    "a maximum of 256 keys per request",
                ),
            ),
            Some(keys) => {
                let ids: Map<String, Value> = keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| {
                        (
                            k.as_str().unwrap_or("").to_owned(),
                            json!(format!("{id}-{i}")),
                        )
                    })
                    .collect();
                (200, Value::Object(ids))
            }
        }
    } else if path == format!("/service/{SERVICE}/purge_all") {
        let hour = Duration::from_secs(3_600);
        while fake
            .purge_alls
            .front()
            .is_some_and(|t| now.duration_since(*t).unwrap_or_default() >= hour)
        {
            fake.purge_alls.pop_front();
        }
        let reset = fake
            .purge_alls
            .front()
            .map_or(now + hour, |t| *t + hour)
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let answer = if fake.purge_alls.len() >= fake.purge_all_budget {
            (429, error("Too many requests", "rate limit exceeded"))
        } else {
            fake.purge_alls.push_back(now);
            (200, json!({"status": "ok"}))
        };
        let left = fake.purge_all_budget.saturating_sub(fake.purge_alls.len());
        extra.push(("fastly-ratelimit-remaining", left.to_string()));
        extra.push(("fastly-ratelimit-reset", reset.to_string()));
        answer
    } else if path.starts_with("/service/") {
        (404, error("Record not found", "Cannot find service"))
    } else {
        (404, error("Not found", ""))
    };
    fake.calls.push(Call {
        path: uri
            .path_and_query()
            .map_or(path.to_owned(), |p| p.to_string()),
        body: parsed,
        soft,
        status,
    });
    let mut response = (
        axum::http::StatusCode::from_u16(status).unwrap(),
        axum::Json(answer),
    )
        .into_response();
    for (name, value) in extra {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}
