//! A bare tonic server for the external benchmarks: `purge.v1.PurgeService` with handlers that
//! do no work (a fixed `Purge` for unary calls; for WatchPurge one message, then the stream
//! stays open), so h2load and `watch-bench` measure tonic and HTTP/2 alone on the same paths.
//!
//! `cargo run --release --bin bare-grpc -- 127.0.0.1:50060`

use std::pin::Pin;

use purge_service::pb::purge_service_server::{PurgeService, PurgeServiceServer};
use purge_service::pb::{self, PurgeState};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

struct Bare;

fn fixed(id: &str) -> pb::Purge {
    pb::Purge {
        id: id.to_owned(),
        provider: "sandbox".into(),
        state: PurgeState::Running as i32,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl PurgeService for Bare {
    async fn create_purge(
        &self,
        _request: Request<pb::CreatePurgeRequest>,
    ) -> Result<Response<pb::Purge>, Status> {
        Ok(Response::new(fixed("bare")))
    }

    async fn get_purge(
        &self,
        request: Request<pb::GetPurgeRequest>,
    ) -> Result<Response<pb::Purge>, Status> {
        Ok(Response::new(fixed(&request.get_ref().id)))
    }

    async fn cancel_purge(
        &self,
        request: Request<pb::CancelPurgeRequest>,
    ) -> Result<Response<pb::Purge>, Status> {
        Ok(Response::new(fixed(&request.get_ref().id)))
    }

    async fn list_purges(
        &self,
        _request: Request<pb::ListPurgesRequest>,
    ) -> Result<Response<pb::ListPurgesResponse>, Status> {
        Ok(Response::new(pb::ListPurgesResponse {
            purges: vec![fixed("bare")],
            next_page_token: String::new(),
        }))
    }

    type WatchPurgeStream = Pin<Box<dyn Stream<Item = Result<pb::Purge, Status>> + Send>>;

    async fn watch_purge(
        &self,
        request: Request<pb::WatchPurgeRequest>,
    ) -> Result<Response<Self::WatchPurgeStream>, Status> {
        let first = fixed(&request.get_ref().id);
        let stream = tokio_stream::once(Ok(first)).chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50060".into())
        .parse()?;
    tonic::transport::Server::builder()
        .add_service(PurgeServiceServer::new(Bare))
        .serve(addr)
        .await?;
    Ok(())
}
