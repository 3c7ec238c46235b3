//! With the `otel` feature, spans reach an OTLP/gRPC collector: a tiny collector (the
//! generated TraceService server) counts what the exporter sends.
#![cfg(feature = "otel")]
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

#[derive(Default, Clone)]
struct Collector(Arc<Mutex<Vec<(String, String)>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .map(|v| format!("{:?}", v.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push((service.clone(), s.name));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[test]
fn spans_are_exported_to_the_collector() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let collector = Collector::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = TraceServiceServer::new(collector.clone());
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let cfg = seqclust_telemetry::TelemetryConfig {
        log_filter: "info".into(),
        otlp_endpoint: format!("http://{addr}"),
        service_name: "seqclust-test".into(),
        ..Default::default()
    };
    // the exporter's gRPC client lives on the caller's runtime, as in the services
    let guard = rt
        .block_on(async { seqclust_telemetry::logging::init(&cfg) })
        .unwrap();
    rt.block_on(async {
        let span = tracing::info_span!("job", job = "j-1");
        let _e = span.enter();
        tracing::info_span!("phase", phase = "train").in_scope(|| tracing::info!("step"));
    });
    // dropping the guard flushes the batch
    rt.block_on(async move { drop(guard) });
    let got = collector.0.lock().unwrap().clone();
    let names: Vec<&str> = got.iter().map(|(_, n)| n.as_str()).collect();
    assert!(
        names.contains(&"job") && names.contains(&"phase"),
        "{got:?}"
    );
    assert!(
        got.iter().all(|(s, _)| s.contains("seqclust-test")),
        "{got:?}"
    );
}
