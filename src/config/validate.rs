//! Config validation: small checks per section, each recording its problems under the field's
//! path, so one run reports every problem at once, grouped by section.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::{Backend, Config, ConfigError, ProviderConfig};
use crate::limiter::Rate;
use crate::model::PurgeKind;
use crate::settings::ConfigProblems;

impl Config {
    /// Checks what types alone cannot; `Err(ConfigError::Problems)` lists every problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = ConfigProblems::default();
        self.check_server(&mut p);
        self.check_store(&mut p);
        self.check_dispatch(&mut p);
        self.check_telemetry(&mut p);
        let names = self.check_providers(&mut p);
        let names = self.check_groups(&mut p, names);
        self.check_callers(&mut p, &names);
        p.into_result()
    }

    fn check_server(&self, p: &mut ConfigProblems) {
        let s = &self.server;
        if s.record_retention < s.idempotency_retention {
            p.push(
                "server.record_retention",
                format!(
                    "({:?}) must be at least server.idempotency_retention ({:?}): a retry must find the purge its key names",
                    s.record_retention, s.idempotency_retention
                ),
            );
        }
        p.check("server.request_timeout", positive(s.request_timeout));
        p.check("server.watch_resync", positive(s.watch_resync));
        p.check("server.max_targets", at_least_one(s.max_targets));
        if let Some(rate) = s.caller_rate {
            p.check("server.caller_rate", rate_ok(&rate));
        }
        p.check("server.max_message_size", at_least_one(s.max_message_size));
        p.check(
            "server.max_streams_per_connection",
            at_least_one(s.max_streams_per_connection as usize),
        );
        if let Some(tls) = &s.tls {
            p.check(
                "server.tls.handshake_timeout",
                positive(tls.handshake_timeout),
            );
            p.check("server.tls.reload_interval", positive(tls.reload_interval));
        }
    }

    fn check_store(&self, p: &mut ConfigProblems) {
        let s = &self.store;
        p.check("store.timeout", positive(s.timeout));
        if s.backend == Backend::Redis && s.url.is_none() && s.cluster_urls.is_empty() {
            p.push("store.backend", "\"redis\" needs url or cluster_urls");
        }
        if s.password_env.is_some() && s.password_file.is_some() {
            p.push(
                "store.password_env",
                "set password_env or password_file, not both",
            );
        }
        if s.tls_cert_file.is_some() != s.tls_key_file.is_some() {
            p.push(
                "store.tls_cert_file",
                "a client certificate needs both tls_cert_file and tls_key_file",
            );
        }
    }

    fn check_dispatch(&self, p: &mut ConfigProblems) {
        let d = &self.dispatch;
        p.check("dispatch.poll_interval", positive(d.poll_interval));
        p.check("dispatch.reclaim_idle", positive(d.reclaim_idle));
        p.check("dispatch.max_in_flight", at_least_one(d.max_in_flight));
        p.check("dispatch.claim_batch", at_least_one(d.claim_batch));
    }

    fn check_telemetry(&self, p: &mut ConfigProblems) {
        if let Some(admin) = self.admin.listen
            && admin == self.server.listen
        {
            p.push(
                "admin.listen",
                format!("{admin} is server.listen too; give the admin listener its own port"),
            );
        }
        let t = &self.telemetry;
        if let Some(endpoint) = &t.otlp_endpoint
            && !endpoint.starts_with("http://")
            && !endpoint.starts_with("https://")
        {
            p.push(
                "telemetry.otlp_endpoint",
                format!("{endpoint:?} must be an http:// or https:// OTLP/gRPC endpoint"),
            );
        }
        if t.otlp_ca_file.is_some()
            && !t
                .otlp_endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("https://"))
        {
            p.push(
                "telemetry.otlp_ca_file",
                "only used with an https:// telemetry.otlp_endpoint",
            );
        }
    }

    /// Checks every provider; returns the names taken.
    fn check_providers(&self, p: &mut ConfigProblems) -> HashSet<&str> {
        let mut names = HashSet::new();
        for pc in &self.providers {
            if pc.name.is_empty() || !names.insert(pc.name.as_str()) {
                p.push(
                    "providers",
                    format!("duplicate or empty name {:?}", pc.name),
                );
            }
            let at = format!("providers.{}.limits", pc.name);
            if pc
                .limits
                .submit
                .iter()
                .chain(&pc.limits.status)
                .flatten()
                .any(|rate| rate_ok(rate).is_err())
            {
                p.push(&at, "rates need count and per > 0");
            }
            if pc
                .limits
                .account
                .as_deref()
                .is_some_and(|a| a.trim().is_empty())
            {
                p.push(format!("{at}.account"), "must not be empty");
            }
            for (kind, cap) in &pc.limits.max_per_call {
                if *cap == 0 {
                    p.push(
                        format!("{at}.max_per_call.{kind}"),
                        "must be at least 1, got 0",
                    );
                }
                if PurgeKind::parse(kind).is_none() {
                    p.push(
                        format!("{at}.max_per_call"),
                        format!("unknown kind {kind:?}"),
                    );
                }
            }
        }
        self.check_shared_accounts(p);
        names
    }

    /// Providers naming one account share its budgets: they must agree on them.
    fn check_shared_accounts(&self, p: &mut ConfigProblems) {
        let mut accounts: BTreeMap<&str, &ProviderConfig> = BTreeMap::new();
        for pc in &self.providers {
            let Some(account) = pc.limits.account.as_deref() else {
                continue;
            };
            let Some(first) = accounts.insert(account, pc) else {
                continue;
            };
            let same_type =
                std::mem::discriminant(&first.settings) == std::mem::discriminant(&pc.settings);
            if !same_type
                || first.limits.submit != pc.limits.submit
                || first.limits.status != pc.limits.status
            {
                p.push(
                    format!("providers.{}.limits.account", pc.name),
                    format!(
                        "{account:?} is also the account of provider {:?}; providers sharing an account need the same type and the same limits.submit and limits.status",
                        first.name
                    ),
                );
            }
        }
    }

    /// Checks every group; returns the names of providers and groups.
    fn check_groups<'a>(
        &'a self,
        p: &mut ConfigProblems,
        mut names: HashSet<&'a str>,
    ) -> HashSet<&'a str> {
        for g in &self.groups {
            if !names.insert(g.name.as_str()) {
                p.push("groups", format!("name {:?} is already used", g.name));
            }
            if g.providers.is_empty() {
                p.push(format!("groups.{}", g.name), "needs at least one provider");
            }
            for m in g
                .providers
                .iter()
                .filter(|m| !self.providers.iter().any(|pc| &pc.name == *m))
            {
                p.push(
                    format!("groups.{}", g.name),
                    format!("unknown provider {m:?}"),
                );
            }
        }
        names
    }

    fn check_callers(&self, p: &mut ConfigProblems, names: &HashSet<&str>) {
        let mut callers = HashSet::new();
        let mut sans = HashSet::new();
        for c in &self.callers {
            if !callers.insert(c.name.as_str()) {
                p.push("callers", format!("duplicate name {:?}", c.name));
            }
            if !c.has_token() && c.cert_sans.is_empty() {
                p.push(
                    format!("callers.{}", c.name),
                    "set token_env, token_file or cert_sans: how else would it prove who it is?",
                );
            }
            let client_ca = self
                .server
                .tls
                .as_ref()
                .and_then(|t| t.client_ca_file.as_ref());
            if !c.cert_sans.is_empty() && client_ca.is_none() {
                p.push(
                    format!("callers.{}.cert_sans", c.name),
                    "client certificates are only asked for with server.tls.client_ca_file",
                );
            }
            for san in &c.cert_sans {
                if !sans.insert(san.to_ascii_lowercase()) {
                    p.push(
                        format!("callers.{}.cert_sans", c.name),
                        format!("{san:?} already names another caller"),
                    );
                }
            }
            for unknown in c
                .providers
                .iter()
                .flatten()
                .filter(|p| !names.contains(p.as_str()))
            {
                p.push(
                    format!("callers.{}.providers", c.name),
                    format!("unknown provider or group {unknown:?}"),
                );
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("must be more than 0")]
struct NotPositive;

fn positive(d: Duration) -> Result<(), NotPositive> {
    if d.is_zero() {
        Err(NotPositive)
    } else {
        Ok(())
    }
}

fn at_least_one(n: usize) -> Result<(), NotPositive> {
    if n == 0 { Err(NotPositive) } else { Ok(()) }
}

#[derive(Debug, thiserror::Error)]
#[error("count and per must be > 0")]
struct EmptyRate;

fn rate_ok(rate: &Rate) -> Result<(), EmptyRate> {
    if rate.count == 0 || rate.per.is_zero() {
        Err(EmptyRate)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(toml_text: &str) -> Vec<(String, String)> {
        let c: Config = toml::from_str(toml_text).expect("parses");
        match c.validate() {
            Ok(()) => Vec::new(),
            Err(ConfigError::Problems(p)) => p
                .iter()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect(),
            Err(e) => panic!("not a list of problems: {e}"),
        }
    }

    #[test]
    fn every_problem_is_reported_at_once_grouped_by_section() {
        let text = "[server]\nmax_targets = 0\nrecord_retention = \"1h\"\nidempotency_retention = \"2h\"\n\
             [store]\nbackend = \"redis\"\ntimeout = \"0s\"\n\
             [dispatch]\nclaim_batch = 0\n\
             [[providers]]\nname = \"a\"\ntype = \"sandbox\"\nlimits = { max_per_call = { URL = 0, NOPE = 1 } }\n\
             [[groups]]\nname = \"g\"\nproviders = [\"a\", \"x\", \"y\"]\n\
             [[callers]]\nname = \"c\"\ntoken_env = \"T\"\nproviders = [\"z\"]\n";
        let found = problems(text);
        let paths: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "server.record_retention",
                "server.max_targets",
                "store.timeout",
                "store.backend",
                "dispatch.claim_batch",
                "providers.a.limits.max_per_call",
                "providers.a.limits.max_per_call.URL",
                "groups.g",
                "groups.g",
                "callers.c.providers",
            ]
        );
        assert_eq!(found[1].1, "must be more than 0");
        assert_eq!(found[8].1, "unknown provider \"y\"");

        let c: Config = toml::from_str(text).unwrap();
        let shown = c.validate().unwrap_err().to_string();
        assert!(
            shown.starts_with("invalid config: 10 problems\n[server]\n  server.record_retention: "),
            "{shown}"
        );
        assert!(
            shown.contains("\n[store]\n  store.timeout: must be more than 0\n  store.backend: \"redis\" needs url or cluster_urls\n[dispatch]\n"),
            "{shown}"
        );
    }

    #[test]
    fn a_valid_config_has_no_problem() {
        assert!(problems("").is_empty());
        assert!(problems("[server]\ncaller_rate = { count = 1, per = \"1s\" }").is_empty());
        assert_eq!(
            problems("[server]\ncaller_rate = { count = 0, per = \"1s\" }"),
            [(
                "server.caller_rate".to_owned(),
                "count and per must be > 0".to_owned()
            )]
        );
    }
}
