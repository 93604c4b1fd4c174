//! Integration tests: the service in-process on port 0, real sockets, real dependencies.

mod fakes;
mod support;

mod api;
mod cdnetworks;
mod cloudflare;
mod dispatch;
mod edgeone;
mod edgeone_client;
mod fastly;
mod grpcurl;
mod limiter_pause;
mod otlp;
mod redis;
mod redis_replicas;
mod redis_server;
mod shutdown;
mod validation;
