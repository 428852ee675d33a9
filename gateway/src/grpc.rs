//! The gRPC server: `fieldgate.v1.CommandService` and `fieldgate.v1.QueryService`
//! ([`crate::query`]).
//!
//! With a `[grpc] token`, every call must carry `authorization: Bearer <token>`; others are
//! refused with `UNAUTHENTICATED`. The token is compared in constant time and never logged.
//! With `[grpc.tls]` the API is served over TLS (rustls), and with its `client_ca_file` only
//! to clients presenting a certificate that chains to it; a handshake that fails never
//! reaches a service.

use crate::commands::Dispatcher;
use crate::config::{GrpcTls, Secret};
use fieldgate_proto::v1::command_service_server::{CommandService, CommandServiceServer};
use fieldgate_proto::v1::query_service_server::QueryServiceServer;
use fieldgate_proto::v1::{DeliveryStatus, SendRequest, SendResponse};
use fieldgate_proto::{Action, Command, CommandError, Delivery, Timestamp};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

#[derive(Debug)]
struct Commands {
    dispatcher: Arc<Dispatcher>,
}

#[tonic::async_trait]
impl CommandService for Commands {
    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let budget = crate::deadline::budget(request.metadata());
        let wire =
            request.into_inner().command.ok_or_else(|| Status::invalid_argument("`command` is required"))?;
        let mut command =
            Command::try_from(&wire).map_err(|e| Status::invalid_argument(format!("command: {e}")))?;
        if wire.created_ns == 0 {
            command.created = Timestamp::now();
        }
        if let Action::Set { value, .. } = command.action
            && !value.is_finite()
        {
            return Err(Status::invalid_argument(format!("command: set.value must be finite, got {value}")));
        }
        let after = "; it may still reach the device (a retry with the same id is sent again)";
        let work = async { self.dispatcher.send(command).await.map_err(status) };
        let sent = crate::deadline::within(budget, "sending the command", after, work).await?;
        let status = match sent.delivery {
            Delivery::Delivered => DeliveryStatus::Delivered,
            Delivery::Queued => DeliveryStatus::Queued,
            Delivery::Duplicate => DeliveryStatus::Duplicate,
        };
        Ok(Response::new(SendResponse { id: wire.id, status: status.into(), detail: sent.detail }))
    }
}

fn status(e: CommandError) -> Status {
    match e {
        CommandError::UnknownDevice(_) => Status::not_found(e.to_string()),
        CommandError::Unsupported(_) | CommandError::Refused(_) => Status::failed_precondition(e.to_string()),
        CommandError::Unreachable(_) => Status::unavailable(e.to_string()),
        CommandError::Timeout(_) => Status::deadline_exceeded(e.to_string()),
    }
}

/// Checks the bearer token of each call.
#[derive(Clone)]
pub(crate) struct Auth {
    pub(crate) expected: Option<Arc<Vec<u8>>>,
}

impl Auth {
    pub(crate) fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else { return Ok(request) };
        match bearer(request.metadata()) {
            Some(given) if constant_time_eq(given, expected) => Ok(request),
            Some(_) => Err(Status::unauthenticated("the bearer token is not valid")),
            None => Err(Status::unauthenticated("this gateway needs `authorization: Bearer <token>`")),
        }
    }
}

/// The token of an `authorization: Bearer <token>` header, if there is one.
pub(crate) fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<&[u8]> {
    metadata.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ").map(str::as_bytes)
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serve the gRPC API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    dispatcher: Arc<Dispatcher>,
    queries: crate::query::Queries,
    token: Option<Secret>,
    tls: Option<GrpcTls>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let local = listener.local_addr().ok();
    if tls.is_none() && token.is_some() && local.is_some_and(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            listen = ?local,
            "the gRPC API is served without TLS beyond loopback: its bearer token crosses the network in clear; add [grpc.tls]"
        );
    }
    let auth = Auth { expected: token.map(|t| Arc::new(t.expose().as_bytes().to_vec())) };
    let (check, check_reflection) = (auth.clone(), auth.clone());
    let commands = CommandServiceServer::with_interceptor(Commands { dispatcher }, move |r| check.check(r));
    let queries = QueryServiceServer::with_interceptor(queries, move |r| auth.check(r));
    // Health answers without a token (load balancers, systemd checks); reflection describes
    // the API to callers that have one.
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", tonic_health::ServingStatus::Serving).await;
    for name in ["fieldgate.v1.CommandService", "fieldgate.v1.QueryService"] {
        health.set_service_status(name, tonic_health::ServingStatus::Serving).await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fieldgate_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the built-in descriptor sets are valid");
    let reflection =
        tonic::service::interceptor::InterceptedService::new(reflection, move |r| check_reflection.check(r));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        builder = builder.tls_config(server_tls(tls))?;
    }
    let server = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(commands)
        .add_service(queries)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown.clone().cancelled_owned(),
        );
    // A graceful stop waits for clients to close their connections; one that keeps an idle
    // connection open (a dashboard, a stuck client) must not hold the gateway's shutdown up.
    tokio::select! {
        served = server => served,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::info!(grace = ?SHUTDOWN_GRACE, "gRPC clients still connected at shutdown were dropped");
            Ok(())
        }
    }
}

/// The TLS settings of a gRPC server (the gateway's API, the collector): its identity, and the
/// CA client certificates must chain to, if any.
pub(crate) fn server_tls(tls: &GrpcTls) -> tonic::transport::ServerTlsConfig {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.cert, &tls.key))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    match &tls.client_ca {
        Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
        None => config,
    }
}

/// How long a client gets to finish its TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long open gRPC calls and connections get to finish once the gateway stops.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_whole() {
        let auth = Auth { expected: Some(Arc::new(b"s3cret".to_vec())) };
        let with = |h: &str| {
            let mut r = Request::new(());
            r.metadata_mut().insert("authorization", h.parse().unwrap());
            r
        };
        assert!(auth.check(with("Bearer s3cret")).is_ok());
        assert_eq!(auth.check(with("Bearer s3cre")).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(auth.check(with("s3cret")).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(auth.check(Request::new(())).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(Auth { expected: None }.check(Request::new(())).is_ok());
    }
}
