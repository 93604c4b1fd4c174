//! A fake CDN Pro purge API: both auth schemes, 300 requests per 5 minutes, the documented
//! per-call caps and pattern rules, purge tokens per day, and purges that go from `waiting`
//! to `inprogress` to `finished` over time. A target containing `partial` finishes its purge
//! with a `successRate` of 50.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use serde_json::{Value, json};

use super::{Call, Fault, admit, reply, strings, verify};

struct Purge {
    created: Instant,
    success_rate: f64,
}

struct Fake {
    addr: SocketAddr,
    task_delay: Duration,
    file_tokens: u64,
    dir_tokens: u64,
    recent: VecDeque<Instant>,
    replays: HashMap<String, Instant>,
    faults: VecDeque<(String, Fault)>,
    calls: Vec<Call>,
    purges: HashMap<String, Purge>,
    next: u64,
}

#[derive(Clone)]
pub struct FakeCdnPro {
    pub addr: SocketAddr,
    state: Arc<Mutex<Fake>>,
}

pub const PURGES: &str = "/cdn/purges";
pub const TOKENS: &str = "/cdn/purges/purgeTokens";

impl FakeCdnPro {
    /// A fake whose purges finish `task_delay` after they are created.
    pub async fn start(task_delay: Duration) -> FakeCdnPro {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(Fake {
            addr,
            task_delay,
            file_tokens: 10_000,
            dir_tokens: 1_000,
            recent: VecDeque::new(),
            replays: HashMap::new(),
            faults: VecDeque::new(),
            calls: Vec::new(),
            purges: HashMap::new(),
            next: 0,
        }));
        let app = axum::Router::new()
            .route(PURGES, axum::routing::post(create))
            .route(TOKENS, axum::routing::get(tokens))
            .route("/cdn/purges/{id}", axum::routing::get(status))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeCdnPro { addr, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_tokens(&self, file: u64, dir: u64) {
        let mut s = self.state.lock().unwrap();
        s.file_tokens = file;
        s.dir_tokens = dir;
    }

    /// Forgets every purge, so asking about one answers 404.
    pub fn forget_purges(&self) {
        self.state.lock().unwrap().purges.clear();
    }

    pub fn fault(&self, path: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .push_back((path.into(), fault));
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Bodies of the accepted `POST /cdn/purges`.
    pub fn accepted(&self) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == "POST" && c.error.is_none())
            .map(|c| c.body)
            .collect()
    }
}

/// Common handling: auth, the request budget, faults, the call log.
fn serve(
    state: &Mutex<Fake>,
    (method, path, query): (&str, &str, &str),
    headers: &HeaderMap,
    body: &[u8],
    route: &str,
    answer: impl FnOnce(&mut Fake, u64, &Value) -> (u16, Value, Option<String>),
) -> Response {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut fake = state.lock().unwrap();
    fake.next += 1;
    let id = fake.next;
    let verdict = verify(method, path, query, headers, body, &mut fake.replays);
    let (status, answer, error, scheme) = match verdict {
        Err(code) => (
            401,
            json!({"code": code, "message": "authentication failed"}),
            Some(code),
            "none",
        ),
        Ok(scheme) => {
            if !admit(&mut fake.recent, 300, Duration::from_secs(300)) {
                let code = "TooManyRequests".to_string();
                (
                    429,
                    json!({"code": code, "message": "300 requests per 5 minutes"}),
                    Some(code),
                    scheme,
                )
            } else if let Some(i) = fake.faults.iter().position(|(p, _)| p == route) {
                let Fault::Code(status, code) = fake.faults.remove(i).unwrap().1;
                (
                    status,
                    json!({"code": code, "message": "scripted"}),
                    Some(code.to_string()),
                    scheme,
                )
            } else {
                let (s, b, e) = answer(&mut fake, id, &parsed);
                (s, b, e, scheme)
            }
        }
    };
    fake.calls.push(Call {
        at: SystemTime::now(),
        method: method.into(),
        path: path.into(),
        body: parsed,
        auth: scheme,
        error,
    });
    let mut response = reply(status, id, answer);
    if status == 201 {
        let location = format!("http://{}/cdn/purges/purge-{id}", fake.addr);
        response
            .headers_mut()
            .insert("location", location.parse().unwrap());
    }
    response
}

fn bad(code: &str, message: &str) -> (u16, Value, Option<String>) {
    (
        400,
        json!({"code": code, "message": message}),
        Some(code.into()),
    )
}

/// The fake's own reading of the regex rules: scheme, host, length after the host.
fn regex_ok(p: &str) -> bool {
    let Some((scheme, rest)) = p.split_once("://") else {
        return false;
    };
    let Some(slash) = rest.find('/') else {
        return false;
    };
    ["http", "https", "any"].contains(&scheme) && slash > 0 && rest[slash..].chars().count() <= 126
}

async fn create(
    State(state): State<Arc<Mutex<Fake>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(
        &state,
        ("POST", PURGES, ""),
        &headers,
        &body,
        PURGES,
        |fake, id, b| {
            let target = b["target"].as_str().unwrap_or("");
            if target != "staging" && target != "production" {
                return bad("InvalidTarget", "target must be staging or production");
            }
            if let Some(a) = b.get("action")
                && a != "invalidate"
                && a != "delete"
            {
                return bad("InvalidAction", "action");
            }
            let files = strings(b, "fileUrls").unwrap_or_default();
            let dirs = strings(b, "dirUrls").unwrap_or_default();
            let regexes = strings(b, "regexPatterns").unwrap_or_default();
            if files.is_empty() && dirs.is_empty() && regexes.is_empty() {
                return bad("EmptyPurge", "nothing to purge");
            }
            if files.iter().any(|f| f.contains('*') || f.len() > 2048) {
                return bad("InvalidFileUrl", "fileUrls");
            }
            if let Some(h) = b.get("fileHeaders") {
                let ok = h.as_array().is_some_and(|a| {
                    a.iter()
                        .all(|x| x["name"].is_string() && x["value"].is_string())
                });
                if !ok || files.is_empty() {
                    return bad(
                        "InvalidFileHeaders",
                        "fileHeaders need fileUrls and {name, value}",
                    );
                }
            }
            if dirs.len() > 20 {
                return bad("TooManyDirUrls", "at most 20 dirUrls");
            }
            if dirs
                .iter()
                .any(|d| !d.starts_with("http://") && !d.starts_with("https://"))
            {
                return bad("InvalidDirUrl", "dirUrls need http(s)://");
            }
            if regexes.len() > 2 {
                return bad("TooManyRegexPatterns", "at most 2 regexPatterns");
            }
            if !regexes.iter().all(|r| regex_ok(r)) {
                return bad("InvalidRegexPattern", "regexPatterns");
            }
            if files.len() as u64 > fake.file_tokens || dirs.len() as u64 > fake.dir_tokens {
                return bad("PurgeTokenQuotaExceeded", "not enough purge tokens today");
            }
            fake.file_tokens -= files.len() as u64;
            fake.dir_tokens -= dirs.len() as u64;
            let partial = files
                .iter()
                .chain(&dirs)
                .chain(&regexes)
                .any(|t| t.contains("partial"));
            fake.purges.insert(
                format!("purge-{id}"),
                Purge {
                    created: Instant::now(),
                    success_rate: if partial { 50.0 } else { 100.0 },
                },
            );
            (201, Value::Null, None)
        },
    )
}

async fn status(
    State(state): State<Arc<Mutex<Fake>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/cdn/purges/{id}");
    serve(
        &state,
        ("GET", &path, ""),
        &headers,
        &body,
        "status",
        |fake, _, _| {
            let Some(p) = fake.purges.get(&id) else {
                return (
                    404,
                    json!({"code": "NotFound", "message": id}),
                    Some("NotFound".into()),
                );
            };
            let elapsed = p.created.elapsed();
            let (status, finish) = if elapsed < fake.task_delay / 2 {
                ("waiting", Value::Null)
            } else if elapsed < fake.task_delay {
                ("inprogress", Value::Null)
            } else {
                ("finished", json!("2024-01-01T00:00:00Z"))
            };
            let rate = if status == "finished" {
                p.success_rate
            } else {
                0.0
            };
            (
                200,
                json!({"purgeId": id, "status": status, "successRate": rate,
            "submissionTime": "2024-01-01T00:00:00Z", "finishTime": finish, "extra": true}),
                None,
            )
        },
    )
}

async fn tokens(
    State(state): State<Arc<Mutex<Fake>>>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = query.unwrap_or_default();
    serve(
        &state,
        (method.as_str(), TOKENS, &query),
        &headers,
        &body,
        TOKENS,
        |fake, _, _| {
            if query != "target=production" && query != "target=staging" {
                return bad("InvalidTarget", "target=staging|production");
            }
            (
                200,
                json!({"filePurgeTokens": fake.file_tokens, "dirPurgeTokens": fake.dir_tokens}),
                None,
            )
        },
    )
}
