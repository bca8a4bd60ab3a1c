//! The server's own resource bounds — connections, requests in flight, request and write timeouts,
//! body size, and a graceful shutdown bounded in time — and the layer that makes every error JSON.
//! (Streams are capped in [`crate::stream`], by the same [`Limits`].)
//!
//! [`serve_http`] is the HTTP server: an accept loop over any [`axum::serve::Listener`] (a TLS
//! listener plugs in there), at most `max_connections` connections, each served by hyper with a
//! header read timeout, its socket wrapped in [`WriteTimeout`], and on shutdown a grace after which
//! the connections still open are closed. The middleware here ([`layers`]) bounds what one request
//! may take.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt as _;
use futures::FutureExt as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::{Layer as _, Service as _};

use crate::auth::{self, Tokens};
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

    /// Requests being answered right now (streams and probes aside). Read when metrics are
    /// scraped: a gauge moved on every request would cost each request two contended atomics.
    pub fn in_flight_now(&self) -> usize {
        self.limits
            .max_in_flight
            .max(1)
            .saturating_sub(self.in_flight.available_permits())
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
    path.starts_with("/v1/stream/") || path == crate::ui::EVENTS_PATH
}

/// Cheap operational endpoints that must answer even when the API is full (probes, scrapes).
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Wraps every route of `app` in the request guard ([`GuardLayer`]). Without `tokens`, every
/// request goes on.
pub fn layers(app: Router, gates: Gates, tokens: Option<Arc<Tokens>>) -> Router {
    app.layer(GuardLayer(Arc::new(Guard { gates, tokens })))
}

/// What the guard shares between requests.
struct Guard {
    gates: Gates,
    tokens: Option<Arc<Tokens>>,
}

/// The one middleware every request passes, written as a plain service: one boxed future per
/// request, where a layer per concern (and axum's `from_fn`) costs several boxes and clones of the
/// route, and `blox bench` holds the whole guard to 5% of a GET's latency. In order:
///
/// 1. the in-flight gate: 503 with `Retry-After` when `max_in_flight` are being answered; the
///    permit is held until the response body is sent. Streams (capped by [`Gates::streams`]) and
///    probes pass.
/// 2. the token check ([`auth::check`]), inside the gate, so that a flood without tokens is bounded
///    like any other;
/// 3. the body limit (413 past `max_body_bytes`) and the request timeout (503; streams end on
///    their own);
/// 4. a panic caught and answered 500; every error made JSON ([`json_errors`]);
/// 5. the answer counted by route template and status ([`crate::metrics::count_answer`]).
#[derive(Clone)]
struct GuardLayer(Arc<Guard>);

impl<S> tower::Layer<S> for GuardLayer {
    type Service = GuardService<S>;

    fn layer(&self, inner: S) -> GuardService<S> {
        GuardService {
            inner,
            guard: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct GuardService<S> {
    inner: S,
    guard: Arc<Guard>,
}

impl<S> tower::Service<Request> for GuardService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The readied service answers; a clone waits for the next request.
        let inner = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, inner);
        let guard = self.guard.clone();
        Box::pin(async move { Ok(guard.answer(request, inner).await) })
    }
}

impl Guard {
    async fn answer<S>(&self, mut request: Request, mut inner: S) -> Response
    where
        S: tower::Service<Request, Response = Response, Error = Infallible>,
    {
        let started = Instant::now();
        let route = request.extensions().get::<MatchedPath>().cloned();
        let path = request.uri().path();
        let (stream, probe) = (is_stream(path), is_probe(path));
        let limits = &self.gates.limits;
        let permit = if stream || probe {
            None
        } else if let Ok(permit) = self.gates.in_flight.clone().try_acquire_owned() {
            Some(permit)
        } else {
            metrics::counter!(m::API_REQUESTS_REJECTED, "reason" => "in_flight").increment(1);
            let full = busy(
                "TooManyRequests",
                format!(
                    "{} requests are being answered, the most this server takes at once; retry later",
                    limits.max_in_flight
                ),
            );
            return counted(route.as_ref(), full.into_response(), started);
        };
        let response = match auth::check(self.tokens.as_deref(), &mut request) {
            Err(refusal) => {
                tracing::debug!(reason = refusal.reason(), method = %request.method(), "request refused");
                refusal.response(request.method())
            }
            Ok(()) => {
                let max_body = limits.max_body_bytes;
                let answer = AssertUnwindSafe(async move {
                    if request.body().is_end_stream() {
                        inner.call(request).await
                    } else {
                        // The limit as axum's extractors read it (their own is 2 MiB). Only for
                        // a body: it costs an allocation, and GETs have none.
                        DefaultBodyLimit::max(max_body).layer(inner).call(request).await
                    }
                })
                .catch_unwind();
                let answer = if stream {
                    Ok(answer.await)
                } else {
                    tokio::time::timeout(limits.request_timeout, answer).await
                };
                match answer {
                    Ok(Ok(Ok(response))) => response,
                    Ok(Ok(Err(never))) => match never {},
                    Ok(Err(_panic)) => {
                        tracing::error!("a request handler panicked");
                        ApiError::internal_message("answering the request").into_response()
                    }
                    Err(_elapsed) => {
                        metrics::counter!(m::API_REQUEST_TIMEOUTS).increment(1);
                        busy(
                            "RequestTimeout",
                            format!(
                                "the request was not answered within {}; retry later",
                                humantime::format_duration(limits.request_timeout)
                            ),
                        )
                        .into_response()
                    }
                }
            }
        };
        let response = counted(
            route.as_ref(),
            to_json(response, limits.max_body_bytes).await,
            started,
        );
        match permit {
            Some(permit) => response.map(|body| Body::new(Held { body, _held: permit })),
            None => response,
        }
    }
}

fn counted(route: Option<&MatchedPath>, response: Response, started: Instant) -> Response {
    let route = route.map_or("unmatched", MatchedPath::as_str);
    m::count_answer(route, response.status().as_u16(), started.elapsed());
    response
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
    to_json(next.run(request).await, max_body).await
}

/// [`json_errors`] on one response.
async fn to_json(response: Response, max_body: usize) -> Response {
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

/// `listener`'s connections with Nagle's algorithm off. With it on, the last small write of an
/// answer (a chunked body's end, a stream's line after another) waits for the client's delayed ACK:
/// up to 40 ms more for a listing that takes 10.
pub fn without_nagle(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY on a connection");
        }
    })
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
    let _gauge = RaisedGauge::open(m::HTTP_CONNECTIONS);
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
struct RaisedGauge(&'static str);

impl RaisedGauge {
    fn open(name: &'static str) -> RaisedGauge {
        metrics::gauge!(name).increment(1.0);
        RaisedGauge(name)
    }
}

impl Drop for RaisedGauge {
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

/// Declares in the OpenAPI document what the request guard may answer on any route: a 503 when the
/// server is full or a request times out (streams declare their own; probes pass the gate), and a
/// 413 on every operation that takes a body.
pub struct GuardDoc;

impl utoipa::Modify for GuardDoc {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};

        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, description) in [
            (
                "Busy",
                "As many requests are being answered as the server takes (`TooManyRequests`, \
                 --max-in-flight) or the request was not answered within --request-timeout \
                 (`RequestTimeout`); retry after `Retry-After` seconds.",
            ),
            ("BodyTooLarge", "The body is larger than --max-body-size."),
        ] {
            let error = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build();
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/json", error)
                .build();
            components.responses.insert(name.to_owned(), RefOr::T(response));
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            if is_probe(path) || is_stream(path) {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.head,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                responses
                    .entry("503".into())
                    .or_insert_with(|| RefOr::Ref(Ref::from_response_name("Busy")));
                if operation.request_body.is_some() {
                    responses
                        .entry("413".into())
                        .or_insert_with(|| RefOr::Ref(Ref::from_response_name("BodyTooLarge")));
                }
            }
        }
    }
}
