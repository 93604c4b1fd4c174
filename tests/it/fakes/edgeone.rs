//! A fake Tencent EdgeOne API: verifies TC3-HMAC-SHA256 itself (and `X-TC-Token` when one is
//! required), checks body shapes, enforces the per-API rate, per-call caps and daily quota,
//! pages DescribePurgeTasks, and moves tasks from processing to success or failed over time.
//! Faults and a skewed clock can be scripted; every request's headers are recorded.
//!
//! Targets steer outcomes: `refuse` is put in FailedList, `fail-later` fails, `time-out` times
//! out, `unreported` is accepted but never listed by DescribePurgeTasks.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const SECRET_ID: &str = "AKIDfakeEdgeOneId0001";
pub const SECRET_KEY: &str = "fakeEdgeOneSecretKey0001";
pub const ZONE: &str = "zone-2o1xvpmq7nn3";

/// A fault for the next call of `action`.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this error code.
    Error(&'static str),
    /// Answer with this HTTP status and no Tencent body.
    Http(u16),
    /// Do the work, then answer only after this long (a client timeout makes it ambiguous).
    Slow(Duration),
    /// Receive the request but do nothing with it, and answer only after this long.
    Hang(Duration),
}

#[derive(Clone, Debug)]
pub struct Call {
    /// When the fake received it.
    pub at: std::time::SystemTime,
    pub action: String,
    pub body: Value,
    /// The error code answered, if any.
    pub error: Option<String>,
    pub timestamp: Option<String>,
    pub authorization: Option<String>,
    pub token: Option<String>,
    pub region: Option<String>,
    pub language: Option<String>,
}

struct Row {
    job_id: String,
    target: String,
    kind: String,
    method: String,
    created: DateTime<Utc>,
    done_at: Instant,
}

struct Fake {
    rate: usize,
    task_delay: Duration,
    batch: HashMap<String, usize>,
    daily_available: HashMap<String, u64>,
    recent: HashMap<String, VecDeque<Instant>>,
    faults: VecDeque<(String, Fault)>,
    calls: Vec<Call>,
    rows: Vec<Row>,
    next: u64,
    /// Requests without this `X-TC-Token` fail with AuthFailure.TokenFailure.
    token: Option<String>,
    /// The fake's clock runs this many seconds ahead of the host's.
    clock_offset: i64,
    /// DescribePurgeTasks answers at most this many rows per page, whatever the `Limit`.
    page_cap: usize,
    /// DescribeContentQuota calls with this `X-TC-Region` answer 503, as if unreachable.
    quota_down_for: Option<String>,
}

impl Fake {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::seconds(self.clock_offset)
    }
}

#[derive(Clone)]
pub struct FakeEdgeOne {
    pub addr: SocketAddr,
    state: Arc<Mutex<Fake>>,
}

impl FakeEdgeOne {
    /// A fake that allows `rate` calls per second per API and finishes tasks after `task_delay`.
    pub async fn start(rate: usize, task_delay: Duration) -> FakeEdgeOne {
        let batch = [
            ("purge_url", 100),
            ("purge_prefix", 100),
            ("purge_host", 100),
            ("purge_all", 1),
            ("purge_cache_tag", 100),
        ];
        let state = Arc::new(Mutex::new(Fake {
            rate,
            task_delay,
            batch: batch.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            daily_available: batch.iter().map(|(k, _)| (k.to_string(), 10_000)).collect(),
            recent: HashMap::new(),
            faults: VecDeque::new(),
            calls: Vec::new(),
            rows: Vec::new(),
            next: 0,
            token: None,
            clock_offset: 0,
            page_cap: usize::MAX,
            quota_down_for: None,
        }));
        let app = axum::Router::new()
            .route("/", axum::routing::post(handle))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeEdgeOne { addr, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_batch(&self, kind: &str, n: usize) {
        self.state.lock().unwrap().batch.insert(kind.into(), n);
    }

    pub fn set_daily_available(&self, kind: &str, n: u64) {
        self.state
            .lock()
            .unwrap()
            .daily_available
            .insert(kind.into(), n);
    }

    pub fn require_token(&self, token: &str) {
        self.state.lock().unwrap().token = Some(token.into());
    }

    /// Runs the fake's clock `secs` ahead (negative: behind) of the host's.
    pub fn set_clock_offset(&self, secs: i64) {
        self.state.lock().unwrap().clock_offset = secs;
    }

    pub fn set_page_cap(&self, rows: usize) {
        self.state.lock().unwrap().page_cap = rows;
    }

    /// Every DescribeContentQuota sent with `X-TC-Region: region` answers 503 (that client
    /// cannot reach the quota API); other clients read it as usual.
    pub fn refuse_quota_for_region(&self, region: &str) {
        self.state.lock().unwrap().quota_down_for = Some(region.into());
    }

    pub fn fault(&self, action: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .push_back((action.into(), fault));
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Successful calls of `action`.
    pub fn accepted(&self, action: &str) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|c| c.action == action && c.error.is_none())
            .map(|c| c.body)
            .collect()
    }
}

fn envelope(request_id: u64, body: Value) -> Response {
    let mut body = body;
    body["RequestId"] = json!(format!("req-{request_id}"));
    axum::Json(json!({ "Response": body })).into_response()
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn error(request_id: u64, code: &str, message: &str) -> Response {
    envelope(
        request_id,
        json!({"Error": {"Code": code, "Message": message}}),
    )
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// Verifies the request's TC3 signature from the headers alone at the fake's time `now`;
/// `Err` is an error code.
fn verify(
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), (&'static str, String)> {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let fail = |m: String| Err(("AuthFailure.SignatureFailure", m));
    let auth = h("authorization");
    let rest = auth
        .strip_prefix("TC3-HMAC-SHA256 ")
        .ok_or(("AuthFailure.SignatureFailure", "scheme".to_string()))?;
    let parts: HashMap<&str, &str> = rest.split(", ").filter_map(|p| p.split_once('=')).collect();
    let credential: Vec<&str> = parts
        .get("Credential")
        .copied()
        .unwrap_or("")
        .split('/')
        .collect();
    if credential.len() != 4
        || credential[0] != SECRET_ID
        || credential[2] != "teo"
        || credential[3] != "tc3_request"
    {
        return Err((
            "AuthFailure.SecretIdNotFound",
            format!("credential {credential:?}"),
        ));
    }
    if parts.get("SignedHeaders") != Some(&"content-type;host") {
        return fail("signed headers".into());
    }
    let ts: i64 = h("x-tc-timestamp")
        .parse()
        .map_err(|_| ("AuthFailure.InvalidAuthorization", "timestamp".to_string()))?;
    if (now.timestamp() - ts).abs() > 300 {
        return Err(("AuthFailure.SignatureExpire", "skew".into()));
    }
    let date = DateTime::from_timestamp(ts, 0)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string();
    if credential[1] != date {
        return fail("credential date".into());
    }
    let canonical = format!(
        "POST\n/\n\ncontent-type:{}\nhost:{}\n\ncontent-type;host\n{}",
        h("content-type"),
        h("host"),
        hex::encode(Sha256::digest(body))
    );
    let to_sign = format!(
        "TC3-HMAC-SHA256\n{ts}\n{date}/teo/tc3_request\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("TC3{SECRET_KEY}").as_bytes(), &date);
    let k = hmac(&k, "teo");
    let k = hmac(&k, "tc3_request");
    let expected = hex::encode(hmac(&k, &to_sign));
    if parts.get("Signature") != Some(&expected.as_str()) {
        return fail("signature mismatch".into());
    }
    Ok(())
}

async fn handle(
    State(state): State<Arc<Mutex<Fake>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let action = headers
        .get("x-tc-action")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (mut response, delay, date) = {
        let mut fake = state.lock().unwrap();
        fake.next += 1;
        let id = fake.next;
        let (response, code, delay) = answer(&mut fake, id, &action, &headers, &body, &parsed);
        fake.calls.push(Call {
            at: std::time::SystemTime::now(),
            action,
            body: parsed,
            error: code,
            timestamp: header(&headers, "x-tc-timestamp"),
            authorization: header(&headers, "authorization"),
            token: header(&headers, "x-tc-token"),
            region: header(&headers, "x-tc-region"),
            language: header(&headers, "x-tc-language"),
        });
        (response, delay, fake.now())
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    // The fake's own clock, as Tencent Cloud's `Date` shows its clock.
    let date = httpdate::fmt_http_date(std::time::SystemTime::from(date));
    response.headers_mut().insert("date", date.parse().unwrap());
    response
}

/// The response, the error code it carries, and how long to hold it.
fn answer(
    fake: &mut Fake,
    id: u64,
    action: &str,
    headers: &HeaderMap,
    body: &[u8],
    parsed: &Value,
) -> (Response, Option<String>, Option<Duration>) {
    let err = |code: &str, m: &str| (error(id, code, m), Some(code.to_string()), None);
    if headers.get("x-tc-version").and_then(|v| v.to_str().ok()) != Some("2022-09-01") {
        return err("InvalidParameter.Version", "X-TC-Version");
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return err("InvalidParameter.ContentType", "content type");
    }
    if let Err((code, m)) = verify(headers, body, fake.now()) {
        return err(code, &m);
    }
    if let Some(token) = &fake.token
        && header(headers, "x-tc-token").as_ref() != Some(token)
    {
        return err("AuthFailure.TokenFailure", "X-TC-Token missing or wrong");
    }
    let now = Instant::now();
    let window = fake.recent.entry(action.to_string()).or_default();
    while window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        window.pop_front();
    }
    if window.len() >= fake.rate {
        return err("RequestLimitExceeded", "too many requests");
    }
    window.push_back(now);
    if action == "DescribeContentQuota"
        && fake.quota_down_for.is_some()
        && header(headers, "x-tc-region") == fake.quota_down_for
    {
        return (
            (StatusCode::SERVICE_UNAVAILABLE, "cannot connect").into_response(),
            Some("503".into()),
            None,
        );
    }
    let mut delay = None;
    if let Some(i) = fake.faults.iter().position(|(a, _)| a == action) {
        match fake.faults.remove(i).unwrap().1 {
            Fault::Error(code) => return err(code, "scripted"),
            Fault::Http(status) => {
                let s = StatusCode::from_u16(status).unwrap();
                return (
                    (s, "upstream trouble").into_response(),
                    Some(status.to_string()),
                    None,
                );
            }
            Fault::Slow(d) => delay = Some(d),
            Fault::Hang(d) => {
                let (response, code) = (error(id, "InternalError", "gave up"), "InternalError");
                return (response, Some(code.to_string()), Some(d));
            }
        }
    }
    if parsed.get("ZoneId").and_then(Value::as_str) != Some(ZONE) {
        return err("InvalidParameter.ZoneId", "zone");
    }
    let (response, code) = match action {
        "CreatePurgeTask" => create(fake, id, parsed),
        "DescribePurgeTasks" => describe(fake, id, parsed),
        "DescribeContentQuota" => {
            let quotas: Vec<Value> = fake
                .batch
                .iter()
                .map(|(k, b)| json!({"Type": k, "Batch": b, "Daily": 10_000, "DailyAvailable": fake.daily_available[k]}))
                .collect();
            (envelope(id, json!({"PurgeQuota": quotas})), None)
        }
        _ => return err("InvalidAction", action),
    };
    (response, code, delay)
}

fn create(fake: &mut Fake, id: u64, body: &Value) -> (Response, Option<String>) {
    let err = |code: &str, m: &str| (error(id, code, m), Some(code.to_string()));
    let kind = body["Type"].as_str().unwrap_or("").to_string();
    let method = body["Method"].as_str().unwrap_or("").to_string();
    if !fake.batch.contains_key(&kind) {
        return err("InvalidParameter.Type", &kind);
    }
    if method != "invalidate" && method != "delete" {
        return err("InvalidParameter.Method", &method);
    }
    let targets: Vec<String> = body["Targets"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let targets = if kind == "purge_all" {
        if !targets.is_empty() {
            return err("InvalidParameter.Targets", "purge_all takes no targets");
        }
        vec![String::new()]
    } else {
        if targets.is_empty() {
            return err("InvalidParameter.Targets", "no targets");
        }
        targets
    };
    if kind == "purge_cache_tag"
        && body["CacheTag"]["Domains"]
            .as_array()
            .is_none_or(|d| d.is_empty())
    {
        return err("InvalidParameter.CacheTag", "CacheTag.Domains required");
    }
    if matches!(kind.as_str(), "purge_url" | "purge_prefix")
        && targets
            .iter()
            .any(|t| !t.starts_with("http://") && !t.starts_with("https://"))
    {
        return err("InvalidParameter.Target", "targets need a scheme");
    }
    if targets.len() > fake.batch[&kind] {
        return err("LimitExceeded.BatchQuota", "batch too large");
    }
    let available = fake.daily_available.get_mut(&kind).unwrap();
    if (targets.len() as u64) > *available {
        return err("LimitExceeded.DailyQuota", "daily quota used up");
    }
    *available -= targets.len() as u64;
    let job_id = format!("job-{id}");
    let (refused, accepted): (Vec<String>, Vec<String>) =
        targets.into_iter().partition(|t| t.contains("refuse"));
    for target in accepted.into_iter().filter(|t| !t.contains("unreported")) {
        fake.rows.push(Row {
            job_id: job_id.clone(),
            target,
            kind: kind.clone(),
            method: method.clone(),
            created: fake.now(),
            done_at: Instant::now() + fake.task_delay,
        });
    }
    let failed = if refused.is_empty() {
        Value::Null
    } else {
        json!([{"Reason": "target not in zone", "Targets": refused}])
    };
    (
        envelope(id, json!({"JobId": job_id, "FailedList": failed})),
        None,
    )
}

fn describe(fake: &Fake, id: u64, body: &Value) -> (Response, Option<String>) {
    let err = |code: &str, m: &str| (error(id, code, m), Some(code.to_string()));
    let limit = body["Limit"].as_u64().unwrap_or(20);
    if limit > 1000 {
        return err("InvalidParameter.Limit", "Limit <= 1000");
    }
    let parse = |k: &str| {
        body[k]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.with_timezone(&Utc))
    };
    let (Some(start), Some(end)) = (parse("StartTime"), parse("EndTime")) else {
        return err("InvalidParameter.Time", "StartTime/EndTime");
    };
    if end - start > chrono::Duration::days(7) {
        return err("InvalidParameter.Time", "window over 7 days");
    }
    let filters: Vec<(String, Vec<String>)> = body["Filters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let values = f["Values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            (f["Name"].as_str().unwrap_or("").to_string(), values)
        })
        .collect();
    let now = Instant::now();
    let matching: Vec<&Row> = fake
        .rows
        .iter()
        .filter(|r| r.created >= start && r.created <= end)
        .filter(|r| {
            filters.iter().all(|(name, values)| match name.as_str() {
                "job-id" => values.contains(&r.job_id),
                "target" => values.contains(&r.target),
                "type" => values.contains(&r.kind),
                _ => true,
            })
        })
        .collect();
    let offset = body["Offset"].as_u64().unwrap_or(0) as usize;
    let tasks: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take((limit as usize).min(fake.page_cap))
        .map(|r| {
            let (status, fail_type, fail_message) = if now < r.done_at {
                ("processing", "", "")
            } else if r.target.contains("fail-later") {
                ("failed", "originPullFailed", "origin returned 502")
            } else if r.target.contains("time-out") {
                ("timeout", "", "")
            } else {
                ("success", "", "")
            };
            json!({
                "JobId": r.job_id, "Target": r.target, "Type": r.kind, "Method": r.method,
                "Status": status, "CreateTime": r.created.to_rfc3339(), "UpdateTime": r.created.to_rfc3339(),
                "FailType": fail_type, "FailMessage": fail_message, "SomeNewField": 1
            })
        })
        .collect();
    (
        envelope(id, json!({"TotalCount": matching.len(), "Tasks": tasks})),
        None,
    )
}
