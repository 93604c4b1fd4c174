//! Integration tests: the service in-process on port 0, real sockets, real dependencies.

mod deploy_tools;
mod fakes;
mod pki;
mod properties;
mod support;

mod akamai;
mod api;
mod cancel;
mod cdnetworks;
mod chart;
mod cli;
mod client_cli;
mod cloudflare;
mod cloudfront;
mod dispatch;
mod edgeone;
mod edgeone_client;
mod fastly;
mod grpcurl;
mod image;
mod limiter_pause;
mod list;
mod memory_bounds;
mod metrics;
mod otlp;
mod plan;
mod redis;
mod redis_replicas;
mod redis_server;
mod redis_tls;
mod scenarios;
mod shutdown;
mod structure;
mod tls;
mod validation;
