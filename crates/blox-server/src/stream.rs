//! Change streams: newline-delimited JSON records, one per change, replayed from the change log from
//! `entityVersion` (inclusive, as v0.3's) and then live. Each client reads the log at its own pace
//! through its own task, so a slow client only slows itself; it never holds up ingestion or other
//! clients.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use blox_api::ErrorBody;
use blox_model::ClusterName;
use blox_store::{Kind, StoreError};
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::error::ApiError;
use crate::query::Params;
use crate::render;

/// How long a stream resuming at a position this replica's copy of a shared store has not reached
/// waits for it before answering that the position is ahead of the change log.
const SHARED_STORE_CATCH_UP: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// A heartbeat is sent after this much silence, so that dead connections are noticed and (with
    /// `heartbeat=position`) so that a client knows how far the stream has read.
    pub heartbeat: Duration,
    /// Changes read from the log per step. With `chunk` and `buffer`, what a stream holds at most
    /// while its client does not read (about `batch` changes, `buffer` chunks, and hyper's buffer).
    pub batch: usize,
    /// Bytes of records per chunk sent (a chunk is cut once it reaches this size).
    pub chunk: usize,
    /// Chunks buffered per client before its reader waits for it.
    pub buffer: usize,
    /// Ends every stream on shutdown.
    pub shutdown: CancellationToken,
    /// Open streams right now (also exported as a metric).
    pub open: Arc<AtomicUsize>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            heartbeat: Duration::from_secs(15),
            batch: 128,
            chunk: 32 * 1024,
            buffer: 4,
            shutdown: CancellationToken::new(),
            open: Arc::default(),
        }
    }
}

/// Stream task changes (`TaskRecord`s, one JSON record per line; deleted ones carry
/// `metadata.deleted`).
#[utoipa::path(get, path = "/v1/stream/tasks", tag = "cluster state", params(blox_api::StreamQuery),
    responses(
        (status = 200, content_type = "application/octet-stream", body = blox_api::TaskRecord,
         description = "one TaskRecord per line; a final StreamError line if the stream must end; after a quiet \
                        spell a heartbeat: an empty line, or a StreamHeartbeat line with heartbeat=position. \
                        Served as application/octet-stream, v0.3's type, unless the client accepts application/x-ndjson"),
        (status = 400, body = ErrorBody, description = "entityVersion is not a non-negative integer (InvalidEntityVersion), \
            older than the retained change log (EntityVersionCompacted) or ahead of it (EntityVersionOutOfRange)"),
        (status = 503, body = ErrorBody, description = "as many streams are open as the server takes (--max-streams); see Retry-After")))]
pub async fn stream_tasks(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    open(state, Kind::Task, query, &headers).await
}

/// Stream container-instance changes (`InstanceRecord`s, one JSON record per line).
#[utoipa::path(get, path = "/v1/stream/instances", tag = "cluster state", params(blox_api::StreamQuery),
    responses(
        (status = 200, content_type = "application/octet-stream", body = blox_api::InstanceRecord,
         description = "one InstanceRecord per line; a final StreamError line if the stream must end; after a \
                        quiet spell a heartbeat: an empty line, or a StreamHeartbeat line with heartbeat=position. \
                        Served as application/octet-stream, v0.3's type, unless the client accepts application/x-ndjson"),
        (status = 400, body = ErrorBody, description = "entityVersion is not a non-negative integer (InvalidEntityVersion), \
            older than the retained change log (EntityVersionCompacted) or ahead of it (EntityVersionOutOfRange)"),
        (status = 503, body = ErrorBody, description = "as many streams are open as the server takes (--max-streams); see Retry-After")))]
pub async fn stream_instances(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    open(state, Kind::Instance, query, &headers).await
}

/// The content type of a stream: v0.3's `application/octet-stream`, unless the client names NDJSON
/// (`application/x-ndjson`, what the lines are) among the types it accepts.
fn content_type(headers: &HeaderMap) -> &'static str {
    let accepts = |media: &str| {
        headers.get_all(header::ACCEPT).iter().any(|value| {
            value.to_str().is_ok_and(|v| {
                v.split(',').any(|part| {
                    part.split(';')
                        .next()
                        .is_some_and(|m| m.trim().eq_ignore_ascii_case(media))
                })
            })
        })
    };
    if accepts("application/x-ndjson") {
        "application/x-ndjson"
    } else {
        "application/octet-stream"
    }
}

/// What a heartbeat line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heartbeat {
    /// An empty line: every JSON decoder skips it (v0.3's clients included).
    Empty,
    /// `{"heartbeat":{"entityVersion":"N"}}`: the stream's position, for clients that asked.
    Position,
}

async fn open(
    state: Arc<AppState>,
    kind: Kind,
    query: Option<String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref(), &["entityVersion", "cluster", "heartbeat"])?;
    let cluster = params.cluster()?.map(|c| c.name);
    let heartbeat = match params.get("heartbeat") {
        None | Some("empty") => Heartbeat::Empty,
        Some("position") => Heartbeat::Position,
        Some(other) => {
            return Err(ApiError::bad_request(
                "heartbeat",
                "InvalidHeartbeat",
                format!("invalid heartbeat {other:?}: expected empty or position"),
            ));
        }
    };
    let start = match params.entity_version()? {
        Some(from) => {
            let after = position_before(from);
            // A client resuming on this replica what it read on another may be a few milliseconds
            // ahead of this replica's copy of a shared store: wait for the copy, briefly.
            if state.leadership.shared() {
                let mut head = state.store.subscribe();
                let _ =
                    tokio::time::timeout(SHARED_STORE_CATCH_UP, head.wait_for(|head| *head >= after)).await;
            }
            // Check the resume point now, while the answer can still be a 4xx: the store says
            // whether the log still holds every change after it.
            state
                .store
                .changes(after, 0)
                .await
                .map_err(|err| ApiError::from_log_read(inclusive(err, from)))?;
            after
        }
        None => state.store.log_bounds().await?.head,
    };
    let permit = permit(&state)?;
    let (tx, rx) = mpsc::channel::<Bytes>(state.stream.buffer.max(1));
    let pump = Pump {
        kind,
        cluster,
        heartbeat,
        tx,
        _permit: permit,
    };
    tokio::spawn(pump.run(state, start));
    let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<_, std::convert::Infallible>));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(headers)),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// The change log's position a stream starting at version `from` reads after. As v0.3's streams
/// (an etcd watch from that revision), `entityVersion` is inclusive, the first version to send: a
/// client resuming from the last record it read gets that record again (at least once). The change
/// log is read after a position, the change before it.
fn position_before(from: u64) -> u64 {
    from.saturating_sub(1)
}

/// The version a stream that has read the log up to `position` goes on from: what it says to
/// resume from (heartbeats, errors), so that nothing comes twice.
fn version_after(position: u64) -> u64 {
    position + 1
}

/// A resume point's error, judged on the change log's position before `from` (the `entityVersion`
/// asked for), in `entityVersion`'s own terms: `from`, and the oldest version a stream can start
/// from.
fn inclusive(err: StoreError, from: u64) -> StoreError {
    match err {
        StoreError::Compacted { oldest_resumable, .. } => StoreError::Compacted {
            requested: from,
            oldest_resumable: version_after(oldest_resumable),
        },
        StoreError::Future { head, .. } => StoreError::Future {
            requested: from,
            head,
        },
        other => other,
    }
}

/// One of the `--max-streams` open streams (of every kind), or the 503 that says none is free.
pub(crate) fn permit(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    state.gates.streams.clone().try_acquire_owned().map_err(|_| {
        metrics::counter!(crate::metrics::API_REQUESTS_REJECTED, "reason" => "streams").increment(1);
        crate::limits::busy(
            "TooManyStreams",
            format!(
                "{} streams are open, the most this server takes; retry later",
                state.gates.limits.max_streams
            ),
        )
    })
}

/// Counts open streams, whatever way they end.
pub(crate) struct ClientGauge(&'static str, Arc<AtomicUsize>);

impl ClientGauge {
    fn open(kind: Kind, open: Arc<AtomicUsize>) -> ClientGauge {
        ClientGauge::labelled(kind.name(), open)
    }

    /// A stream that is not of an entity kind (`dashboard`: the live pages' events).
    pub(crate) fn labelled(label: &'static str, open: Arc<AtomicUsize>) -> ClientGauge {
        metrics::gauge!(crate::metrics::STREAM_CLIENTS, "kind" => label).increment(1.0);
        open.fetch_add(1, Ordering::SeqCst);
        ClientGauge(label, open)
    }
}

impl Drop for ClientGauge {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::STREAM_CLIENTS, "kind" => self.0).decrement(1.0);
        self.1.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One stream's reader of the change log.
struct Pump {
    kind: Kind,
    cluster: Option<ClusterName>,
    heartbeat: Heartbeat,
    tx: mpsc::Sender<Bytes>,
    /// The stream's place under `--max-streams`, given back when the pump ends.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Pump {
    /// Reads the change log from `position` and sends matching records until the client goes away,
    /// the server shuts down, or the client falls behind the retained log. A heartbeat goes out
    /// whenever nothing was sent for `heartbeat`, also while changes that do not match go by.
    async fn run(self, state: Arc<AppState>, mut position: u64) {
        let _gauge = ClientGauge::open(self.kind, state.stream.open.clone());
        // The view's reader of the change log is every stream's: a stream at the head reads what the
        // view read, from memory; one further behind reads the store until it catches up.
        let mut head = state.view.applied_changes();
        let options = &state.stream;
        let shutdown = &options.shutdown;
        let mut last_sent = Instant::now();
        loop {
            // Mark the head as seen before reading, so a change the view reads after ours wakes the
            // wait below.
            head.borrow_and_update();
            let batch = options.batch.max(1);
            let changes = match state.view.changes_after(position, batch) {
                Some(recent) => Ok(recent),
                None => tokio::select! {
                    changes = state.store.changes(position, batch) => {
                        changes.map(|changes| changes.into_iter().map(Arc::new).collect())
                    }
                    () = shutdown.cancelled() => return,
                },
            };
            let changes: Vec<Arc<blox_store::Change>> = match changes {
                Ok(changes) => changes,
                Err(err) => {
                    let _ = self
                        .send(error_line(inclusive(err, version_after(position))), shutdown)
                        .await;
                    return;
                }
            };
            if let Some(last) = changes.last() {
                let last = last.seq;
                let mut out = Vec::new();
                for change in changes.iter().filter(|c| self.matches(c)) {
                    render::record(&mut out, change.seq, change.deleted, &change.doc.body);
                    out.push(b'\n');
                    if out.len() >= options.chunk {
                        if !self.send(Bytes::from(std::mem::take(&mut out)), shutdown).await {
                            return;
                        }
                        last_sent = Instant::now();
                    }
                }
                drop(changes);
                position = last;
                if !out.is_empty() {
                    if !self.send(Bytes::from(out), shutdown).await {
                        return;
                    }
                    last_sent = Instant::now();
                }
                // Changes go by but none matches: the client still hears from the stream.
                if last_sent.elapsed() >= options.heartbeat {
                    if !self.send(self.heartbeat_line(position), shutdown).await {
                        return;
                    }
                    last_sent = Instant::now();
                }
                continue;
            }
            tokio::select! {
                changed = head.changed() => if changed.is_err() { return },
                () = tokio::time::sleep_until(last_sent + options.heartbeat) => {
                    if !self.send(self.heartbeat_line(position), shutdown).await {
                        return;
                    }
                    last_sent = Instant::now();
                }
                () = self.tx.closed() => return,
                () = shutdown.cancelled() => return,
            }
        }
    }

    fn matches(&self, change: &blox_store::Change) -> bool {
        change.doc.key.kind == self.kind && self.cluster.as_ref().is_none_or(|c| *c == change.doc.key.cluster)
    }

    /// Hands `bytes` to the connection; false once the client is gone or the server shuts down. A
    /// client that stops reading holds this up only until the write timeout closes its connection.
    async fn send(&self, bytes: Bytes, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            sent = self.tx.send(bytes) => sent.is_ok(),
            () = shutdown.cancelled() => false,
        }
    }

    /// A heartbeat when the stream has read the log up to `position`: with `heartbeat=position`, the
    /// version to resume from (see [`version_after`]).
    fn heartbeat_line(&self, position: u64) -> Bytes {
        match self.heartbeat {
            Heartbeat::Empty => Bytes::from_static(b"\n"),
            Heartbeat::Position => {
                let heartbeat = blox_api::StreamHeartbeat {
                    heartbeat: blox_api::StreamPosition {
                        entity_version: version_after(position).to_string(),
                    },
                };
                let mut line = serde_json::to_vec(&heartbeat).unwrap_or_default();
                line.push(b'\n');
                Bytes::from(line)
            }
        }
    }
}

fn error_line(err: StoreError) -> Bytes {
    let body = match err {
        StoreError::Compacted { .. } | StoreError::Future { .. } => ApiError::from_log_read(err).body(),
        other => {
            tracing::error!(error = %other, "stream ended by a store error");
            ErrorBody {
                code: "InternalError".into(),
                message: "the change log could not be read".into(),
                field: None,
                resource_type: None,
                resource_id: None,
            }
        }
    };
    let mut line = serde_json::to_vec(&blox_api::StreamError { error: body }).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}
