//! The domain: validation, planning and the purge use cases, independent of gRPC and storage.

pub mod auth;
pub mod error;
pub mod estimate;
pub mod list;
pub mod plan;
pub mod service;
pub mod settings;
pub mod targets;
pub mod validate;
pub mod violations;
pub mod watch;

pub use auth::{Caller, Callers};
pub use error::{Error, FieldViolation};
pub use service::{PurgeCore, Seen};
pub use validate::CreateRequest;
