//! The `thanos.Store` gRPC service with `Series` answered by frames already encoded by
//! [`super::frames`] (sent as bytes, never built as prost structs); every other method
//! goes to the generated server. Shared by every component serving the StoreAPI.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use prost::Message;
use tonic::body::Body;
use tonic::server::{NamedService, ServerStreamingService};
use tonic::{Request, Response, Status};
use tower::Service;

use super::BytesCodec;
use super::thanos::SeriesRequest;
use super::thanos::store_server::{Store, StoreServer};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

const SERIES_PATH: &str = "/thanos.Store/Series";

/// Largest `SeriesRequest` accepted.
pub const MAX_REQUEST: usize = 64 << 20;

/// A `Series` answer as encoded `SeriesResponse` frames.
pub type FrameStream = tokio_stream::wrappers::ReceiverStream<Result<Bytes, Status>>;

/// A StoreAPI implementation that can answer `Series` with encoded frames.
pub trait FrameSeries: Store + Clone {
    /// Runs a `Series` call, frames streamed as they are written.
    fn series_frames(
        &self,
        request: Request<SeriesRequest>,
    ) -> impl Future<Output = Result<FrameStream, Status>> + Send;
}

/// `thanos.Store` with the encoded-frame `Series`.
#[derive(Clone)]
pub struct StoreService<S: FrameSeries> {
    state: S,
    inner: StoreServer<S>,
}

impl<S: FrameSeries> StoreService<S> {
    pub fn new(state: S) -> Self {
        let inner = StoreServer::new(state.clone())
            .max_decoding_message_size(MAX_REQUEST)
            .max_encoding_message_size(usize::MAX);
        StoreService { state, inner }
    }
}

impl<S: FrameSeries> NamedService for StoreService<S> {
    const NAME: &'static str = "thanos.Store";
}

struct Series<S>(S);

impl<S: FrameSeries> ServerStreamingService<Bytes> for Series<S> {
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

impl<S: FrameSeries> Service<http::Request<Body>> for StoreService<S> {
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
