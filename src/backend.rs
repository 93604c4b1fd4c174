//! The one error of the state backends (store, queue, limiter; memory or Redis): a leaf that
//! all of them share, so none of them depends on another.

/// Why the shared state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("state backend unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl BackendError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, BackendError::Unavailable(_))
    }

    /// The same error again, for each of several operations one failed call answered for.
    pub fn again(&self) -> BackendError {
        match self {
            BackendError::Unavailable(source) => {
                BackendError::Unavailable(source.to_string().into())
            }
            BackendError::Corrupt(what) => BackendError::Corrupt(what.clone()),
        }
    }
}
