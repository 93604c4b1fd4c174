//! When targets not yet sent are estimated to go out: the work waiting ahead of them at each
//! provider, on every replica, spaced by the provider's tightest submit rate. `validate_only`
//! plans use it for a purge not recorded yet; every purge answered while it still has unsent
//! targets carries it, computed when the answer is made.

use foldhash::{HashMap, HashMapExt};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::settings::CoreSettings;
use crate::limiter::Rate;
use crate::model::{PurgeRecord, PurgeState};
use crate::providers::{ProviderHandle, Registry};
use crate::queue::Queue;

/// How long a queue backlog read is reused: answers within it share one read per provider.
const FRESH: Duration = Duration::from_secs(1);

/// The providers' backlogs as every replica sees them: this replica's own counts, plus the
/// queue's (one constant-time read per stream, reused for [`FRESH`]).
pub struct Backlogs {
    queue: Arc<dyn Queue>,
    read: Mutex<HashMap<String, Read>>,
}

/// The last backlog read of one provider.
struct Read {
    /// When it was made; `None` before the first read is back.
    at: Option<Instant>,
    /// `None` when it failed: kept as long, so a backend in trouble is not asked again on
    /// every answer.
    queued: Option<u64>,
    /// A newer read is on its way: answers meanwhile use this one. Under load hundreds of
    /// answers found the read stale at once and each read every shard again (`perf`, Redis
    /// backend: 16% of the service's CPU went to those reads).
    refreshing: bool,
}

/// A backlog read on its way; dropped before it is done, it lets the next answer read.
struct Pending<'a> {
    backlogs: &'a Backlogs,
    provider: &'a str,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut read = self.backlogs.read.lock().expect("backlog lock");
        if let Some(last) = read.get_mut(self.provider) {
            last.refreshing = false;
        }
    }
}

impl Backlogs {
    pub fn new(queue: Arc<dyn Queue>) -> Backlogs {
        Backlogs {
            queue,
            read: Mutex::default(),
        }
    }

    /// Work items of `provider` not acknowledged, every replica's; `None` when the queue
    /// cannot be read (the estimate then counts this replica's work only). One read at a time
    /// per provider: while it runs (at most the backend's command timeout), answers use the
    /// last one.
    async fn queued(&self, provider: &str) -> Option<u64> {
        {
            let mut read = self.read.lock().expect("backlog lock");
            // Until the first read is back, answers count this replica's work only.
            let last = read.entry(provider.to_owned()).or_insert(Read {
                at: None,
                queued: None,
                refreshing: false,
            });
            if last.refreshing || last.at.is_some_and(|at| at.elapsed() < FRESH) {
                return last.queued;
            }
            last.refreshing = true;
        }
        // A caller that gives up (its deadline, a cancelled call) hands the read back.
        let pending = Pending {
            backlogs: self,
            provider,
        };
        let queued = match self.queue.backlog(provider).await {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::debug!(provider, error = %e, "cannot read the queue backlog; estimating from this replica's work");
                None
            }
        };
        let fresh = Read {
            at: Some(Instant::now()),
            queued,
            refreshing: false,
        };
        self.read
            .lock()
            .expect("backlog lock")
            .insert(provider.to_owned(), fresh);
        drop(pending);
        queued
    }

    /// Targets waiting for `h` on every replica: the targets in this replica's lanes, plus
    /// the work items it does not hold (waiting in the queue, or held by another replica),
    /// each counted at the unsent targets per purge this replica's intake has seen lately
    /// (`per_purge` until it has seen one).
    pub async fn waiting(&self, h: &ProviderHandle, per_purge: usize) -> usize {
        let local = h.local();
        let elsewhere = self
            .queued(&h.name)
            .await
            .map_or(0, |q| q.saturating_sub(local.held() as u64));
        let per_purge = local.per_purge().unwrap_or(per_purge.max(1) as f64);
        local.waiting() + (elsewhere as f64 * per_purge).round() as usize
    }
}

/// Seconds between calls under the tightest of `rates`, stretched by the limiter's `margin`
/// as the budget is; zero without a rate.
pub fn call_interval(rates: &[Rate], margin: f64) -> f64 {
    rates
        .iter()
        .filter(|r| r.count > 0)
        .map(|r| r.per.as_secs_f64() / f64::from(r.count))
        .fold(0.0, f64::max)
        * (1.0 + margin.max(0.0))
}

pub fn after(now: DateTime<Utc>, secs: f64) -> DateTime<Utc> {
    now + chrono::Duration::from_std(Duration::from_secs_f64(secs.max(0.0))).unwrap_or_default()
}

/// Seconds from now until a call with `calls_ahead` calls before it goes out at `h`: the
/// linger, then one submit interval per call ahead.
pub fn seconds_to_start(h: &ProviderHandle, settings: &CoreSettings, calls_ahead: usize) -> f64 {
    let interval = call_interval(&h.caps.submit_rates, settings.rate_margin);
    settings.linger.as_secs_f64() + calls_ahead as f64 * interval
}

/// When the next unsent target of `record` is estimated to go out: per provider it still
/// has unsent targets at, the calls ahead are the provider's waiting targets (every
/// replica's, see [`Backlogs::waiting`]) minus its own, over the per-call cap; the earliest
/// over those providers. `None` once nothing is left to send or the purge is finished.
pub async fn queued_start(
    record: &PurgeRecord,
    registry: &Registry,
    backlogs: &Backlogs,
    settings: &CoreSettings,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if !matches!(record.state, PurgeState::Queued | PurgeState::Running) {
        return None;
    }
    let mut own: HashMap<&str, usize> = HashMap::new();
    for u in record.units.iter().filter(|u| u.status.is_unsent()) {
        *own.entry(u.provider.as_str()).or_default() += 1;
    }
    let mut earliest: Option<f64> = None;
    for (name, own) in own {
        let Some(h) = registry.get(name) else {
            continue;
        };
        let ahead = backlogs.waiting(h, own).await.saturating_sub(own);
        let calls_ahead = ahead.div_ceil(h.max_per_call(record.spec.kind));
        let secs = seconds_to_start(h, settings, calls_ahead);
        earliest = Some(earliest.map_or(secs, |e| e.min(secs)));
    }
    earliest.map(|secs| after(now, secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tightest_rate_spaces_the_calls_with_the_margin() {
        let rates = [
            Rate::new(20, Duration::from_secs(1)),
            Rate::new(150, Duration::from_secs(300)),
        ];
        assert!((call_interval(&rates, 0.0) - 2.0).abs() < 1e-9);
        assert!((call_interval(&rates, 0.05) - 2.1).abs() < 1e-9);
        assert_eq!(call_interval(&[], 0.02), 0.0);
    }

    /// A queue whose backlog reads wait to be let through, counted.
    #[derive(Default)]
    struct Held {
        reads: std::sync::atomic::AtomicUsize,
        release: tokio::sync::Notify,
    }

    #[async_trait::async_trait]
    impl Queue for Held {
        async fn claim(
            &self,
            _: &str,
            _: &str,
            _: usize,
            _: Duration,
        ) -> Result<Vec<crate::queue::Delivery>, crate::backend::BackendError> {
            unreachable!("estimates only read the backlog")
        }
        async fn reclaim(
            &self,
            _: &str,
            _: &str,
            _: Duration,
            _: usize,
        ) -> Result<Vec<crate::queue::Delivery>, crate::backend::BackendError> {
            unreachable!("estimates only read the backlog")
        }
        async fn keep_alive(
            &self,
            _: &str,
            _: &str,
            _: &[String],
        ) -> Result<(), crate::backend::BackendError> {
            unreachable!("estimates only read the backlog")
        }
        async fn ack(&self, _: &str, _: &[String]) -> Result<(), crate::backend::BackendError> {
            unreachable!("estimates only read the backlog")
        }
        async fn backlog(&self, _: &str) -> Result<u64, crate::backend::BackendError> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.release.notified().await;
            Ok(7)
        }
    }

    impl Held {
        fn reads(&self) -> usize {
            self.reads.load(std::sync::atomic::Ordering::SeqCst)
        }

        async fn until_reads(&self, n: usize) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.reads() < n {
                assert!(
                    Instant::now() < deadline,
                    "{} reads, waiting for {n}",
                    self.reads()
                );
                tokio::task::yield_now().await;
            }
        }
    }

    #[tokio::test]
    async fn answers_share_one_backlog_read_at_a_time() {
        let queue = Arc::new(Held::default());
        let backlogs = Arc::new(Backlogs::new(queue.clone()));
        let first = {
            let backlogs = backlogs.clone();
            tokio::spawn(async move { backlogs.queued("p").await })
        };
        queue.until_reads(1).await;
        // While it is on its way, answers use what is known (nothing yet) and do not read.
        for _ in 0..50 {
            let answer = tokio::time::timeout(Duration::from_secs(5), backlogs.queued("p")).await;
            assert_eq!(
                answer.ok(),
                Some(None),
                "an answer waited for a second read"
            );
        }
        queue.release.notify_one();
        assert_eq!(first.await.unwrap(), Some(7));
        assert_eq!(backlogs.queued("p").await, Some(7));
        assert_eq!(queue.reads(), 1);
    }

    #[tokio::test]
    async fn a_read_given_up_lets_the_next_answer_read() {
        let queue = Arc::new(Held::default());
        let backlogs = Arc::new(Backlogs::new(queue.clone()));
        {
            let mut abandoned = std::pin::pin!(backlogs.queued("p"));
            assert!(futures::poll!(abandoned.as_mut()).is_pending());
        }
        assert_eq!(queue.reads(), 1);
        let next = {
            let backlogs = backlogs.clone();
            tokio::spawn(async move { backlogs.queued("p").await })
        };
        queue.until_reads(2).await;
        queue.release.notify_one();
        assert_eq!(next.await.unwrap(), Some(7));
    }
}
