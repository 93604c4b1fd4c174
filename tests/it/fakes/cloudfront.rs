//! A fake CloudFront API: verifies SigV4 itself (any signed header set, the session token when
//! the keys are temporary), keeps invalidations that move InProgress -> Completed, answers a
//! reused CallerReference with the earlier invalidation (or a conflict for other paths), and
//! enforces the per-batch and in-progress caps. Faults can be scripted; every call is recorded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const ACCESS_KEY_ID: &str = "AKIAFAKECLOUDFRONT01";
pub const SECRET_ACCESS_KEY: &str = "fakeCloudFrontSecretKey/0001";
pub const DISTRIBUTION: &str = "EDFDVBD6EXAMPLE";

/// A fault for the next CreateInvalidation.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Create the invalidation, then cut the connection before the answer's body.
    DropAfterCreate,
    /// Answer `<Code>` with this HTTP status, creating nothing.
    Error(u16, &'static str),
    /// Answer that the caller reference was used for other paths, in the configured form.
    Conflict,
}

#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub signed_headers: String,
    pub token: Option<String>,
    pub body: String,
    /// The error code answered, if any.
    pub error: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Invalidation {
    pub id: String,
    pub reference: String,
    pub paths: Vec<String>,
    created: Instant,
}

struct Fake {
    /// Access key id -> (secret, session token required).
    keys: HashMap<String, (String, Option<String>)>,
    delay: Duration,
    max_files: usize,
    max_wildcards: usize,
    /// Answer a reused reference with other paths as InvalidationBatchAlreadyExists
    /// (documented) instead of InvalidArgument (what real clients see).
    documented_conflict: bool,
    faults: Vec<Fault>,
    calls: Vec<Call>,
    invalidations: Vec<Invalidation>,
}

impl Fake {
    fn in_progress(&self) -> (usize, usize) {
        let mut files = 0;
        let mut wildcards = 0;
        for inv in self
            .invalidations
            .iter()
            .filter(|i| i.created.elapsed() < self.delay)
        {
            let (f, w) = count(&inv.paths);
            files += f;
            wildcards += w;
        }
        (files, wildcards)
    }
}

/// File paths and wildcard paths (`*` at the end, and tags) of a batch.
fn count(paths: &[String]) -> (usize, usize) {
    let wild = paths
        .iter()
        .filter(|p| p.ends_with('*') || p.starts_with('#'))
        .count();
    (paths.len() - wild, wild)
}

#[derive(Clone)]
pub struct FakeCloudFront {
    pub addr: SocketAddr,
    state: Arc<Mutex<Fake>>,
}

impl FakeCloudFront {
    /// Invalidations complete `delay` after they are created.
    pub async fn start(delay: Duration) -> FakeCloudFront {
        let state = Arc::new(Mutex::new(Fake {
            keys: HashMap::from([(ACCESS_KEY_ID.into(), (SECRET_ACCESS_KEY.into(), None))]),
            delay,
            max_files: 3000,
            max_wildcards: 15,
            documented_conflict: false,
            faults: Vec::new(),
            calls: Vec::new(),
            invalidations: Vec::new(),
        }));
        let app = axum::Router::new()
            .route(
                "/2020-05-31/distribution/{id}/invalidation",
                axum::routing::post(create),
            )
            .route(
                "/2020-05-31/distribution/{id}/invalidation/{inv}",
                axum::routing::get(get),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeCloudFront { addr, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Accepts temporary keys (issued by the STS fake) that must carry `token`.
    pub fn allow_key(&self, id: &str, secret: &str, token: &str) {
        let mut s = self.state.lock().unwrap();
        s.keys
            .insert(id.into(), (secret.into(), Some(token.into())));
    }

    pub fn set_caps(&self, files: usize, wildcards: usize) {
        let mut s = self.state.lock().unwrap();
        s.max_files = files;
        s.max_wildcards = wildcards;
    }

    pub fn documented_conflict(&self) {
        self.state.lock().unwrap().documented_conflict = true;
    }

    pub fn fault(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push(fault);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn invalidations(&self) -> Vec<Invalidation> {
        self.state.lock().unwrap().invalidations.clone()
    }
}

fn xml_error(status: u16, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\"?><ErrorResponse xmlns=\"http://cloudfront.amazonaws.com/doc/2020-05-31/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>fake-req</RequestId></ErrorResponse>"
    );
    (
        StatusCode::from_u16(status).unwrap(),
        [("x-amz-request-id", "fake-req")],
        body,
    )
        .into_response()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Checks the SigV4 signature of a request with the fake's own code; the error is the code
/// to answer. Returns the session token used.
fn verify(
    keys: &HashMap<String, (String, Option<String>)>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(String, Option<String>), &'static str> {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let auth = header("authorization").ok_or("MissingAuthenticationToken")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("IncompleteSignature")?;
    let mut parts = HashMap::new();
    for p in rest.split(", ") {
        let (k, v) = p.split_once('=').ok_or("IncompleteSignature")?;
        parts.insert(k, v);
    }
    let credential = parts.get("Credential").ok_or("IncompleteSignature")?;
    let signed = parts
        .get("SignedHeaders")
        .ok_or("IncompleteSignature")?
        .to_string();
    let given = parts.get("Signature").ok_or("IncompleteSignature")?;
    let cred: Vec<&str> = credential.split('/').collect();
    if cred.len() != 5
        || cred[2] != "us-east-1"
        || cred[3] != "cloudfront"
        || cred[4] != "aws4_request"
    {
        return Err("IncompleteSignature");
    }
    let (secret, token) = keys.get(cred[0]).ok_or("InvalidClientTokenId")?;
    let names: Vec<&str> = signed.split(';').collect();
    if !names.contains(&"host") || !names.contains(&"x-amz-date") {
        return Err("IncompleteSignature");
    }
    let sent_token = header("x-amz-security-token");
    if token.is_some() && (sent_token != *token || !names.contains(&"x-amz-security-token")) {
        return Err("InvalidClientTokenId");
    }
    let date = header("x-amz-date").ok_or("IncompleteSignature")?;
    if !date.starts_with(cred[1]) {
        return Err("SignatureDoesNotMatch");
    }
    let mut canonical_headers = String::new();
    for n in &names {
        let v = header(n).ok_or("SignatureDoesNotMatch")?;
        canonical_headers.push_str(&format!("{n}:{}\n", v.trim()));
    }
    let canonical = format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{signed}\n{}",
        uri.path(),
        uri.query().unwrap_or(""),
        hex::encode(Sha256::digest(body))
    );
    let scope = format!("{}/us-east-1/cloudfront/aws4_request", cred[1]);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), cred[1].as_bytes());
    for part in ["us-east-1", "cloudfront", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    if hex::encode(hmac(&key, to_sign.as_bytes())) != *given {
        return Err("SignatureDoesNotMatch");
    }
    Ok((signed, sent_token))
}

/// The texts of every `<tag>` element, in order.
fn elements(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(open.as_str())
        .skip(1)
        .filter_map(|s| {
            s.split_once(close.as_str())
                .map(|(v, _)| v.replace("&amp;", "&").replace("&lt;", "<"))
        })
        .collect()
}

fn invalidation_xml(inv: &Invalidation, delay: Duration) -> String {
    let status = if inv.created.elapsed() < delay {
        "InProgress"
    } else {
        "Completed"
    };
    let paths: String = inv
        .paths
        .iter()
        .map(|p| format!("<Path>{p}</Path>"))
        .collect();
    format!(
        "<?xml version=\"1.0\"?><Invalidation xmlns=\"http://cloudfront.amazonaws.com/doc/2020-05-31/\"><Id>{}</Id><Status>{status}</Status><CreateTime>2024-01-01T00:00:00Z</CreateTime><InvalidationBatch><Paths><Quantity>{}</Quantity><Items>{paths}</Items></Paths><CallerReference>{}</CallerReference></InvalidationBatch></Invalidation>",
        inv.id,
        inv.paths.len(),
        inv.reference
    )
}

async fn create(
    State(state): State<Arc<Mutex<Fake>>>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut fake = state.lock().unwrap();
    let text = String::from_utf8_lossy(&body).into_owned();
    let mut call = Call {
        method: method.to_string(),
        path: uri.path().into(),
        signed_headers: String::new(),
        token: None,
        body: text.clone(),
        error: None,
    };
    let (response, error) = create_answer(
        &mut fake, &id, &method, &uri, &headers, &body, &text, &mut call,
    );
    call.error = error;
    fake.calls.push(call);
    response
}

#[allow(clippy::too_many_arguments)]
fn create_answer(
    fake: &mut Fake,
    id: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    text: &str,
    call: &mut Call,
) -> (Response, Option<String>) {
    let fail = |status, code: &str, message: &str| {
        (xml_error(status, code, message), Some(code.to_owned()))
    };
    match verify(&fake.keys, method, uri, headers, body) {
        Ok((signed, token)) => {
            call.signed_headers = signed;
            call.token = token;
        }
        Err(code) => return fail(403, code, "signature check failed"),
    }
    if id != DISTRIBUTION {
        return fail(
            404,
            "NoSuchDistribution",
            "The specified distribution does not exist.",
        );
    }
    let fault = (!fake.faults.is_empty()).then(|| fake.faults.remove(0));
    if let Some(Fault::Error(status, code)) = fault {
        return fail(status, code, "scripted fault");
    }
    let paths = elements(text, "Path");
    let reference = elements(text, "CallerReference").pop().unwrap_or_default();
    let quantity: usize = elements(text, "Quantity")
        .first()
        .and_then(|q| q.parse().ok())
        .unwrap_or(0);
    if paths.is_empty() || quantity != paths.len() || reference.is_empty() {
        return fail(400, "MalformedInput", "bad InvalidationBatch");
    }
    let conflict = matches!(fault, Some(Fault::Conflict));
    let earlier = fake.invalidations.iter().find(|i| i.reference == reference);
    if let Some(earlier) = earlier.filter(|e| e.paths == paths && !conflict) {
        let xml = invalidation_xml(earlier, fake.delay);
        return ((StatusCode::CREATED, xml).into_response(), None);
    }
    if conflict || earlier.is_some() {
        return if fake.documented_conflict {
            fail(
                409,
                "InvalidationBatchAlreadyExists",
                "The batch already exists.",
            )
        } else {
            fail(
                400,
                "InvalidArgument",
                "Your request contains a caller reference that was used for a previous invalidation batch for the same distribution.",
            )
        };
    }
    let (files, wildcards) = count(&paths);
    if files > fake.max_files || wildcards > fake.max_wildcards {
        return fail(
            413,
            "BatchTooLarge",
            "Invalidation batch specified is too large.",
        );
    }
    let (busy_files, busy_wild) = fake.in_progress();
    if busy_files + files > fake.max_files || busy_wild + wildcards > fake.max_wildcards {
        return fail(
            400,
            "TooManyInvalidationsInProgress",
            "Processing your request will cause you to exceed the maximum number of in-progress wildcard invalidations.",
        );
    }
    let inv = Invalidation {
        id: format!("I{:06}", fake.invalidations.len() + 1),
        reference,
        paths,
        created: Instant::now(),
    };
    let xml = invalidation_xml(&inv, fake.delay);
    let location = format!("/2020-05-31/distribution/{id}/invalidation/{}", inv.id);
    fake.invalidations.push(inv);
    if matches!(fault, Some(Fault::DropAfterCreate)) {
        let cut = futures::stream::once(async {
            Err::<Bytes, _>(std::io::Error::other("connection lost"))
        });
        let response = Response::builder()
            .status(201)
            .header("content-length", "4096")
            .body(Body::from_stream(cut))
            .unwrap();
        return (response, Some("dropped".into()));
    }
    (
        (
            StatusCode::CREATED,
            [
                ("location", location),
                ("x-amz-request-id", "fake-req".into()),
            ],
            xml,
        )
            .into_response(),
        None,
    )
}

async fn get(
    State(state): State<Arc<Mutex<Fake>>>,
    Path((id, inv)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut fake = state.lock().unwrap();
    let mut call = Call {
        method: method.to_string(),
        path: uri.path().into(),
        signed_headers: String::new(),
        token: None,
        body: String::new(),
        error: None,
    };
    let response = match verify(&fake.keys, &method, &uri, &headers, b"") {
        Err(code) => {
            call.error = Some(code.into());
            xml_error(403, code, "signature check failed")
        }
        Ok((signed, token)) => {
            call.signed_headers = signed;
            call.token = token;
            match fake
                .invalidations
                .iter()
                .find(|i| i.id == inv && id == DISTRIBUTION)
            {
                Some(i) => (StatusCode::OK, invalidation_xml(i, fake.delay)).into_response(),
                None => {
                    call.error = Some("NoSuchInvalidation".into());
                    xml_error(
                        404,
                        "NoSuchInvalidation",
                        "The specified invalidation does not exist.",
                    )
                }
            }
        }
    };
    fake.calls.push(call);
    response
}
