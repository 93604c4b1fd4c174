//! Integration tests: the service in-process on port 0, real sockets, real dependencies.

mod deploy_tools;
mod fakes;
mod support;

mod akamai;
mod akamai_shared_bucket;
mod api;
mod cdnetworks;
mod chart;
mod cli;
mod cloudflare;
mod cloudflare_throttle;
mod cloudfront;
mod dispatch;
mod edgeone;
mod edgeone_client;
mod fastly;
mod grpcurl;
mod image;
mod learned_caps;
mod limiter_pause;
mod memory_bounds;
mod otlp;
mod redis;
mod redis_replicas;
mod redis_server;
mod scenarios;
mod shutdown;
mod validation;
