//! AWS Signature Version 4, generic over service and region: the canonical request, the string
//! to sign, the derived key and the `Authorization` header, for exactly the headers sent.

use sha2::{Digest, Sha256};

use crate::providers::signing::hmac_sha256 as hmac;

/// What one signature covers. `headers` are the signed headers as sent (names in any case);
/// `host` and `x-amz-date` must be among them.
pub struct SigV4Input<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub region: &'a str,
    pub service: &'a str,
    pub method: &'a str,
    /// The path as sent (already percent-encoded where needed).
    pub path: &'a str,
    /// Query pairs, unencoded.
    pub query: &'a [(&'a str, &'a str)],
    pub headers: &'a [(&'a str, &'a str)],
    /// `YYYYMMDDTHHMMSSZ`, the value of `x-amz-date`.
    pub amz_date: &'a str,
    pub body: &'a [u8],
}

/// RFC 3986 encoding as SigV4 wants it: everything but unreserved characters (and `/` when
/// `keep_slash`).
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The lowercase, sorted signed header names, `;`-joined.
pub fn signed_headers(headers: &[(&str, &str)]) -> String {
    let mut names: Vec<String> = headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    names.join(";")
}

/// The canonical request of `input`.
pub fn canonical_request(input: &SigV4Input<'_>) -> String {
    let mut query: Vec<(String, String)> = input
        .query
        .iter()
        .map(|(k, v)| (encode(k, false), encode(v, false)))
        .collect();
    query.sort();
    let query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers: Vec<(String, String)> = input
        .headers
        .iter()
        .map(|(n, v)| {
            let value = v.split_whitespace().collect::<Vec<_>>().join(" ");
            (n.to_ascii_lowercase(), value)
        })
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let path = if input.path.is_empty() {
        "/".to_owned()
    } else {
        encode(input.path, true)
    };
    format!(
        "{}\n{path}\n{query}\n{canonical_headers}\n{}\n{}",
        input.method,
        signed_headers(input.headers),
        hex::encode(Sha256::digest(input.body))
    )
}

/// `yyyymmdd/region/service/aws4_request`.
pub fn scope(input: &SigV4Input<'_>) -> String {
    format!(
        "{}/{}/{}/aws4_request",
        &input.amz_date[..8.min(input.amz_date.len())],
        input.region,
        input.service
    )
}

/// The hex signature of `input`.
pub fn signature(input: &SigV4Input<'_>) -> String {
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{}\n{}",
        input.amz_date,
        scope(input),
        hex::encode(Sha256::digest(canonical_request(input).as_bytes()))
    );
    let date = &input.amz_date[..8.min(input.amz_date.len())];
    let k_date = hmac(
        format!("AWS4{}", input.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    let k_region = hmac(&k_date, input.region.as_bytes());
    let k_service = hmac(&k_region, input.service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    hex::encode(hmac(&k_signing, to_sign.as_bytes()))
}

/// The `Authorization` header value.
pub fn authorization(input: &SigV4Input<'_>) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={}",
        input.access_key_id,
        scope(input),
        signed_headers(input.headers),
        signature(input)
    )
}

/// `x-amz-date` of a time.
pub fn amz_date(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y%m%dT%H%M%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";

    fn suite(method: &str) -> String {
        let headers = [("Host", "example.amazonaws.com"), ("X-Amz-Date", DATE)];
        signature(&SigV4Input {
            access_key_id: AKID,
            secret_access_key: SECRET,
            region: "us-east-1",
            service: "service",
            method,
            path: "/",
            query: &[],
            headers: &headers,
            amz_date: DATE,
            body: b"",
        })
    }

    #[test]
    fn matches_the_sigv4_suite_get_vanilla() {
        assert_eq!(
            suite("GET"),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn matches_the_sigv4_suite_post_vanilla() {
        assert_eq!(
            suite("POST"),
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"
        );
    }

    #[test]
    fn matches_the_cloudfront_shaped_vector() {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<InvalidationBatch xmlns=\"http://cloudfront.amazonaws.com/doc/2020-05-31/\"><Paths><Quantity>2</Quantity><Items><Path>/index.html</Path><Path>/css/*</Path></Items></Paths><CallerReference>purge-0001</CallerReference></InvalidationBatch>";
        assert_eq!(
            hex::encode(Sha256::digest(body.as_bytes())),
            "5d451bc16c182bce9f570616fa148442d05247e98304ead46c794bd18132f0cd"
        );
        let headers = [
            ("Content-Type", "text/xml"),
            ("Host", "cloudfront.amazonaws.com"),
            ("X-Amz-Date", DATE),
        ];
        let input = SigV4Input {
            access_key_id: AKID,
            secret_access_key: SECRET,
            region: "us-east-1",
            service: "cloudfront",
            method: "POST",
            path: "/2020-05-31/distribution/EDFDVBD6EXAMPLE/invalidation",
            query: &[],
            headers: &headers,
            amz_date: DATE,
            body: body.as_bytes(),
        };
        assert_eq!(
            signature(&input),
            "4034848db18f41da5e9643fb34a25b83eac3544afeb908e784f7d6b7edecd038"
        );
        assert_eq!(
            authorization(&input),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/cloudfront/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=4034848db18f41da5e9643fb34a25b83eac3544afeb908e784f7d6b7edecd038"
        );
    }

    #[test]
    fn query_pairs_are_encoded_and_sorted() {
        let headers = [("host", "h"), ("x-amz-date", DATE)];
        let input = SigV4Input {
            access_key_id: AKID,
            secret_access_key: SECRET,
            region: "us-east-1",
            service: "s",
            method: "GET",
            path: "/a b",
            query: &[("z", "1"), ("a", "x y")],
            headers: &headers,
            amz_date: DATE,
            body: b"",
        };
        let canonical = canonical_request(&input);
        assert!(
            canonical.starts_with("GET\n/a%20b\na=x%20y&z=1\nhost:h\n"),
            "{canonical}"
        );
    }
}
