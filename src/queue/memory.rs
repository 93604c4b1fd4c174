//! In-process queue for a single replica.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
// Keyed by provider names and entry ids, which the service makes: the fast hasher.
use foldhash::HashMap;
use tokio::sync::Notify;

use super::{Delivery, Queue};
use crate::backend::BackendError;
use crate::model::WorkItem;

#[derive(Clone, Default)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    lanes: Mutex<HashMap<String, Lane>>,
    arrived: Notify,
}

#[derive(Default)]
struct Lane {
    next_id: u64,
    ready: VecDeque<Delivery>,
    held: HashMap<String, Held>,
}

struct Held {
    item: WorkItem,
    consumer: String,
    touched: Instant,
}

impl MemoryQueue {
    pub fn enqueue(&self, work: Vec<WorkItem>) {
        if work.is_empty() {
            return;
        }
        let mut lanes = self.inner.lanes.lock().expect("queue lock");
        for item in work {
            let lane = lanes.entry(item.provider.clone()).or_default();
            lane.next_id += 1;
            let id = lane.next_id.to_string();
            lane.ready.push_back(Delivery { id, item });
        }
        drop(lanes);
        self.inner.arrived.notify_waiters();
    }

    fn take(&self, provider: &str, consumer: &str, max: usize) -> Vec<Delivery> {
        let mut lanes = self.inner.lanes.lock().expect("queue lock");
        let Some(lane) = lanes.get_mut(provider) else {
            return Vec::new();
        };
        let n = lane.ready.len().min(max);
        let taken: Vec<Delivery> = lane.ready.drain(..n).collect();
        let now = Instant::now();
        for d in &taken {
            lane.held.insert(
                d.id.clone(),
                Held {
                    item: d.item.clone(),
                    consumer: consumer.to_owned(),
                    touched: now,
                },
            );
        }
        taken
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn claim(
        &self,
        provider: &str,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BackendError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so an enqueue in between is not missed.
            let arrived = self.inner.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let taken = self.take(provider, consumer, max);
            if !taken.is_empty() {
                return Ok(taken);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn reclaim(
        &self,
        provider: &str,
        consumer: &str,
        min_idle: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, BackendError> {
        let mut lanes = self.inner.lanes.lock().expect("queue lock");
        let Some(lane) = lanes.get_mut(provider) else {
            return Ok(Vec::new());
        };
        let now = Instant::now();
        let mut out = Vec::new();
        for (id, held) in lane.held.iter_mut() {
            if out.len() >= max {
                break;
            }
            // As XAUTOCLAIM: this consumer's own untouched work too (work it let go of).
            if now.duration_since(held.touched) >= min_idle {
                held.consumer = consumer.to_owned();
                held.touched = now;
                out.push(Delivery {
                    id: id.clone(),
                    item: held.item.clone(),
                });
            }
        }
        Ok(out)
    }

    async fn keep_alive(
        &self,
        provider: &str,
        consumer: &str,
        ids: &[String],
    ) -> Result<(), BackendError> {
        let mut lanes = self.inner.lanes.lock().expect("queue lock");
        if let Some(lane) = lanes.get_mut(provider) {
            let now = Instant::now();
            for id in ids {
                if let Some(h) = lane.held.get_mut(id).filter(|h| h.consumer == consumer) {
                    h.touched = now;
                }
            }
        }
        Ok(())
    }

    async fn ack(&self, provider: &str, ids: &[String]) -> Result<(), BackendError> {
        let mut lanes = self.inner.lanes.lock().expect("queue lock");
        if let Some(lane) = lanes.get_mut(provider) {
            for id in ids {
                lane.held.remove(id);
            }
        }
        Ok(())
    }

    async fn backlog(&self, provider: &str) -> Result<u64, BackendError> {
        let lanes = self.inner.lanes.lock().expect("queue lock");
        Ok(lanes
            .get(provider)
            .map_or(0, |l| (l.ready.len() + l.held.len()) as u64))
    }
}
