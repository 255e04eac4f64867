//! The peer side: `thanos.WriteableStore/RemoteWrite`, served over raw message bytes (see
//! [`super::codec`]) so forwarded series are never decoded into owned structs.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tonic::body::Body;
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tower::Service;

use super::peers::MAX_MESSAGE_SIZE;
use super::snappy::SnappyDecompress;
use super::{BoxFuture, Distributor};
use storeapi::wire::BytesCodec;

/// Largest decompressed forwarded request accepted.
pub const MAX_FORWARDED_REQUEST: usize = 512 << 20;

const REMOTE_WRITE_PATH: &str = "/thanos.WriteableStore/RemoteWrite";

/// Serves `thanos.WriteableStore` through a [`Distributor`].
#[derive(Debug, Clone)]
pub struct WriteableStoreService {
    distributor: Arc<Distributor>,
    max_message: usize,
}

impl WriteableStoreService {
    pub fn new(distributor: Arc<Distributor>) -> Self {
        WriteableStoreService {
            distributor,
            max_message: MAX_FORWARDED_REQUEST,
        }
    }
}

impl NamedService for WriteableStoreService {
    const NAME: &'static str = "thanos.WriteableStore";
}

struct RemoteWrite(Arc<Distributor>);

impl UnaryService<Bytes> for RemoteWrite {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let distributor = Arc::clone(&self.0);
        Box::pin(async move {
            match distributor.remote_write_bytes(request.into_inner()).await {
                // An empty `thanos.WriteResponse`.
                Ok(()) => Ok(Response::new(Bytes::new())),
                Err(e) => {
                    tracing::debug!(error = %e, "forwarded write failed");
                    Err(e.grpc_status())
                }
            }
        })
    }
}

impl Service<http::Request<Body>> for WriteableStoreService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != REMOTE_WRITE_PATH {
            let status = Status::unimplemented(format!(
                "unknown method {}: thanos.WriteableStore serves only RemoteWrite",
                req.uri().path()
            ));
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let svc = RemoteWrite(Arc::clone(&self.distributor));
        let max = self.max_message;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(BytesCodec)
                .max_decoding_message_size(max)
                .max_encoding_message_size(MAX_MESSAGE_SIZE);
            Ok(grpc.unary(svc, req).await)
        })
    }
}

/// The tonic service to add to the gRPC server (`Server::builder().add_service(...)`):
/// `thanos.WriteableStore` accepting uncompressed and Thanos `snappy` (framed) requests.
pub fn writeable_store_service(
    distributor: Arc<Distributor>,
) -> SnappyDecompress<WriteableStoreService> {
    SnappyDecompress::new(
        WriteableStoreService::new(distributor),
        MAX_FORWARDED_REQUEST,
    )
}
