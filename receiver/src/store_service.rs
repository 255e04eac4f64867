//! The `thanos.Store` gRPC service: `Series` answered with frames already encoded by
//! [`crate::frames`] (sent as bytes, never built as prost structs), every other method
//! by the generated server.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use prost::Message;
use storeapi::wire::thanos::{SeriesRequest, store_server::StoreServer};
use tonic::body::Body;
use tonic::server::{NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};
use tower::Service;

use crate::replicate::BoxFuture;
use crate::store::{FrameStream, StoreState};
use storeapi::wire::BytesCodec;

const SERIES_PATH: &str = "/thanos.Store/Series";

/// Largest `SeriesRequest` accepted.
pub const MAX_REQUEST: usize = 64 << 20;

/// `thanos.Store` with the encoded-frame `Series`.
#[derive(Clone)]
pub struct StoreService {
    state: StoreState,
    inner: StoreServer<StoreState>,
}

impl StoreService {
    pub fn new(state: StoreState) -> Self {
        let inner = StoreServer::new(state.clone())
            .max_decoding_message_size(MAX_REQUEST)
            .max_encoding_message_size(usize::MAX);
        StoreService { state, inner }
    }
}

impl NamedService for StoreService {
    const NAME: &'static str = "thanos.Store";
}

struct Series(StoreState);

impl ServerStreamingService<Bytes> for Series {
    type Response = Bytes;
    type ResponseStream = FrameStream;
    type Future = BoxFuture<'static, Result<Response<FrameStream>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let (meta, ext, body) = request.into_parts();
            let req = SeriesRequest::decode(body)
                .map_err(|e| Status::invalid_argument(format!("invalid SeriesRequest: {e}")))?;
            let frames = state
                .series_frames(Request::from_parts(meta, ext, req))
                .await?;
            Ok(Response::new(frames))
        })
    }
}

impl Service<http::Request<Body>> for StoreService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != SERIES_PATH {
            return Box::pin(self.inner.call(req));
        }
        let svc = Series(self.state.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(BytesCodec)
                .max_decoding_message_size(MAX_REQUEST)
                .max_encoding_message_size(usize::MAX);
            Ok(grpc.server_streaming(svc, req).await)
        })
    }
}
