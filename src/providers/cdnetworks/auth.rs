//! CDNetworks request authentication, shared by CDN Pro and Content Management: the legacy API
//! key scheme (Date + Basic) and AK/SK (`CNC-HMAC-SHA256`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::providers::signing::hmac_sha256;

/// The Basic password of the API key scheme: base64(HMAC-SHA1(api key, Date header value)).
pub fn api_key_password(api_key: &str, date: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(api_key.as_bytes()).expect("any key length");
    mac.update(date.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The `Authorization` header of the API key scheme; send `date` as the `Date` header.
pub fn api_key_authorization(username: &str, api_key: &str, date: &str) -> String {
    let password = api_key_password(api_key, date);
    format!(
        "Basic {}",
        STANDARD.encode(format!("{username}:{password}"))
    )
}

/// What one AK/SK signature covers.
pub struct AkSkInput<'a> {
    pub access_key: &'a str,
    pub secret_key: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// The query string without `?`, empty when there is none.
    pub query: &'a str,
    pub content_type: &'a str,
    pub host: &'a str,
    pub timestamp: i64,
    pub body: &'a [u8],
}

/// The canonical request the official SDK (`AkSkAuth`) signs: the query string only for
/// non-POST requests and URL-decoded first, every signed header value lowercased, the body
/// hashed only for POST and PUT (an empty string's hash otherwise).
pub fn aksk_canonical_request(input: &AkSkInput<'_>) -> String {
    let method = input.method.to_ascii_uppercase();
    let query = if method == "POST" {
        String::new()
    } else {
        percent_encoding::percent_decode_str(input.query)
            .decode_utf8_lossy()
            .into_owned()
    };
    let body: &[u8] = if matches!(method.as_str(), "POST" | "PUT") {
        input.body
    } else {
        b""
    };
    format!(
        "{method}\n{}\n{query}\ncontent-type:{}\nhost:{}\n\ncontent-type;host\n{}",
        input.path,
        input.content_type.to_ascii_lowercase(),
        input.host.to_ascii_lowercase(),
        hex::encode(Sha256::digest(body))
    )
}

/// The hex `CNC-HMAC-SHA256` signature, with `content-type;host` signed.
pub fn aksk_signature(input: &AkSkInput<'_>) -> String {
    let canonical = aksk_canonical_request(input);
    let to_sign = format!(
        "CNC-HMAC-SHA256\n{}\n{}",
        input.timestamp,
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    hex::encode(hmac_sha256(input.secret_key.as_bytes(), to_sign.as_bytes()))
}

/// The `Authorization` header of the AK/SK scheme.
pub fn aksk_authorization(input: &AkSkInput<'_>) -> String {
    format!(
        "CNC-HMAC-SHA256 Credential={}, SignedHeaders=content-type;host, Signature={}",
        input.access_key,
        aksk_signature(input)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_matches_the_documented_vector() {
        let date = "Thu, 17 May 2012 19:37:58 GMT";
        assert_eq!(
            api_key_password("exampleapikey", date),
            "loNd9ozly+YJCqF04IBwbjojc2c="
        );
        let header = api_key_authorization("exampleuser", "exampleapikey", date);
        let decoded = STANDARD
            .decode(header.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(
            String::from_utf8(decoded).unwrap(),
            "exampleuser:loNd9ozly+YJCqF04IBwbjojc2c="
        );
    }

    fn vector_input(content_type: &str) -> AkSkInput<'_> {
        AkSkInput {
            access_key: "EXAMPLEACCESSKEY0123",
            secret_key: "EXAMPLESECRETKEY0123456789",
            method: "POST",
            path: "/api/content/regular-url/purge",
            query: "",
            content_type,
            host: "api.cdnetworks.com",
            timestamp: 1700000000,
            body: br#"{"urlRegulars": ["http://www.example.com/static/(.*).png"]}"#,
        }
    }

    #[test]
    fn aksk_matches_the_documented_vector() {
        let input = vector_input("application/json");
        assert_eq!(
            aksk_signature(&input),
            "330d39ea99012f075f21bcbfbf74381629b147249f37c51af1593e1dd6bea525"
        );
        assert_eq!(
            aksk_authorization(&input),
            "CNC-HMAC-SHA256 Credential=EXAMPLEACCESSKEY0123, SignedHeaders=content-type;host, Signature=330d39ea99012f075f21bcbfbf74381629b147249f37c51af1593e1dd6bea525"
        );
    }

    #[test]
    fn aksk_lowercases_signed_header_values_and_covers_time() {
        let base = aksk_signature(&vector_input("application/json"));
        assert_eq!(aksk_signature(&vector_input("Application/JSON")), base);
        let mut host = vector_input("application/json");
        host.host = "API.CDNetworks.com";
        assert_eq!(aksk_signature(&host), base);
        let mut later = vector_input("application/json");
        later.timestamp += 1;
        assert_ne!(aksk_signature(&later), base);
    }

    #[test]
    fn aksk_post_signs_no_query() {
        let base = aksk_signature(&vector_input("application/json"));
        let mut query = vector_input("application/json");
        query.query = "target=production";
        assert_eq!(aksk_signature(&query), base);
    }

    fn get_input(query: &str) -> AkSkInput<'_> {
        AkSkInput {
            access_key: "EXAMPLEACCESSKEY0123",
            secret_key: "EXAMPLESECRETKEY0123456789",
            method: "GET",
            path: "/cdn/purges/purgeTokens",
            query,
            content_type: "application/json",
            host: "api.cdnetworks.com",
            timestamp: 1700000000,
            body: b"{}",
        }
    }

    #[test]
    fn aksk_get_signs_the_decoded_query_and_no_body() {
        let input = get_input("target=production&name=a%20b%2Fc");
        assert_eq!(
            aksk_canonical_request(&input),
            "GET\n/cdn/purges/purgeTokens\ntarget=production&name=a b/c\n\
             content-type:application/json\nhost:api.cdnetworks.com\n\ncontent-type;host\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // Vector computed independently (Python hashlib/hmac on the canonical request above).
        assert_eq!(aksk_signature(&input), GET_VECTOR);
        // The body of a GET is not signed; an encoded and a decoded query sign the same.
        let mut no_body = get_input("target=production&name=a b/c");
        no_body.body = b"";
        assert_eq!(aksk_signature(&no_body), GET_VECTOR);
        assert_ne!(aksk_signature(&get_input("target=staging")), GET_VECTOR);
    }

    const GET_VECTOR: &str = "2059cf917f118cdedb94a1c1639cb0b19f31ddd4108172d3c5998259f5052b53";
}
