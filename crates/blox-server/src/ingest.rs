//! Event ingestion: several receivers long-poll the queue; one committer gathers what they received
//! into a batch, applies it to the store in one durable transaction, and only then deletes the
//! messages. A message that is not a valid ECS event is parked (in the same transaction) and deleted:
//! it never blocks the queue and is never retried forever. Other ECS detail types are counted and
//! dropped. If a commit fails, nothing is deleted and the queue redelivers later.

use std::sync::Arc;
use std::time::Duration;

use blox_aws::{EventSource, Message};
use blox_model::{ClusterName, EcsEvent};
use blox_store::{DeadLetter, Kind, Outcome, Store, Write};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{clock, documents, metrics as m};

#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Receive calls in flight at once.
    pub receivers: usize,
    /// Messages committed together at most. Batches are whatever has been received while the last
    /// commit ran, so they grow only under a backlog, where bigger commits share more of redb's
    /// copied pages (10,000 per commit applies ~1.7x faster than 1,000 on the bench machine).
    pub max_batch: usize,
    /// When set, events of other clusters are dropped.
    pub clusters: Option<Vec<ClusterName>>,
    /// How often the queue depth is sampled for the metrics.
    pub depth_interval: Duration,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            receivers: 4,
            max_batch: 10_000,
            clusters: None,
            depth_interval: Duration::from_secs(30),
        }
    }
}

pub struct Ingestor {
    store: Arc<dyn Store>,
    source: Arc<dyn EventSource>,
    options: IngestOptions,
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub applied: usize,
    pub stale: usize,
    pub parked: usize,
    pub dropped: usize,
}

impl Ingestor {
    pub fn new(store: Arc<dyn Store>, source: Arc<dyn EventSource>, options: IngestOptions) -> Ingestor {
        Ingestor {
            store,
            source,
            options,
        }
    }

    /// Runs until `shutdown`; messages already received are committed before it returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let receivers = self.options.receivers.max(1);
        // Room for about one commit's worth of receives (SQS gives at most 10 messages each), so
        // that a backlog is committed in large batches while receivers keep receiving; not more,
        // since messages waiting here age towards their visibility timeout.
        let capacity = (self.options.max_batch / 10).max(receivers);
        let (tx, mut rx) = mpsc::channel::<Vec<Message>>(capacity);
        let tasks = TaskTracker::new();
        for _ in 0..receivers {
            tasks.spawn(receive_loop(self.source.clone(), tx.clone(), shutdown.clone()));
        }
        drop(tx);
        tasks.spawn(depth_loop(
            self.source.clone(),
            self.options.depth_interval,
            shutdown.clone(),
        ));
        tasks.close();

        let mut backoff = Backoff::new();
        // Ends when every receiver has stopped and the channel is drained.
        while let Some(first) = rx.recv().await {
            let mut batch = first;
            while batch.len() < self.options.max_batch {
                match rx.try_recv() {
                    Ok(more) => batch.extend(more),
                    Err(_) => break,
                }
            }
            match self.commit(batch).await {
                Ok(_) => backoff.reset(),
                Err(()) => {
                    tokio::select! {
                        () = tokio::time::sleep(backoff.next()) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
            }
        }
        tasks.wait().await;
    }

    /// Applies one batch; deletes its messages from the queue only once the store has committed it.
    pub async fn commit(&self, batch: Vec<Message>) -> Result<BatchReport, ()> {
        let mut report = BatchReport::default();
        let mut writes = Vec::with_capacity(batch.len());
        let mut kinds = Vec::with_capacity(batch.len());
        let mut receipts = Vec::with_capacity(batch.len());
        let oldest_sent = batch.iter().filter_map(|msg| msg.sent_at_ms).min();
        for msg in batch {
            receipts.push(msg.receipt);
            let write = match EcsEvent::parse(&msg.body) {
                Ok(EcsEvent::Task { cluster, task }) if self.allowed(&cluster) => {
                    Some((Write::Upsert(documents::task(cluster, &task)), Some(Kind::Task)))
                }
                Ok(EcsEvent::ContainerInstance { cluster, instance }) if self.allowed(&cluster) => Some((
                    Write::Upsert(documents::instance(cluster, &instance)),
                    Some(Kind::Instance),
                )),
                Ok(EcsEvent::Task { .. } | EcsEvent::ContainerInstance { .. }) => {
                    metrics::counter!(m::EVENTS_DROPPED, "reason" => "cluster_not_allowed").increment(1);
                    None
                }
                Ok(EcsEvent::Other { detail_type }) => {
                    tracing::debug!(
                        detail_type,
                        message_id = msg.id,
                        "dropping an ECS event blox does not mirror"
                    );
                    metrics::counter!(m::EVENTS_DROPPED, "reason" => "other_detail_type").increment(1);
                    None
                }
                Err(err) => {
                    tracing::warn!(message_id = msg.id, error = %err, "parking a message that is not a valid ECS event");
                    let parked = DeadLetter {
                        id: 0,
                        message_id: Some(msg.id),
                        received_at: clock::now_rfc3339(),
                        reason: err.to_string(),
                        body: msg.body,
                    };
                    Some((Write::Park(parked), None))
                }
            };
            match write {
                Some((write, kind)) => {
                    writes.push(write);
                    kinds.push(kind);
                }
                None => report.dropped += 1,
            }
        }
        let outcomes = match self.store.apply(writes).await {
            Ok(outcomes) => outcomes,
            Err(err) => {
                metrics::counter!(m::INGEST_COMMIT_FAILURES).increment(1);
                tracing::error!(error = %err, messages = receipts.len(), "commit failed; the messages stay in the queue");
                return Err(());
            }
        };
        for (outcome, kind) in outcomes.iter().zip(&kinds) {
            let label = kind.map(Kind::name).unwrap_or("none");
            match outcome {
                Outcome::Written { .. } => {
                    report.applied += 1;
                    metrics::counter!(m::EVENTS_APPLIED, "kind" => label).increment(1);
                }
                Outcome::Parked { .. } => {
                    report.parked += 1;
                    metrics::counter!(m::EVENTS_PARKED).increment(1);
                }
                Outcome::Stale | Outcome::Kept | Outcome::Deleted { .. } => {
                    report.stale += 1;
                    metrics::counter!(m::EVENTS_STALE, "kind" => label).increment(1);
                }
            }
        }
        if let Some(sent) = oldest_sent {
            let lag_ms = clock::now_unix_ms().saturating_sub(sent);
            metrics::gauge!(m::QUEUE_LAG_SECONDS).set(lag_ms as f64 / 1000.0);
        }
        // Committed: now the messages may go. A failed delete only means a harmless redelivery.
        match self.source.delete(&receipts).await {
            Ok(failed) if failed.is_empty() => {}
            Ok(failed) => tracing::warn!(
                failed = failed.len(),
                "some messages could not be deleted; they will be redelivered"
            ),
            Err(err) => {
                tracing::warn!(error = %err, "deleting committed messages failed; they will be redelivered")
            }
        }
        Ok(report)
    }

    fn allowed(&self, cluster: &ClusterName) -> bool {
        self.options
            .clusters
            .as_ref()
            .is_none_or(|allowed| allowed.contains(cluster))
    }
}

async fn receive_loop(
    source: Arc<dyn EventSource>,
    tx: mpsc::Sender<Vec<Message>>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new();
    loop {
        let received = tokio::select! {
            received = source.receive(10) => received,
            () = shutdown.cancelled() => return,
        };
        match received {
            Ok(messages) => {
                backoff.reset();
                if !messages.is_empty() && tx.send(messages).await.is_err() {
                    return;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "receiving from the event queue failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff.next()) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

async fn depth_loop(source: Arc<dyn EventSource>, interval: Duration, shutdown: CancellationToken) {
    loop {
        match source.depth().await {
            Ok(depth) => {
                metrics::gauge!(m::QUEUE_MESSAGES, "state" => "visible").set(depth.visible as f64);
                metrics::gauge!(m::QUEUE_MESSAGES, "state" => "in_flight").set(depth.in_flight as f64);
            }
            Err(err) => tracing::debug!(error = %err, "could not read the queue depth"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Exponential back-off from 100 ms to 30 s, for failures of the queue or the store.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);

    fn new() -> Backoff {
        Backoff(Self::FIRST)
    }

    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        wait
    }

    fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}
