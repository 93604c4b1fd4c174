//! The domain: validation, planning and the purge use cases, independent of gRPC and storage.

pub mod error;
pub mod model;
pub mod service;
pub mod validate;
pub mod watch;

pub use error::{Error, FieldViolation};
pub use service::{Caller, PurgeCore};
pub use validate::CreateRequest;
