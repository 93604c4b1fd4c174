//! purge-service: a gRPC service that purges CDN caches for other services. See DESIGN.md.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod app;
pub mod backend;
pub mod client;
pub mod config;
pub mod core;
pub mod dispatch;
pub mod health_probe;
pub mod limiter;
pub mod metrics;
pub mod model;
pub mod providers;
pub mod queue;
pub mod redis_state;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod tls;

pub use app::App;

/// Generated `purge.v1` messages, client and server.
pub mod pb {
    tonic::include_proto!("purge.v1");

    /// The encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/purge_descriptor.bin"));
}
