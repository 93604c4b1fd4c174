//! A fake AWS STS: `AssumeRoleWithWebIdentity` as an unsigned form POST, checking the role and
//! the web identity token, issuing temporary keys that the CloudFront fake then accepts.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::cloudfront::FakeCloudFront;

pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/purge";

struct Sts {
    token: String,
    lifetime: Duration,
    /// Form fields of every call.
    calls: Vec<Vec<(String, String)>>,
    cloudfront: FakeCloudFront,
}

#[derive(Clone)]
pub struct FakeSts {
    pub addr: SocketAddr,
    state: Arc<Mutex<Sts>>,
}

impl FakeSts {
    /// Accepts `token`; issued keys expire after `lifetime` and are allowed at `cloudfront`.
    pub async fn start(cloudfront: FakeCloudFront, token: &str, lifetime: Duration) -> FakeSts {
        let state = Arc::new(Mutex::new(Sts {
            token: token.into(),
            lifetime,
            calls: Vec::new(),
            cloudfront,
        }));
        let app = axum::Router::new()
            .route("/", axum::routing::post(assume))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeSts { addr, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<Vec<(String, String)>> {
        self.state.lock().unwrap().calls.clone()
    }
}

fn error(code: &str) -> Response {
    let body = format!(
        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>refused by the fake</Message></Error><RequestId>sts-req</RequestId></ErrorResponse>"
    );
    (StatusCode::BAD_REQUEST, body).into_response()
}

async fn assume(State(state): State<Arc<Mutex<Sts>>>, body: Bytes) -> Response {
    let mut sts = state.lock().unwrap();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    sts.calls.push(form.clone());
    let field = |n: &str| form.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    if field("Action") != Some("AssumeRoleWithWebIdentity")
        || field("Version") != Some("2011-06-15")
    {
        return error("InvalidAction");
    }
    if field("RoleArn") != Some(ROLE_ARN) || field("RoleSessionName").is_none_or(str::is_empty) {
        return error("AccessDenied");
    }
    if field("WebIdentityToken") != Some(sts.token.as_str()) {
        return error("InvalidIdentityToken");
    }
    let n = sts.calls.len();
    let (id, secret, token) = (
        format!("ASIAFAKE{n:04}"),
        format!("tempSecret{n}"),
        format!("sessionToken{n}"),
    );
    sts.cloudfront.allow_key(&id, &secret, &token);
    let expires = chrono::Utc::now() + chrono::Duration::from_std(sts.lifetime).unwrap();
    let body = format!(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleWithWebIdentityResult><Credentials><SessionToken>{token}</SessionToken><SecretAccessKey>{secret}</SecretAccessKey><Expiration>{}</Expiration><AccessKeyId>{id}</AccessKeyId></Credentials></AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>sts-{n}</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>",
        expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    (StatusCode::OK, body).into_response()
}
