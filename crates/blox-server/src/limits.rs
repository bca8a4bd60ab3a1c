//! The server's own resource bounds — connections, requests in flight, request and write timeouts,
//! body size, and a graceful shutdown bounded in time — and the layer that makes every error JSON.
//! (Streams are capped in [`crate::stream`], by the same [`Limits`].)
//!
//! [`serve_http`] is the HTTP server: an accept loop over any [`axum::serve::Listener`] (a TLS
//! listener plugs in there), at most `max_connections` connections, each served by hyper with a
//! header read timeout, its socket wrapped in [`WriteTimeout`], and on shutdown a grace after which
//! the connections still open are closed. The middleware here ([`layers`]) bounds what one request
//! may take.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::error::{ApiError, V03Text};
use crate::metrics as m;

/// How long a client may take to send a request's headers (also bounds an idle keep-alive
/// connection's wait for its next request).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// What a 503 of a full server asks clients to wait before trying again, in seconds.
pub const RETRY_AFTER_SECONDS: u64 = 1;
/// hyper's buffer per connection (request headers in, response bytes out): hyper stops taking
/// chunks of a response once this much is queued for the socket.
const CONNECTION_BUFFER: usize = 64 * 1024;

/// The bounds, each a `blox server` flag.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections; past it, new ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Open streams; past it, a new stream is 503 with `Retry-After`.
    pub max_streams: usize,
    /// Requests being answered at once, streams and `/healthz`, `/readyz`, `/metrics` aside; past
    /// it, 503 with `Retry-After`. A request is in flight until its response body is sent.
    pub max_in_flight: usize,
    /// Longest time to answer a request (streams aside) before it is given up with a 503.
    pub request_timeout: Duration,
    /// A connection whose client has accepted no byte for this long is closed: a stream whose
    /// client stopped reading ends here instead of holding its buffers.
    pub write_timeout: Duration,
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// On shutdown, how long open connections get to finish before they are closed.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_streams: 512,
            max_in_flight: 256,
            request_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_body_bytes: 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// The semaphores behind the limits, shared by every request of a server.
#[derive(Debug, Clone)]
pub struct Gates {
    pub limits: Limits,
    in_flight: Arc<Semaphore>,
    pub(crate) streams: Arc<Semaphore>,
}

impl Gates {
    pub fn new(limits: Limits) -> Gates {
        Gates {
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            streams: Arc::new(Semaphore::new(limits.max_streams.max(1))),
            limits,
        }
    }
}

impl Default for Gates {
    fn default() -> Self {
        Gates::new(Limits::default())
    }
}

/// A 503 asking the client to come back: the server is full.
pub fn busy(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::unavailable(code, message).retry_after(RETRY_AFTER_SECONDS)
}

fn is_stream(path: &str) -> bool {
    path.starts_with("/v1/stream/")
}

/// Cheap operational endpoints that must answer even when the API is full (probes, scrapes).
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Wraps `app` in the request bounds and the JSON error layer, outermost last: errors made JSON ←
/// panics caught ← requests counted ← in-flight gate ← request timeout ← body limit ← the routes.
pub fn layers(app: Router, gates: Gates) -> Router {
    let max_body = gates.limits.max_body_bytes;
    app.layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(gates.clone(), request_timeout))
        .layer(middleware::from_fn_with_state(gates, in_flight))
        .layer(middleware::from_fn(crate::count_requests))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .layer(middleware::from_fn_with_state(max_body, json_errors))
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::internal_message("answering the request").into_response()
}

/// Refuses a request with a 503 when `max_in_flight` are being answered; the permit is held until
/// the response body has been sent.
async fn in_flight(State(gates): State<Gates>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if is_stream(path) || is_probe(path) {
        return next.run(request).await;
    }
    let Ok(permit) = gates.in_flight.clone().try_acquire_owned() else {
        metrics::counter!(m::API_REQUESTS_REJECTED, "reason" => "in_flight").increment(1);
        return busy(
            "TooManyRequests",
            format!(
                "{} requests are being answered, the most this server takes at once; retry later",
                gates.limits.max_in_flight
            ),
        )
        .into_response();
    };
    let gauge = InFlightGauge::new();
    let response = next.run(request).await;
    response.map(|body| {
        Body::new(Held {
            body,
            _held: (permit, gauge),
        })
    })
}

/// Gives up a request (streams aside) that has not been answered within `request_timeout`.
async fn request_timeout(State(gates): State<Gates>, request: Request, next: Next) -> Response {
    if is_stream(request.uri().path()) {
        return next.run(request).await;
    }
    let limit = gates.limits.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!(m::API_REQUEST_TIMEOUTS).increment(1);
            busy(
                "RequestTimeout",
                format!(
                    "the request was not answered within {}; retry later",
                    humantime::format_duration(limit)
                ),
            )
            .into_response()
        }
    }
}

/// Requests in flight, as a gauge.
struct InFlightGauge;

impl InFlightGauge {
    fn new() -> InFlightGauge {
        metrics::gauge!(m::API_REQUESTS_IN_FLIGHT).increment(1.0);
        InFlightGauge
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        metrics::gauge!(m::API_REQUESTS_IN_FLIGHT).decrement(1.0);
    }
}

/// A response body that holds something (a permit) until it is sent or dropped.
struct Held<T> {
    body: Body,
    _held: T,
}

impl<T: Unpin> HttpBody for Held<T> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Makes every error answer `{code, message, field}` JSON: axum's own rejections (a path that is
/// not UTF-8, a body over the limit, ...) and anything else not written by [`ApiError`]. A 5xx's
/// text is logged, never sent. Responses already JSON, or v0.3's text on purpose, pass as they are.
pub async fn json_errors(State(max_body): State<usize>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<ApiError>().is_some()
        || response.extensions().get::<V03Text>().is_some()
        || is_json(&response)
    {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, 16 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let said = |fallback: &str| {
        if text.is_empty() {
            fallback.to_owned()
        } else {
            text.clone()
        }
    };
    let (code, message, field) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            metrics::counter!(m::API_BODIES_TOO_LARGE).increment(1);
            (
                "BodyTooLarge",
                format!("the request body is larger than {max_body} bytes"),
                Some("body"),
            )
        }
        StatusCode::NOT_FOUND => ("UnknownRoute", said("no such endpoint; see /openapi.json"), None),
        StatusCode::METHOD_NOT_ALLOWED => ("MethodNotAllowed", said("method not allowed"), None),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "UnsupportedMediaType",
            said("unsupported media type"),
            Some("body"),
        ),
        StatusCode::UNPROCESSABLE_ENTITY => ("InvalidBody", said("the body does not parse"), Some("body")),
        StatusCode::REQUEST_TIMEOUT => ("RequestTimeout", said("the request took too long"), None),
        s if s.is_server_error() => {
            tracing::error!(status = s.as_u16(), text, "an error answer not written by blox");
            (
                "InternalError",
                "the request failed; see the server log".to_owned(),
                None,
            )
        }
        _ => ("InvalidRequest", said("the request is not valid"), None),
    };
    let error = ApiError {
        status,
        code,
        message,
        field: field.map(str::to_owned),
        details: None,
    };
    let mut rewritten = error.into_response();
    for name in [header::RETRY_AFTER, header::ALLOW] {
        if let Some(value) = parts.headers.get(&name) {
            rewritten.headers_mut().insert(name, value.clone());
        }
    }
    rewritten
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Serves `app` on `listener` until `shutdown`, within the connection and write bounds of `limits`;
/// then lets open connections finish their answers for at most `limits.shutdown_grace` (streams end
/// on `shutdown` by themselves), closes the rest and returns.
pub async fn serve_http<L>(
    mut listener: L,
    app: Router,
    limits: &Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: Debug,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                metrics::counter!(m::HTTP_CONNECTIONS_AT_LIMIT).increment(1);
                tracing::warn!(
                    max = limits.max_connections,
                    "connection limit reached: new connections wait until one closes"
                );
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        tracing::trace!(?remote, "connection accepted");
        let io = WriteTimeout::new(io, limits.write_timeout);
        connections.spawn(connection(io, app.clone(), slot, shutdown.clone()));
    }
    drop(listener);
    let open = connections.len();
    if open > 0 {
        tracing::info!(open, "waiting for open connections to finish");
    }
    let grace = limits.shutdown_grace;
    let finished =
        tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        tracing::warn!(
            open = connections.len(),
            grace = %humantime::format_duration(grace),
            "connections still open after the shutdown grace: closing them"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// One connection: HTTP/1.1 by hyper, until the client closes it, an error or a timeout ends it, or
/// shutdown asks it to finish its answer in progress and close.
async fn connection<I>(io: I, app: Router, slot: OwnedSemaphorePermit, shutdown: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _slot = slot;
    let _gauge = Gauge::open(m::HTTP_CONNECTIONS);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(CONNECTION_BUFFER);
    let served = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::pin!(served);
    let result = tokio::select! {
        result = served.as_mut() => result,
        () = shutdown.cancelled() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}

/// A gauge raised while this lives.
struct Gauge(&'static str);

impl Gauge {
    fn open(name: &'static str) -> Gauge {
        metrics::gauge!(name).increment(1.0);
        Gauge(name)
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}

/// A socket whose writes fail with `TimedOut` once the peer has accepted no byte for `timeout`: the
/// kernel's send buffer stays full only while the client does not read.
pub struct WriteTimeout<I> {
    io: I,
    timeout: Duration,
    /// Since when writes have been waiting, as the deadline to give up at.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<I> WriteTimeout<I> {
    pub fn new(io: I, timeout: Duration) -> WriteTimeout<I> {
        WriteTimeout {
            io,
            timeout,
            stalled: None,
        }
    }

    fn progress<T>(
        &mut self,
        poll: Poll<std::io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                if self.stalled.take().is_some() {
                    metrics::gauge!(m::HTTP_CONNECTIONS_STALLED).decrement(1.0);
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let stalled = self.stalled.get_or_insert_with(|| {
                    metrics::gauge!(m::HTTP_CONNECTIONS_STALLED).increment(1.0);
                    Box::pin(tokio::time::sleep_until(Instant::now() + timeout))
                });
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        metrics::counter!(m::HTTP_WRITE_TIMEOUTS).increment(1);
                        tracing::info!(
                            timeout = %humantime::format_duration(timeout),
                            "closing a connection whose client stopped reading"
                        );
                        Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the client accepted nothing for the write timeout",
                        )))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<I> Drop for WriteTimeout<I> {
    fn drop(&mut self) {
        if self.stalled.is_some() {
            metrics::gauge!(m::HTTP_CONNECTIONS_STALLED).decrement(1.0);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteTimeout<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.progress(poll, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.progress(poll, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.progress(poll, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_shutdown(cx);
        this.progress(poll, cx)
    }
}
