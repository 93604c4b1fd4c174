//! CDNetworks request authentication, shared by CDN Pro and Content Management: the legacy API
//! key scheme (Date + Basic) and AK/SK (`CNC-HMAC-SHA256`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

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

/// The hex `CNC-HMAC-SHA256` signature, with `content-type;host` signed.
pub fn aksk_signature(input: &AkSkInput<'_>) -> String {
    let canonical = format!(
        "{}\n{}\n{}\ncontent-type:{}\nhost:{}\n\ncontent-type;host\n{}",
        input.method,
        input.path,
        input.query,
        input.content_type.to_ascii_lowercase(),
        input.host,
        hex::encode(Sha256::digest(input.body))
    );
    let to_sign = format!(
        "CNC-HMAC-SHA256\n{}\n{}",
        input.timestamp,
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut mac =
        Hmac::<Sha256>::new_from_slice(input.secret_key.as_bytes()).expect("any key length");
    mac.update(to_sign.as_bytes());
    hex::encode(mac.finalize().into_bytes())
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
    fn aksk_lowercases_the_signed_content_type_and_covers_time_and_query() {
        let base = aksk_signature(&vector_input("application/json"));
        assert_eq!(aksk_signature(&vector_input("Application/JSON")), base);
        let mut later = vector_input("application/json");
        later.timestamp += 1;
        assert_ne!(aksk_signature(&later), base);
        let mut query = vector_input("application/json");
        query.query = "target=production";
        assert_ne!(aksk_signature(&query), base);
    }
}
