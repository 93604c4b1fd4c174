//! Routes the store's change wake-ups to the watchers of each purge: one subscription per
//! replica, one cheap `watch` channel per watched purge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
pub struct WatchHub {
    senders: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
}

impl WatchHub {
    /// A receiver that changes whenever purge `id` may have changed; dropping the last one
    /// for `id` forgets `id`.
    pub fn subscribe(&self, id: &str) -> Subscription {
        let mut senders = self.senders.lock().expect("hub lock");
        let rx = senders
            .entry(id.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Subscription {
            rx,
            hub: self.clone(),
            id: id.to_owned(),
        }
    }

    /// Purges with at least one watcher on this replica.
    #[cfg(test)]
    fn watched(&self) -> usize {
        self.senders.lock().expect("hub lock").len()
    }

    /// Wakes the watchers of `ids`, separated by spaces.
    fn wake(&self, ids: &str) {
        let mut senders = self.senders.lock().expect("hub lock");
        if senders.is_empty() {
            return;
        }
        for id in ids.split(' ') {
            if let Some(tx) = senders.get(id) {
                if tx.receiver_count() == 0 {
                    senders.remove(id);
                } else {
                    tx.send_modify(|n| *n += 1);
                }
            }
        }
    }

    fn wake_all(&self) {
        let mut senders = self.senders.lock().expect("hub lock");
        senders.retain(|_, tx| tx.receiver_count() > 0);
        for tx in senders.values() {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// Forwards `events` until `stop`; a lagging subscription wakes everyone, since watchers
    /// re-read the record anyway.
    pub async fn run(self, mut events: broadcast::Receiver<String>, stop: CancellationToken) {
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                e = events.recv() => e,
            };
            match event {
                Ok(ids) => self.wake(&ids),
                Err(broadcast::error::RecvError::Lagged(_)) => self.wake_all(),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// One watcher's wake-ups for one purge.
pub struct Subscription {
    rx: watch::Receiver<u64>,
    hub: WatchHub,
    id: String,
}

impl Subscription {
    /// The purge watched.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Resolves at the next wake-up.
    pub async fn changed(&mut self) {
        // The sender lives in the hub for as long as a receiver does; an error cannot happen
        // but would only mean "re-read", which is what a wake-up means too.
        let _ = self.rx.changed().await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut senders = self.hub.senders.lock().expect("hub lock");
        // This receiver is still counted while it is being dropped.
        if senders
            .get(&self.id)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            senders.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_subscription_dropped_forgets_the_purge() {
        let hub = WatchHub::default();
        let a = hub.subscribe("p1");
        let b = hub.subscribe("p1");
        assert_eq!(hub.watched(), 1);
        drop(a);
        assert_eq!(hub.watched(), 1);
        drop(b);
        assert_eq!(hub.watched(), 0);
    }

    #[tokio::test]
    async fn one_wake_up_with_several_ids_wakes_the_watchers_of_each() {
        let hub = WatchHub::default();
        let mut p1 = hub.subscribe("p1");
        let mut p3 = hub.subscribe("p3");
        let p4 = hub.subscribe("p4");
        hub.wake("p1 p2 p3");
        for (id, sub) in [("p1", &mut p1), ("p3", &mut p3)] {
            tokio::time::timeout(std::time::Duration::from_secs(5), sub.changed())
                .await
                .unwrap_or_else(|_| panic!("{id} woken"));
        }
        assert!(!p4.rx.has_changed().unwrap(), "p4 was not in the wake-up");
    }
}
