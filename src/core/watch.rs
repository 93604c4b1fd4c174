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
    /// A receiver that changes whenever purge `id` may have changed.
    pub fn subscribe(&self, id: &str) -> watch::Receiver<u64> {
        let mut senders = self.senders.lock().expect("hub lock");
        senders
            .entry(id.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn wake(&self, id: &str) {
        let mut senders = self.senders.lock().expect("hub lock");
        if let Some(tx) = senders.get(id) {
            if tx.receiver_count() == 0 {
                senders.remove(id);
            } else {
                tx.send_modify(|n| *n += 1);
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
                Ok(id) => self.wake(&id),
                Err(broadcast::error::RecvError::Lagged(_)) => self.wake_all(),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
