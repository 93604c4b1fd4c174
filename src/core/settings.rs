//! What the use cases are configured with, read by the service and by plan estimates.

use std::time::Duration;

use super::validate::Limits;
use crate::limiter::Rate;

/// Settings of the use cases, from the server configuration.
#[derive(Clone, Debug)]
pub struct CoreSettings {
    pub limits: Limits,
    pub idempotency_retention: Duration,
    pub caller_rate: Option<Rate>,
    /// How often a watcher re-reads the record even without a wake-up.
    pub watch_resync: Duration,
    /// The dispatcher's linger and first poll delay, for plan estimates.
    pub linger: Duration,
    pub poll_interval: Duration,
    /// How much the budget stretches provider rates, for estimates.
    pub rate_margin: f64,
}
