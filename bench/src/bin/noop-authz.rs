//! The no-op baseline of the ext_authz service benchmark: an `envoy.service.auth.v3.
//! Authorization/Check` server that answers OK to every request without looking at it. Same
//! transport as `meshauthz serve` (tonic, envoy-types, a multi-threaded tokio runtime, TCP
//! no-delay) and the same allocator (mimalloc), so the difference between the two is the
//! per-Check work of meshauthz: converting the request, resolving the workload, deciding,
//! counting and logging.
//!
//! Usage: `noop-authz [ADDR]` (default 127.0.0.1:0). Prints `noop serving grpc=<addr>` once
//! listening; runs until killed.

use std::io::Write;

use anyhow::Context;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse};
use envoy_types::pb::google::rpc;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy)]
struct AlwaysOk;

#[tonic::async_trait]
impl Authorization for AlwaysOk {
    async fn check(
        &self,
        _request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(CheckResponse {
            status: Some(rpc::Status {
                code: 0,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse::default())),
            ..Default::default()
        }))
    }
}

fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("noop-authz")
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        let local = listener.local_addr()?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "noop serving grpc={local}")?;
            out.flush()?;
        }
        Server::builder()
            .add_service(AuthorizationServer::new(AlwaysOk))
            .serve_with_incoming(incoming)
            .await
            .context("gRPC server")
    })
}
