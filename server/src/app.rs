//! The gRPC server: the credit service, health and reflection on one port.

use std::future::Future;

use credit_proto::v1::credit_service_server::CreditServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::ledger::Ledger;
use crate::service::CreditApi;

/// Serves on `listener` until `shutdown` resolves, then turns health to
/// NOT_SERVING, refuses new calls and lets in-flight calls finish.
///
/// The ledger's database must be reachable and migrated (health says
/// SERVING from the first call).
pub async fn serve(
    listener: TcpListener,
    ledger: Ledger,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let api = CreditServiceServer::new(CreditApi::new(ledger));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CreditServiceServer<CreditApi>>().await;
    health.set_service_status("", ServingStatus::Serving).await;

    // v1 and v1alpha: older grpcurl releases speak only v1alpha.
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: health NOT_SERVING, finishing in-flight calls");
        health
            .set_not_serving::<CreditServiceServer<CreditApi>>()
            .await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
    };

    Server::builder()
        .add_service(api)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

/// Reflection over our API, the google.rpc error details (so clients can
/// decode them) and the health service.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(credit_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(credit_proto::GOOGLE_RPC_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
