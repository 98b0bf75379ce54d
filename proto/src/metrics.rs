//! `/metrics` in Prometheus text format, on a plain HTTP/1 listener of its
//! own beside the gRPC port.
//!
//! The gRPC port takes only mutual TLS with the cluster's certificates,
//! which a Prometheus scraper does not hold; metrics carry counts and
//! timings, never names of secrets or their values, so they are served on
//! their own address (`--metrics-listen`, off unless set: a loopback or a
//! management network is the place for it).
//!
//! Each process keeps its own `Registry` (no global one, so several
//! servers in one test process keep their figures apart). Counters and
//! histograms are bumped where things happen; figures that are read off
//! state (terms, counts by state) are computed at scrape time by a
//! `Collector`, so they cost nothing between scrapes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use prometheus_client;

/// How long a scrape may take to send its request (a stuck client must not
/// hold a connection forever).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` from `registry` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("metrics listener: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(respond(&req, &registry)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                tracing::debug!("metrics connection: {e}");
            }
        });
    }
}

/// The answer to one request: the text format on `/metrics`, else an error status.
fn respond(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "not found: metrics are at /metrics\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "only GET reads /metrics\n".into());
    }
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut body, registry) {
        return reply(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the metrics: {e}\n"));
    }
    let mut r = reply(StatusCode::OK, body);
    if let Ok(v) = prometheus_client::encoding::prometheus_text::CONTENT_TYPE.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// A histogram of durations in seconds, from 100 µs to about 100 s, doubling.
pub fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 21))
}

/// A histogram of counts (sizes of batches, of messages), from 1 to about a million.
pub fn counts() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 11))
}

/// Writes one gauge read at scrape time.
pub fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

/// Writes one counter read at scrape time (a total kept elsewhere).
pub fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

/// Writes a gauge with one label, one sample per value of it.
pub fn gauges<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: impl IntoIterator<Item = (&'a str, i64)>,
) -> std::fmt::Result {
    let kind = ConstGauge::new(0i64).metric_type();
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (value, n) in values {
        ConstGauge::new(n).encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::collector::Collector;

    #[derive(Debug)]
    struct Fixed;

    impl Collector for Fixed {
        fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
            gauge(&mut e, "berth_term", "The term", 7)?;
            counter(&mut e, "berth_beats", "Beats", 3)?;
            gauges(&mut e, "berth_tasks", "Tasks by state", "state", [("running", 2), ("failed", 1)])
        }
    }

    fn text(registry: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut s, registry).unwrap();
        s
    }

    #[test]
    fn collected_figures_are_written_as_prometheus_reads_them() {
        let mut r = Registry::default();
        r.register_collector(Box::new(Fixed));
        let s = text(&r);
        assert!(s.contains("# TYPE berth_term gauge\nberth_term 7\n"), "{s}");
        assert!(s.contains("# TYPE berth_beats_total counter\nberth_beats_total 3\n"), "{s}");
        assert!(s.contains("berth_tasks{state=\"running\"} 2\nberth_tasks{state=\"failed\"} 1\n"), "{s}");
    }

    #[tokio::test]
    async fn the_listener_answers_metrics_and_refuses_other_paths() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut r = Registry::default();
        let h = seconds();
        r.register("berth_commit_seconds", "Commit latency", h.clone());
        h.observe(0.002);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Arc::new(r)));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("content-type: text/plain; version=0.0.4"), "{ok}");
        assert!(ok.contains("berth_commit_seconds_bucket{le=\"0.0016\"} 0\n"), "{ok}");
        assert!(ok.contains("berth_commit_seconds_bucket{le=\"0.0032\"} 1\n"), "{ok}");
        assert!(ok.contains("berth_commit_seconds_count 1\n"), "{ok}");
        let missing = get("/").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        server.abort();
    }
}
