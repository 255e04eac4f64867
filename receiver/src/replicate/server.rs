//! The peer side: `thanos.WriteableStore/RemoteWrite`.

use std::sync::Arc;

use storeapi::wire::thanos::writeable_store_server::{WriteableStore, WriteableStoreServer};
use storeapi::wire::thanos::{WriteRequest, WriteResponse};
use tonic::{Request, Response, Status};

use super::Distributor;
use super::peers::MAX_MESSAGE_SIZE;
use super::snappy::SnappyDecompress;

/// Largest decompressed forwarded request accepted.
pub const MAX_FORWARDED_REQUEST: usize = 512 << 20;

/// Serves forwarded writes through a [`Distributor`].
#[derive(Debug, Clone)]
pub struct WriteableStoreService {
    distributor: Arc<Distributor>,
}

impl WriteableStoreService {
    pub fn new(distributor: Arc<Distributor>) -> Self {
        WriteableStoreService { distributor }
    }
}

#[tonic::async_trait]
impl WriteableStore for WriteableStoreService {
    async fn remote_write(
        &self,
        request: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let req = request.into_inner();
        match self.distributor.remote_write(req).await {
            Ok(()) => Ok(Response::new(WriteResponse {})),
            Err(e) => {
                tracing::debug!(error = %e, "forwarded write failed");
                Err(e.grpc_status())
            }
        }
    }
}

/// The tonic service to add to the gRPC server (`Server::builder().add_service(...)`):
/// `thanos.WriteableStore` accepting uncompressed and Thanos `snappy` (framed) requests.
pub fn writeable_store_service(
    distributor: Arc<Distributor>,
) -> SnappyDecompress<WriteableStoreServer<WriteableStoreService>> {
    let server = WriteableStoreServer::new(WriteableStoreService::new(distributor))
        .max_decoding_message_size(MAX_FORWARDED_REQUEST)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    SnappyDecompress::new(server, MAX_FORWARDED_REQUEST)
}
