//! Masking of Redis passwords wherever a URL is shown: `check-config`, `Debug`, parse errors.

/// Every `scheme://user:password@` in `text` with the password masked.
pub fn mask_urls_in(text: &str) -> String {
    static URL_PASSWORD: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:@/\s]*:)[^@\s]*@")
            .expect("valid regex")
    });
    URL_PASSWORD.replace_all(text, "${head}***@").into_owned()
}

/// `redis://user:secret@host/` -> `redis://user:***@host/`; a URL that does not parse is
/// masked whole, since it may hold a password anywhere.
pub fn mask_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            // redis-rs also reads a password from the query (`redis+unix:///s.sock?pass=...`).
            if u.query_pairs().any(|(k, _)| k == "pass" || k == "password") {
                let pairs: Vec<(String, String)> = u
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "pass" || k == "password" {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string()
        }
        Err(_) => "***".into(),
    }
}
