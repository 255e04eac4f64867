//! The wire protocols: generated Thanos StoreAPI / Info / remote-write types and gRPC
//! services, conversions to the data model, and a fast borrowing remote-write decoder.
//!
//! Module layout mirrors the protobuf packages: [`thanos`] (StoreAPI, `thanos.Store`,
//! `thanos.WriteableStore`), [`thanos::info`] (`thanos.info.Info`), [`prometheus_copy`]
//! (Thanos's copy of Prometheus's remote-write types), [`prometheus`] (the remote-write 1.0
//! HTTP body `prometheus.WriteRequest`) and [`hintspb`].

#![allow(clippy::all, missing_docs)]

/// Package `thanos`: StoreAPI messages and services.
pub mod thanos {
    include!(concat!(env!("OUT_DIR"), "/thanos.rs"));

    /// `thanos.Label` is the model's [`crate::Label`] (see `label_codec`).
    pub use crate::Label;

    /// Package `thanos.info`: the discovery service.
    pub mod info {
        include!(concat!(env!("OUT_DIR"), "/thanos.info.rs"));
    }
}

/// Package `prometheus_copy`: remote-write series, samples, histograms.
pub mod prometheus_copy {
    include!(concat!(env!("OUT_DIR"), "/prometheus_copy.rs"));
}

/// Package `prometheus`: the remote-write 1.0 HTTP request body.
pub mod prometheus {
    include!(concat!(env!("OUT_DIR"), "/prometheus.rs"));
}

/// Package `io.prometheus.write.v2`: the remote-write 2.0 HTTP request body (prost types,
/// for clients and tests; the receiver reads it with [`remote_write_v2`]).
pub mod write_v2 {
    include!(concat!(env!("OUT_DIR"), "/io.prometheus.write.v2.rs"));
}

/// Package `hintspb`: store hints carried in `google.protobuf.Any`.
pub mod hintspb {
    include!(concat!(env!("OUT_DIR"), "/hintspb.rs"));
}

/// Short alias: the Prometheus remote-write types.
pub use prometheus_copy as prompb;
/// Short alias: the info service package.
pub use thanos::info;

mod bytes_codec;
mod convert;
pub mod frames;
mod label_codec;
mod proto_reader;
pub mod remote_write;
pub mod remote_write_v2;
mod rw_histogram;
pub mod series_frame;
pub mod store_service;

pub use bytes_codec::BytesCodec;
pub use convert::{
    ConvertError, labels_from_wire, labels_to_wire, matcher_from_wire, matcher_to_wire,
    matchers_from_wire,
};
