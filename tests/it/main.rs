//! Integration tests: the service in-process on port 0, real sockets, real dependencies.

mod support;

mod api;
mod dispatch;
mod grpcurl;
mod shutdown;
