//! Akamai EdgeGrid `EG1-HMAC-SHA256` request signing: the signing key from the client secret
//! and the timestamp, and the signature over the exact method, scheme, host (with port), path
//! and query, and body sent.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use crate::providers::signing::hmac_sha256;

fn hmac_b64(key: &[u8], data: &[u8]) -> String {
    STANDARD.encode(hmac_sha256(key, data))
}

/// What one signature covers.
pub struct EdgeGridInput<'a> {
    pub client_token: &'a str,
    pub client_secret: &'a str,
    pub access_token: &'a str,
    /// `YYYYMMDDTHH:MM:SS+0000`.
    pub timestamp: &'a str,
    pub nonce: &'a str,
    pub method: &'a str,
    pub scheme: &'a str,
    /// The `Host` sent: `host[:port]`.
    pub host: &'a str,
    /// Path with `?query` if any.
    pub path_and_query: &'a str,
    pub body: &'a [u8],
}

/// base64(HMAC-SHA256(client secret, timestamp)).
pub fn signing_key(client_secret: &str, timestamp: &str) -> String {
    hmac_b64(client_secret.as_bytes(), timestamp.as_bytes())
}

/// base64(SHA-256(body)) for a POST with a body, else empty.
pub fn content_hash(method: &str, body: &[u8]) -> String {
    if method.eq_ignore_ascii_case("POST") && !body.is_empty() {
        STANDARD.encode(Sha256::digest(body))
    } else {
        String::new()
    }
}

/// The header without its signature: `EG1-HMAC-SHA256 client_token=..;...;nonce=..;`.
fn auth_header(input: &EdgeGridInput<'_>) -> String {
    format!(
        "EG1-HMAC-SHA256 client_token={};access_token={};timestamp={};nonce={};",
        input.client_token, input.access_token, input.timestamp, input.nonce
    )
}

/// The base64 signature of `input`.
pub fn signature(input: &EdgeGridInput<'_>) -> String {
    let data = [
        input.method.to_ascii_uppercase().as_str(),
        input.scheme,
        input.host,
        input.path_and_query,
        "",
        &content_hash(input.method, input.body),
        &auth_header(input),
    ]
    .join("\t");
    let key = signing_key(input.client_secret, input.timestamp);
    hmac_b64(key.as_bytes(), data.as_bytes())
}

/// The `Authorization` header value.
pub fn authorization(input: &EdgeGridInput<'_>) -> String {
    format!("{}signature={}", auth_header(input), signature(input))
}

/// The EdgeGrid timestamp of a time.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y%m%dT%H:%M:%S+0000").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: &str = "20140321T19:34:21+0000";

    fn secret() -> String {
        format!("{}=", "x".repeat(43))
    }

    fn sign(method: &str, path: &str, body: &[u8]) -> String {
        let secret = secret();
        signature(&EdgeGridInput {
            client_token: "akab-client-token-xxx-xxxxxxxxxxxxxxxx",
            client_secret: &secret,
            access_token: "akab-access-token-xxx-xxxxxxxxxxxxxxxx",
            timestamp: TS,
            nonce: "nonce-xx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
            method,
            scheme: "https",
            host: "akaa-baseurl-xxxxxxxxxxx-xxxxxxxxxxxxx.luna.akamaiapis.net",
            path_and_query: path,
            body,
        })
    }

    #[test]
    fn the_signing_key_matches_the_test_data() {
        assert_eq!(
            signing_key(&secret(), TS),
            "znsRMDBRqTXGJ7Ojip3/h2FGPu3LuoMYWgv9PKEnE/o="
        );
    }

    #[test]
    fn get_root_matches_the_test_data() {
        assert_eq!(
            sign("GET", "/", b""),
            "tL+y4hxyHxgWVD30X3pWnGKHcPzmrIF+LThiAOhMxYU="
        );
    }

    #[test]
    fn get_with_a_query_matches_the_test_data() {
        assert_eq!(
            sign("GET", "/testapi/v1/t1?p1=1&p2=2", b""),
            "hKDH1UlnQySSHjvIcZpDMbQHihTQ0XyVAKZaApabdeA="
        );
    }

    #[test]
    fn post_with_a_body_matches_the_test_data() {
        let body = b"datadatadatadatadatadatadatadata";
        assert_eq!(
            content_hash("POST", body),
            "fDimoYqXOLntG3If/Z0K2aS9I19Pkv9P5OMCoL8lY0w="
        );
        assert_eq!(
            sign("POST", "/testapi/v1/t3", body),
            "hXm4iCxtpN22m4cbZb4lVLW5rhX8Ca82vCFqXzSTPe4="
        );
    }

    #[test]
    fn post_with_an_empty_body_matches_the_test_data() {
        assert_eq!(content_hash("POST", b""), "");
        assert_eq!(
            sign("POST", "/testapi/v1/t6", b""),
            "1gEDxeQGD5GovIkJJGcBaKnZ+VaPtrc4qBUHixjsPCQ="
        );
    }

    #[test]
    fn the_header_carries_tokens_timestamp_nonce_and_signature() {
        let at = "2014-03-21T19:34:21Z".parse().unwrap();
        assert_eq!(timestamp(at), TS);
        let secret = secret();
        let header = authorization(&EdgeGridInput {
            client_token: "ct",
            client_secret: &secret,
            access_token: "at",
            timestamp: TS,
            nonce: "n",
            method: "GET",
            scheme: "https",
            host: "h",
            path_and_query: "/",
            body: b"",
        });
        assert!(header.starts_with(
            "EG1-HMAC-SHA256 client_token=ct;access_token=at;timestamp=20140321T19:34:21+0000;nonce=n;signature="
        ), "{header}");
    }
}
