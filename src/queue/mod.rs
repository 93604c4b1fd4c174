//! Pending work per provider: claimed by one replica's dispatcher at a time, acknowledged when
//! done, reclaimed from a replica that stopped acknowledging.

pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;

use crate::backend::BackendError;
use crate::model::WorkItem;

/// A claimed work item; `id` is what `ack` and `keep_alive` take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub id: String,
    pub item: WorkItem,
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// New work for `provider`, waiting up to `wait` for some to arrive.
    async fn claim(
        &self,
        provider: &str,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BackendError>;

    /// Work no consumer (this one included) has touched for `min_idle`: a dead replica's, or
    /// work this one let go of.
    async fn reclaim(
        &self,
        provider: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, BackendError>;

    /// Marks held deliveries as still being worked on, so they are not reclaimed.
    async fn keep_alive(
        &self,
        provider: &str,
        consumer: &str,
        ids: &[String],
    ) -> Result<(), BackendError>;

    async fn ack(&self, provider: &str, ids: &[String]) -> Result<(), BackendError>;

    /// Work items of `provider` not acknowledged yet, on every replica: waiting to be
    /// claimed, or held by a consumer (its targets in a lane, or sent and followed). Read in
    /// constant time per stream, for start estimates.
    async fn backlog(&self, provider: &str) -> Result<u64, BackendError>;
}
