//! TC3-HMAC-SHA256 request signing for Tencent Cloud APIs (EdgeOne is service `teo`).

use sha2::{Digest, Sha256};

use crate::providers::signing::hmac_sha256 as hmac;

/// What one signature covers.
pub struct SignInput<'a> {
    pub secret_id: &'a str,
    pub secret_key: &'a str,
    pub service: &'a str,
    pub host: &'a str,
    pub content_type: &'a str,
    pub timestamp: i64,
    pub body: &'a [u8],
}

/// The UTC date (YYYY-MM-DD) of a Unix timestamp, part of the credential scope.
pub fn utc_date(timestamp: i64) -> String {
    chrono::DateTime::from_timestamp(timestamp, 0)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// The hex signature of a POST to `/` with the headers `content-type;host` signed.
pub fn signature(input: &SignInput<'_>) -> String {
    let canonical = format!(
        "POST\n/\n\ncontent-type:{}\nhost:{}\n\ncontent-type;host\n{}",
        input.content_type,
        input.host,
        hex::encode(Sha256::digest(input.body))
    );
    let date = utc_date(input.timestamp);
    let scope = format!("{date}/{}/tc3_request", input.service);
    let to_sign = format!(
        "TC3-HMAC-SHA256\n{}\n{scope}\n{}",
        input.timestamp,
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k_date = hmac(
        format!("TC3{}", input.secret_key).as_bytes(),
        date.as_bytes(),
    );
    let k_service = hmac(&k_date, input.service.as_bytes());
    let k_signing = hmac(&k_service, b"tc3_request");
    hex::encode(hmac(&k_signing, to_sign.as_bytes()))
}

/// The `Authorization` header value.
pub fn authorization(input: &SignInput<'_>) -> String {
    format!(
        "TC3-HMAC-SHA256 Credential={}/{}/{}/tc3_request, SignedHeaders=content-type;host, Signature={}",
        input.secret_id,
        utc_date(input.timestamp),
        input.service,
        signature(input)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE";
    const KEY: &str = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE";

    #[test]
    fn matches_the_official_cvm_vector() {
        let body = r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;
        let input = SignInput {
            secret_id: ID,
            secret_key: KEY,
            service: "cvm",
            host: "cvm.tencentcloudapi.com",
            content_type: "application/json; charset=utf-8",
            timestamp: 1551113065,
            body: body.as_bytes(),
        };
        assert_eq!(
            signature(&input),
            "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
        assert!(authorization(&input).starts_with(
            "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, SignedHeaders=content-type;host, Signature=72e4"
        ));
    }

    #[test]
    fn matches_the_sdk_teo_vector() {
        let body = r#"{"ZoneId": "zone-2o1xvpmq7nn3", "Type": "purge_url", "Method": "invalidate", "Targets": ["https://www.example.com/a.jpg", "https://www.example.com/b.css"]}"#;
        let input = SignInput {
            secret_id: ID,
            secret_key: KEY,
            service: "teo",
            host: "teo.tencentcloudapi.com",
            content_type: "application/json",
            timestamp: 1700000000,
            body: body.as_bytes(),
        };
        assert_eq!(utc_date(1700000000), "2023-11-14");
        assert_eq!(
            signature(&input),
            "616e3aa44bd7b1b16c7ffb808f4013b693059df82dff4bd06b14ae047c43e372"
        );
    }
}
