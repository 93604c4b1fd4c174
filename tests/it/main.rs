//! Integration tests: the service in-process on port 0, real sockets, real dependencies.

mod deploy_tools;
mod fakes;
mod pki;
mod properties;
mod support;

mod akamai;
mod api;
mod cdnetworks;
mod chart;
mod cli;
mod cloudflare;
mod cloudfront;
mod dispatch;
mod edgeone;
mod edgeone_client;
mod fastly;
mod grpcurl;
mod image;
mod limiter_pause;
mod memory_bounds;
mod otlp;
mod redis;
mod redis_replicas;
mod redis_server;
mod redis_tls;
mod scenarios;
mod shutdown;
mod tls;
mod validation;
