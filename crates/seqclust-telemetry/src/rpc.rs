//! gRPC server metrics as a tower layer for tonic (`Server::builder().layer(…)`):
//! `seqclust_grpc_server_handled_total{service,method,code}` and
//! `seqclust_grpc_server_handling_seconds{service,method}`.
//!
//! The time is measured until the response headers, which tonic sends when a unary handler
//! has returned, so for unary calls it is the handling time; for a server stream it is the
//! time to open it. The code is the `grpc-status` of a trailers-only response (every error a
//! handler returns), else `OK`. Paths the server does not know are counted as method
//! `unknown`, so a client cannot grow the label set.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;

use tower_layer::Layer;
use tower_service::Service;

use crate::metrics::{self, HistogramVec, IntCounterVec};

static HANDLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "seqclust_grpc_server_handled_total",
        "gRPC calls completed by the server, by service, method and status code",
        &["service", "method", "code"],
    )
});

static SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    metrics::histogram_vec(
        "seqclust_grpc_server_handling_seconds",
        "Time from a gRPC request to its response headers, by service and method",
        &["service", "method"],
        metrics::SECONDS_BUCKETS,
    )
});

/// The layer; add it to a tonic server builder.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics { inner }
    }
}

/// The service the layer wraps around a tonic router.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, ReqB, ResB> Service<http::Request<ReqB>> for GrpcMetrics<S>
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqB>) -> Self::Future {
        let path = req.uri().path().to_string();
        ResponseFuture {
            inner: self.inner.call(req),
            path,
            start: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    /// Records the call when the response headers are ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        path: String,
        start: Instant,
    }
}

/// `/seqclust.v1.JobService/SubmitJob` → (`seqclust.v1.JobService`, `SubmitJob`).
fn split(path: &str) -> (&str, &str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    match (parts.next(), parts.next()) {
        (Some(s), Some(m)) if !s.is_empty() && !m.is_empty() && !m.contains('/') => (s, m),
        _ => ("unknown", "unknown"),
    }
}

/// The name of a gRPC status code, as grpc-go and tonic print them.
fn code_name(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "Cancelled",
        "2" => "Unknown",
        "3" => "InvalidArgument",
        "4" => "DeadlineExceeded",
        "5" => "NotFound",
        "6" => "AlreadyExists",
        "7" => "PermissionDenied",
        "8" => "ResourceExhausted",
        "9" => "FailedPrecondition",
        "10" => "Aborted",
        "11" => "OutOfRange",
        "12" => "Unimplemented",
        "13" => "Internal",
        "14" => "Unavailable",
        "15" => "DataLoss",
        "16" => "Unauthenticated",
        _ => "Unknown",
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = match this.inner.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(out) => out,
        };
        let code = match &out {
            Ok(resp) => resp
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .map_or("OK", code_name),
            Err(_) => "Transport",
        };
        let (service, method) = if code == "Unimplemented" {
            ("unknown", "unknown")
        } else {
            split(this.path)
        };
        HANDLED.with_label_values(&[service, method, code]).inc();
        SECONDS
            .with_label_values(&[service, method])
            .observe(this.start.elapsed().as_secs_f64());
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split("/seqclust.v1.JobService/SubmitJob"),
            ("seqclust.v1.JobService", "SubmitJob")
        );
        assert_eq!(split("/nothing"), ("unknown", "unknown"));
        assert_eq!(split("/a/b/c"), ("unknown", "unknown"));
        assert_eq!(code_name("16"), "Unauthenticated");
    }
}
