//! gRPC adapters: convert, call the core, map the error. Nothing here touches storage or HTTP.

pub mod convert;
pub mod status;

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::core::{Caller, PurgeCore};
use crate::pb::{self, purge_service_server::PurgeService};

/// The `purge.v1.PurgeService` implementation.
#[derive(Clone)]
pub struct PurgeApi {
    core: PurgeCore,
}

impl PurgeApi {
    pub fn new(core: PurgeCore) -> PurgeApi {
        PurgeApi { core }
    }
}

/// The caller the `authorization` metadata names.
fn caller<T>(core: &PurgeCore, req: &Request<T>) -> Result<Caller, Status> {
    let header = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    core.authenticate(header).map_err(status::from_error)
}

/// The `idempotency-key` metadata, if the caller sent one.
fn metadata_key<T>(req: &Request<T>) -> Option<String> {
    req.metadata().get("idempotency-key").map(|v| {
        v.to_str()
            .map(str::to_owned)
            .unwrap_or_else(|_| "\u{fffd}".into())
    })
}

#[tonic::async_trait]
impl PurgeService for PurgeApi {
    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "CreatePurge", purge_id = tracing::field::Empty))]
    async fn create_purge(
        &self,
        request: Request<pb::CreatePurgeRequest>,
    ) -> Result<Response<pb::Purge>, Status> {
        let caller = caller(&self.core, &request)?;
        let key = metadata_key(&request);
        let req = convert::create_request(request.into_inner(), key);
        let purge = self
            .core
            .create(&caller, req)
            .await
            .map_err(status::from_error)?;
        tracing::Span::current().record("purge_id", purge.id.as_str());
        Ok(Response::new(convert::purge(&purge)))
    }

    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "GetPurge", purge_id = %request.get_ref().id))]
    async fn get_purge(
        &self,
        request: Request<pb::GetPurgeRequest>,
    ) -> Result<Response<pb::Purge>, Status> {
        let caller = caller(&self.core, &request)?;
        let purge = self
            .core
            .get(&caller, &request.get_ref().id)
            .await
            .map_err(status::from_error)?;
        Ok(Response::new(convert::purge(&purge)))
    }

    type WatchPurgeStream = Pin<Box<dyn Stream<Item = Result<pb::Purge, Status>> + Send>>;

    #[tracing::instrument(name = "rpc", skip_all, fields(rpc = "WatchPurge", purge_id = %request.get_ref().id))]
    async fn watch_purge(
        &self,
        request: Request<pb::WatchPurgeRequest>,
    ) -> Result<Response<Self::WatchPurgeStream>, Status> {
        let caller = caller(&self.core, &request)?;
        let updates = self
            .core
            .watch(&caller, &request.get_ref().id)
            .await
            .map_err(status::from_error)?;
        let stream = ReceiverStream::new(updates)
            .map(|u| u.map(|p| convert::purge(&p)).map_err(status::from_error));
        Ok(Response::new(Box::pin(stream)))
    }
}
