//! The operator's HTTP endpoint, shared by broker nodes and nameservers:
//! - `/metrics`: Prometheus text format, gathered at scrape time;
//! - `/healthz`: 200 while the process serves (a liveness probe: restart it when this fails);
//! - `/readyz`: 200 when the node can do its job, 503 with the reason when not (what "ready"
//!   means is the server's [`Probe`]);
//!
//! and [`RpcTimingLayer`], which times every gRPC call the server answers by method and runs
//! it in a tracing span carrying the request id (`x-mq-request-id`, which official clients
//! send and the forwarding path passes on), so one request's log lines on the follower and
//! on the leader can be found together.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::BoxFuture;
use prometheus::{Encoder, HistogramOpts, HistogramVec, TextEncoder};
use tokio::net::TcpListener;

/// What a server exposes on its HTTP endpoint.
pub trait Probe: Send + Sync + 'static {
    /// Every metric family, current as of this call.
    fn gather(&self) -> BoxFuture<'_, Vec<prometheus::proto::MetricFamily>>;
    /// `Ok(detail)` when ready, `Err(reason)` when not. Bounded in time by the implementor.
    fn ready(&self) -> BoxFuture<'_, Result<String, String>>;
}

async fn metrics(State(probe): State<Arc<dyn Probe>>) -> impl IntoResponse {
    let encoder = TextEncoder::new();
    let mut out = Vec::new();
    match encoder.encode(&probe.gather().await, &mut out) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_string())],
            out,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_string())],
            format!("encoding metrics: {e}\n").into_bytes(),
        ),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(probe): State<Arc<dyn Probe>>) -> (StatusCode, String) {
    match probe.ready().await {
        Ok(detail) => (StatusCode::OK, format!("ready: {detail}\n")),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// Serves the endpoint on `listener` until `stop` turns true.
pub fn spawn_http(
    listener: TcpListener,
    probe: Arc<dyn Probe>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(probe);
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!("http endpoint ended: {e}");
        }
    })
}

/// Binds the HTTP endpoint's address, if one is configured.
pub async fn bind_http(addr: Option<std::net::SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
    use anyhow::Context as _;
    match addr {
        None => Ok(None),
        Some(a) => {
            Ok(Some(TcpListener::bind(a).await.with_context(|| {
                format!("binding the http endpoint {a}")
            })?))
        }
    }
}

/// `rocketraft_rpc_duration_seconds{rpc}`: time from request to response headers, which for
/// unary calls is the whole call. Streams (Telemetry, long polls) record their setup only.
pub fn rpc_histogram(registry: &prometheus::Registry) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(
            "rocketraft_rpc_duration_seconds",
            "gRPC calls answered by this process, by method: time to the response headers",
        )
        .buckets(vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ]),
        &["rpc"],
    )?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

/// A tower layer for tonic's server that records each call in [`rpc_histogram`].
#[derive(Clone)]
pub struct RpcTimingLayer {
    histogram: HistogramVec,
}

impl RpcTimingLayer {
    pub fn new(histogram: HistogramVec) -> Self {
        Self { histogram }
    }
}

impl<S> tower_layer::Layer<S> for RpcTimingLayer {
    type Service = RpcTiming<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcTiming {
            inner,
            histogram: self.histogram.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RpcTiming<S> {
    inner: S,
    histogram: HistogramVec,
}

/// gRPC's status for a method the server does not have.
const GRPC_UNIMPLEMENTED: &str = "12";

impl<S, B, R> tower_service::Service<http::Request<B>> for RpcTiming<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let rpc = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        // A request without an id gets one here, so that a follower forwarding it and the
        // leader serving it log the same id.
        let request_id = match req
            .headers()
            .get(crate::proposer::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
        {
            Some(id) => id.to_string(),
            None => {
                let id = crate::proposer::new_request_id();
                if let Ok(v) = http::HeaderValue::from_str(&id) {
                    req.headers_mut().insert(crate::proposer::REQUEST_ID, v);
                }
                id
            }
        };
        let span = tracing::debug_span!("rpc", rpc = %rpc, request_id = %request_id);
        let histogram = self.histogram.clone();
        let start = Instant::now();
        let response = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        Box::pin(tracing::Instrument::instrument(
            async move {
                let response = response.await?;
                // Unknown methods are not recorded: a client could otherwise mint label values
                // without limit.
                let unimplemented = response
                    .headers()
                    .get("grpc-status")
                    .is_some_and(|s| s == GRPC_UNIMPLEMENTED);
                if !unimplemented {
                    histogram
                        .with_label_values(&[rpc.as_str()])
                        .observe(start.elapsed().as_secs_f64());
                }
                Ok(response)
            },
            span,
        ))
    }
}

/// Bytes of the files under `dir`, recursively (RocksDB keeps no more than a few hundred).
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
