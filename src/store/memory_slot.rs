//! How the memory store keeps one purge: live while it runs, encoded once finished.

use std::sync::Arc;

use super::codec;
use crate::backend::BackendError;
use crate::model::PurgeRecord;

/// A purge as kept: unfinished ones as the record (they change often), shared with the readers
/// that asked for it (the dispatcher reads and changes thousands a second: no copy each time);
/// finished ones encoded.
pub(super) enum Slot {
    Live(Arc<PurgeRecord>),
    Done(Box<[u8]>),
}

impl Slot {
    pub(super) fn of(record: Arc<PurgeRecord>) -> Slot {
        if record.state.is_terminal() {
            Slot::encoded(&record)
        } else {
            Slot::Live(record)
        }
    }

    pub(super) fn encoded(record: &PurgeRecord) -> Slot {
        Slot::Done(codec::encode(record, false).into_boxed_slice())
    }

    pub(super) fn shared(&self, id: &str) -> Result<Arc<PurgeRecord>, BackendError> {
        match self {
            Slot::Live(r) => Ok(r.clone()),
            Slot::Done(bytes) => codec::decode(bytes, id)
                .map(Arc::new)
                .map_err(|e| BackendError::Corrupt(e.to_string())),
        }
    }

    pub(super) fn is_done(&self) -> bool {
        matches!(self, Slot::Done(_))
    }
}

/// How an update moved a purge between the unfinished and the finished.
pub(super) enum Moved {
    Changed,
    Finished,
    Reopened,
}
