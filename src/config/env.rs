//! The `PURGE_*` environment overlay: `PURGE_SERVER__LISTEN=...` sets `server.listen` in the
//! TOML table before it is typed; array items go by index (`PURGE_PROVIDERS__0__ZONE_ID`).

use crate::settings::{ConfigError, ConfigProblems};

/// The top-level tables of the config, the first part of a `PURGE_..__..` variable.
pub const SECTIONS: &[&str] = &[
    "server",
    "store",
    "dispatch",
    "telemetry",
    "admin",
    "providers",
    "groups",
    "callers",
];

/// Why one variable cannot be placed in the table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlaceError {
    #[error("no config section {section:?}; sections are {}", SECTIONS.join(", "))]
    UnknownSection { section: String },
    #[error("{0:?} is not an index")]
    NotAnIndex(String),
    #[error("index {0} is too large")]
    IndexTooLarge(usize),
    #[error("{0:?} is below a plain value")]
    BelowPlainValue(String),
}

/// Applies every `PURGE_<SECTION>__...` variable of `env`; values parse as TOML when they can
/// (`100`, `true`, `["a"]`), as strings otherwise. Every bad variable is reported at once.
pub fn overlay(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    // Only `PURGE_<SECTION>` and `PURGE_<SECTION>__...` are ours: Kubernetes adds
    // `PURGE_SERVICE_HOST`-style variables for a Service named `purge...`, which must not stop
    // the process from starting. A `__` path under an unknown section is a typo: an error.
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| {
            let Some(rest) = k.strip_prefix("PURGE_") else {
                return false;
            };
            let section = rest.split("__").next().unwrap_or("").to_ascii_lowercase();
            rest.contains("__") || SECTIONS.contains(&section.as_str())
        })
        .collect();
    vars.sort();
    let mut problems = ConfigProblems::default();
    for (key, value) in vars {
        let path: Vec<String> = key["PURGE_".len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        if let Err(e) = set_path(table, &path, value) {
            problems.push(format!("env.{key}"), e.to_string());
        }
    }
    problems.into_result()
}

fn set_path(
    table: &mut toml::Table,
    path: &[String],
    value: toml::Value,
) -> Result<(), PlaceError> {
    if !SECTIONS.contains(&path[0].as_str()) {
        return Err(PlaceError::UnknownSection {
            section: path[0].clone(),
        });
    }
    let mut root = toml::Value::Table(std::mem::take(table));
    let placed = place(&mut root, path, value);
    if let toml::Value::Table(t) = root {
        *table = t;
    }
    placed
}

/// Puts `value` at `path` below `node`, making the tables and arrays on the way: a numeric
/// segment is an array index, so `PROVIDERS__0__NAME` works without a config file too.
fn place(node: &mut toml::Value, path: &[String], value: toml::Value) -> Result<(), PlaceError> {
    let Some((seg, rest)) = path.split_first() else {
        *node = value;
        return Ok(());
    };
    let fresh = || match rest.first() {
        Some(next) if next.parse::<usize>().is_ok() => toml::Value::Array(Vec::new()),
        _ => toml::Value::Table(toml::Table::new()),
    };
    match node {
        toml::Value::Table(t) => {
            let child = t.entry(seg.clone()).or_insert_with(fresh);
            place(child, rest, value)
        }
        toml::Value::Array(items) => {
            let i: usize = seg
                .parse()
                .map_err(|_| PlaceError::NotAnIndex(seg.clone()))?;
            if i >= 256 {
                return Err(PlaceError::IndexTooLarge(i));
            }
            while items.len() <= i {
                items.push(fresh());
            }
            place(&mut items[i], rest, value)
        }
        _ => Err(PlaceError::BelowPlainValue(seg.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_bad_variable_is_reported_by_name() {
        let mut table = toml::Table::new();
        let err = overlay(
            &mut table,
            vars(&[
                ("PURGE_SERVR__LISTEN", "0.0.0.0:1"),
                ("PURGE_SERVER__LISTEN", "0.0.0.0:2"),
                ("PURGE_SERVER__LISTEN__PORT", "3"),
                ("PURGE_PROVIDERS__0__NAME", "a"),
                ("PURGE_PROVIDERS__999__NAME", "b"),
            ]),
        )
        .unwrap_err();
        let text = err.to_string();
        for part in [
            "env.PURGE_SERVR__LISTEN: no config section \"servr\"",
            "env.PURGE_SERVER__LISTEN__PORT: \"port\" is below a plain value",
            "env.PURGE_PROVIDERS__999__NAME: index 999 is too large",
        ] {
            assert!(text.contains(part), "{part} in {text}");
        }
        assert_eq!(table["server"]["listen"].as_str(), Some("0.0.0.0:2"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Random variables never panic the overlay, and every refusal names its variable.
        #[test]
        fn random_variables_never_panic_and_refusals_name_the_variable(
            vars in proptest::collection::vec(
                (
                    proptest::prop_oneof![
                        "PURGE_(SERVER|STORE|PROVIDERS|GROUPS|CALLERS|NOPE)(__[A-Z0-9_]{0,8}){0,4}",
                        "PURGE_[A-Z0-9_]{0,20}",
                        proptest::prelude::any::<String>(),
                    ],
                    proptest::prop_oneof![
                        "[0-9]{1,25}",
                        "\\[[a-z0-9\", \"]{0,20}\\]",
                        proptest::prelude::any::<String>(),
                    ],
                ),
                0..8,
            )
        ) {
            let mut table = toml::Table::new();
            match overlay(&mut table, vars.clone()) {
                Ok(()) => {}
                Err(ConfigError::Problems(problems)) => {
                    for (path, message) in problems.iter() {
                        let var = path.strip_prefix("env.").unwrap_or(path);
                        proptest::prop_assert!(
                            vars.iter().any(|(k, _)| k == var),
                            "{path}: {message} names no variable"
                        );
                    }
                }
                Err(other) => proptest::prop_assert!(false, "not a list of problems: {other}"),
            }
        }
    }
}
