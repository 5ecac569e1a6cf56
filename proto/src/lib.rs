//! The `credit.v1` gRPC API, generated from `proto/credit/v1/credit.proto`.
//!
//! [`v1`] holds the messages and the `credit_service_client` /
//! `credit_service_server` modules; the descriptor sets are what server
//! reflection serves.

/// Generated code for the `credit.v1` package.
pub mod credit {
    /// Version 1 of the credit API.
    pub mod v1 {
        #![allow(
            missing_docs,
            clippy::doc_lazy_continuation,
            clippy::large_enum_variant
        )]
        tonic::include_proto!("credit.v1");
    }
}

pub use credit::v1;

/// The encoded `FileDescriptorSet` of the API and the well-known types it
/// imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/credit_descriptor.bin"));

/// The encoded `FileDescriptorSet` of `google/rpc/error_details.proto` and
/// `google/rpc/status.proto`, so reflection clients can decode error details.
pub const GOOGLE_RPC_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/google_rpc_descriptor.bin"));
