//! Integration tests: the service in-process on port 0, real sockets, real dependencies.

mod fakes;
mod support;

mod akamai;
mod api;
mod cdnetworks;
mod cloudfront;
mod dispatch;
mod edgeone;
mod edgeone_client;
mod grpcurl;
mod otlp;
mod redis;
mod redis_replicas;
mod redis_server;
mod shutdown;
mod validation;
