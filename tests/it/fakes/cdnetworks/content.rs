//! A fake CDNetworks Content Management API: both auth schemes, 10 calls per 5 minutes on each
//! purge endpoint, 500 items per call, the regex daily quota, `RepeatUrlRegular` while the
//! same regex still runs, and items that go `wait` -> `run` -> `success` over time. A target
//! containing `fail` ends in `failure`; one containing `unreported` never shows up in
//! ItemIdQuery. `Code` is an integer in some answers and a string in others, as documented.
//! ItemIdQuery pages its rows as the API does (`pageNo` default 1, `pageSize` default 20, `count`
//! the total). Directory DELETE is off, as on a new account, until `allow_dir_delete`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::{Call, Fault, admit, reply, strings, verify};

pub const RECEIVER: &str = "/ccm/purge/ItemIdReceiver";
pub const REGEX: &str = "/api/content/regular-url/purge";
pub const QUERY: &str = "/ccm/purge/ItemIdQuery";
pub const QUOTA: &str = "/ccm/purge/quota";

struct Item {
    created: Instant,
    /// (url, isDir: 0 file, 1 regex, 2 dir)
    rows: Vec<(String, u8)>,
}

struct Fake {
    task_delay: Duration,
    remaining: HashMap<&'static str, u64>,
    recent: HashMap<&'static str, VecDeque<Instant>>,
    replays: HashMap<String, Instant>,
    faults: VecDeque<(String, Fault)>,
    calls: Vec<Call>,
    items: HashMap<String, Item>,
    next: u64,
    dir_delete: bool,
}

#[derive(Clone)]
pub struct FakeContent {
    pub addr: SocketAddr,
    state: Arc<Mutex<Fake>>,
}

impl FakeContent {
    /// A fake whose items finish `task_delay` after they are submitted.
    pub async fn start(task_delay: Duration) -> FakeContent {
        let state = Arc::new(Mutex::new(Fake {
            task_delay,
            remaining: HashMap::from([("url", 10_000), ("dir", 500), ("regex", 500)]),
            recent: HashMap::new(),
            replays: HashMap::new(),
            faults: VecDeque::new(),
            calls: Vec::new(),
            items: HashMap::new(),
            next: 0,
            dir_delete: false,
        }));
        let app = axum::Router::new()
            .route(RECEIVER, axum::routing::post(receiver))
            .route(REGEX, axum::routing::post(regex))
            .route(QUERY, axum::routing::post(query))
            .route(QUOTA, axum::routing::post(quota))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeContent { addr, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The day's remainder of `url`, `dir` or `regex` items.
    pub fn set_remaining(&self, what: &'static str, n: u64) {
        self.state.lock().unwrap().remaining.insert(what, n);
    }

    /// Enables directory DELETE, as support does for an account on request.
    pub fn allow_dir_delete(&self) {
        self.state.lock().unwrap().dir_delete = true;
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

    /// Calls of `path`, answered or not.
    pub fn calls_of(&self, path: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.path == path)
            .collect()
    }

    /// Bodies of the accepted calls of `path`.
    pub fn accepted(&self, path: &str) -> Vec<Value> {
        self.calls_of(path)
            .into_iter()
            .filter(|c| c.error.is_none())
            .map(|c| c.body)
            .collect()
    }
}

type Answer = (u16, Value, Option<String>);

/// Common handling: auth, the per-endpoint budget, faults, the call log.
fn serve(
    state: &Mutex<Fake>,
    path: &'static str,
    headers: &HeaderMap,
    body: &[u8],
    answer: impl FnOnce(&mut Fake, u64, &Value) -> Answer,
) -> Response {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut fake = state.lock().unwrap();
    fake.next += 1;
    let id = fake.next;
    let verdict = verify("POST", path, "", headers, body, &mut fake.replays);
    let (status, answer, error, scheme) = match verdict {
        Err(code) => (
            401,
            json!({"Code": code, "Message": "authentication failed"}),
            Some(code),
            "none",
        ),
        Ok(scheme) => {
            let budgeted = path == RECEIVER || path == REGEX;
            let window = fake.recent.entry(path).or_default();
            if budgeted && !admit(window, 10, Duration::from_secs(300)) {
                let code = "RequestsTooFrequent".to_string();
                (
                    429,
                    json!({"Code": code, "Message": "10 calls per 5 minutes"}),
                    Some(code),
                    scheme,
                )
            } else if let Some(i) = fake.faults.iter().position(|(p, _)| p == path) {
                let Fault::Code(status, code) = fake.faults.remove(i).unwrap().1;
                (
                    status,
                    json!({"Code": code, "Message": "scripted"}),
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
        method: "POST".into(),
        path: path.into(),
        body: parsed,
        auth: scheme,
        error,
    });
    reply(status, id, answer)
}

fn regex_error(code: &str, message: &str) -> Answer {
    (
        400,
        json!({"Code": code, "Message": message}),
        Some(code.into()),
    )
}

/// ItemIdReceiver answers errors with HTTP 200 and an integer `Code` other than 1.
fn receiver_error(code: i64, message: &str) -> Answer {
    (
        200,
        json!({"Code": code, "Message": message}),
        Some(code.to_string()),
    )
}

async fn receiver(
    State(state): State<Arc<Mutex<Fake>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(&state, RECEIVER, &headers, &body, |fake, id, b| {
        let urls = strings(b, "urls").unwrap_or_default();
        let dirs = strings(b, "dirs").unwrap_or_default();
        if urls.is_empty() && dirs.is_empty() {
            return receiver_error(2, "urls and dirs are empty");
        }
        if urls.len() + dirs.len() > 500 {
            return receiver_error(3, "at most 500 urls and dirs per call");
        }
        if dirs.iter().any(|d| !d.ends_with('/')) {
            return receiver_error(4, "dirs must end with /");
        }
        for (list, action) in [(&urls, "urlAction"), (&dirs, "dirAction")] {
            let a = b.get(action).and_then(Value::as_str);
            if !list.is_empty() && !matches!(a, Some("expire" | "delete")) {
                return receiver_error(5, &format!("{action} must be expire or delete"));
            }
        }
        // The refusal's exact code is not documented: modelled as the receiver's other
        // refusals (HTTP 200, `Code` other than 1, a message).
        if !dirs.is_empty() && b.get("dirAction") == Some(&json!("delete")) && !fake.dir_delete {
            return receiver_error(0, "no permission to delete directories");
        }
        for (what, n) in [("url", urls.len()), ("dir", dirs.len())] {
            let left = fake.remaining.get_mut(what).unwrap();
            if n as u64 > *left {
                return receiver_error(6, &format!("daily {what} quota exceeded"));
            }
            *left -= n as u64;
        }
        let rows = urls
            .into_iter()
            .map(|u| (u, 0))
            .chain(dirs.into_iter().map(|d| (d, 2)))
            .collect();
        let item = format!("item-{id}");
        fake.items.insert(
            item.clone(),
            Item {
                created: Instant::now(),
                rows,
            },
        );
        (
            200,
            json!({"Code": 1, "Message": "handle success", "itemId": item}),
            None,
        )
    })
}

async fn regex(State(state): State<Arc<Mutex<Fake>>>, headers: HeaderMap, body: Bytes) -> Response {
    serve(&state, REGEX, &headers, &body, |fake, id, b| {
        let Some(regexes) = strings(b, "urlRegulars") else {
            return regex_error("ParseParameterError", "urlRegulars is required");
        };
        if regexes.is_empty() {
            return regex_error("UrlRegularEmpty", "no regex");
        }
        if regexes.len() > 500 {
            return regex_error("OnceSubmitLessThan500", "at most 500 per call");
        }
        if regexes
            .iter()
            .any(|r| r.chars().count() > 2000 || !r.contains("://"))
        {
            return regex_error("InvalidUrlRegular", "bad regex");
        }
        let left = fake.remaining["regex"];
        if left == 0 {
            return regex_error("NumberOutOfLimit", "daily regex quota used up");
        }
        if regexes.len() as u64 > left {
            return regex_error(
                "NumberPartlyOutOfLimit",
                "part of the batch is over the quota",
            );
        }
        let delay = fake.task_delay;
        let running = fake.items.values().any(|i| {
            i.created.elapsed() < delay
                && i.rows.iter().any(|(u, k)| *k == 1 && regexes.contains(u))
        });
        if running {
            return regex_error("RepeatUrlRegular", "the same regex is still running");
        }
        *fake.remaining.get_mut("regex").unwrap() -= regexes.len() as u64;
        let item = format!("item-{id}");
        let rows = regexes.into_iter().map(|r| (r, 1)).collect();
        fake.items.insert(
            item.clone(),
            Item {
                created: Instant::now(),
                rows,
            },
        );
        (
            200,
            json!({"Code": "Success", "Message": "submitted", "itemId": item}),
            None,
        )
    })
}

async fn query(State(state): State<Arc<Mutex<Fake>>>, headers: HeaderMap, body: Bytes) -> Response {
    serve(&state, QUERY, &headers, &body, |fake, _, b| {
        let Some(item) = b.get("itemId").and_then(Value::as_str) else {
            return (
                200,
                json!({"Code": "2", "Message": "itemId is required"}),
                Some("2".into()),
            );
        };
        let page = |name: &str, default: u64| match b.get(name) {
            None => Some(default),
            Some(v) => v.as_u64().filter(|n| *n >= 1),
        };
        let (Some(page_no), Some(page_size)) = (page("pageNo", 1), page("pageSize", 20)) else {
            return (
                200,
                json!({"Code": "0", "Message": "pageNo and pageSize must be positive integers"}),
                Some("0".into()),
            );
        };
        let details: Vec<Value> = fake
            .items
            .get(item)
            .map(|i| {
                let elapsed = i.created.elapsed();
                i.rows
                    .iter()
                    .filter(|(u, _)| !u.contains("unreported"))
                    .map(|(u, kind)| {
                        let (status, rate) = if elapsed < fake.task_delay / 2 {
                            ("wait", "0")
                        } else if elapsed < fake.task_delay {
                            ("run", "40")
                        } else if u.contains("fail") {
                            ("failure", "0")
                        } else {
                            ("success", "100")
                        };
                        json!({"url": u, "status": status, "rate": rate, "isDir": kind,
                            "receiveTime": "2024-01-01 08:00:00", "finishTime": null})
                    })
                    .collect()
            })
            .unwrap_or_default();
        let total = details.len();
        let rows: Vec<Value> = details
            .into_iter()
            .skip(((page_no - 1) * page_size) as usize)
            .take(page_size as usize)
            .collect();
        (
            200,
            json!({"Code": "1", "Message": "success", "count": total, "pageNo": page_no,
                "pageSize": page_size, "resultDetail": rows}),
            None,
        )
    })
}

async fn quota(State(state): State<Arc<Mutex<Fake>>>, headers: HeaderMap, body: Bytes) -> Response {
    serve(&state, QUOTA, &headers, &body, |fake, _, _| {
        let r = &fake.remaining;
        (
            200,
            json!({"code": 0, "urlQuota": 10_000, "remainingUrlQuota": r["url"],
            "dirQuota": 500, "remainingDirQuota": r["dir"],
            "regexQuota": 500, "remainingRegexQuota": r["regex"].to_string()}),
            None,
        )
    })
}
