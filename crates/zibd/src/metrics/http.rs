//! Adapter: the plain-HTTP metrics endpoint (`daemon.metrics_listen`). `GET /metrics` (and
//! `/`) answers the current metrics text; anything else 404 or 405. One task accepts, one task
//! per connection serves; all stop on the daemon's shutdown token.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr} (daemon.metrics_listen): {source}")]
pub struct ListenError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` (port 0 picks a free one); at start, so a port in use stops the daemon
/// with a clear error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| ListenError { addr, source })?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the metrics endpoint listens beyond loopback and has no authentication");
    }
    Ok(listener)
}

/// Serves `render()`'s text on `listener` until `stop`.
pub fn serve(
    listener: TcpListener,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) {
    if let Ok(bound) = listener.local_addr() {
        tracing::info!(%bound, "serving metrics on http://{bound}/metrics");
    }
    let conns = tracker.clone();
    tracker.spawn(async move {
        loop {
            let stream = tokio::select! {
                () = stop.cancelled() => return,
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics endpoint: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (render, stop) = (render.clone(), stop.clone());
            conns.spawn(async move {
                let service = service_fn(move |req| {
                    let render = render.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &*render)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => if let Err(e) = r {
                        tracing::debug!(error = %e, "metrics endpoint: connection ended with an error");
                    },
                    () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
                }
            });
        }
    });
}

fn answer(req: &Request<Incoming>, render: &dyn Fn() -> String) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: String, content_type: &str| {
        let mut r = Response::new(Full::new(Bytes::from(text)));
        *r.status_mut() = status;
        if let Ok(v) = header::HeaderValue::from_str(content_type) {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        r
    };
    if !matches!(req.uri().path(), "/metrics" | "/") {
        return plain(StatusCode::NOT_FOUND, "not found: try /metrics\n".into(), "text/plain");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into(), "text/plain");
        r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    plain(StatusCode::OK, render(), zib_core::metrics::CONTENT_TYPE)
}
