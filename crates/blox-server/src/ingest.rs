//! Event ingestion: several receivers long-poll the queue; one committer gathers what they received
//! into a batch, applies it to the store in durable transactions (one for a small batch; for a large
//! one, each commit takes what was parsed while the one before committed), and only then deletes the
//! messages. A message that is not a valid ECS event, or is an event of another account or region than
//! the one mirrored, is parked (in the same transaction) and deleted: it never blocks the queue and is
//! never retried forever. Other ECS detail types are counted and dropped.
//!
//! Parsing checks everything the store checks of a document ([`blox_model::storable`]), so a batch's
//! commit does not fail because of one message. Should the store still refuse a write of a batch
//! (an error about the writes, [`StoreError::is_about_the_writes`]), the batch is split in halves and
//! each half committed on its own, down to the one message the store refuses, which is parked with the
//! store's reason: the good messages commit, the bad one is parked. If the backend fails (disk full,
//! I/O), nothing more is committed and only the messages whose effect is committed are deleted: the
//! rest come back after their visibility timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use blox_aws::{EventSource, Message};
use blox_model::{ClusterName, EcsEvent, Origin, Scope};
use blox_store::{DeadLetter, Kind, Outcome, PreparedWrite, Store, StoreError, Write};
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
    /// The account and region mirrored: events of others are parked. Share it with the reconciler's
    /// options, which learns the account from what ECS answers.
    pub mirrored: Arc<Mirrored>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            receivers: 4,
            max_batch: 10_000,
            clusters: None,
            depth_interval: Duration::from_secs(30),
            mirrored: Arc::default(),
        }
    }
}

/// The account and region this blox mirrors, as far as known: the region from the AWS configuration
/// (or the simulator's), the account from `--account-id` (or the simulator's), or else learnt from the
/// first ARN ECS answers the reconciler with. What is not known yet is not checked.
#[derive(Debug, Default)]
pub struct Mirrored {
    account: OnceLock<String>,
    region: OnceLock<String>,
    /// Whether a learnt account that disagrees with the given one was reported.
    disagreement_reported: AtomicBool,
}

impl Mirrored {
    pub fn new(account: Option<String>, region: Option<String>) -> Mirrored {
        let mirrored = Mirrored::default();
        if let Some(account) = account {
            let _ = mirrored.account.set(account);
        }
        if let Some(region) = region {
            let _ = mirrored.region.set(region);
        }
        mirrored
    }

    /// What is known now.
    pub fn scope(&self) -> Scope {
        Scope {
            account: self.account.get().cloned(),
            region: self.region.get().cloned(),
        }
    }

    /// Takes the account and region of an ARN ECS answered with, where they are not known yet. A given
    /// account stays; one that disagrees with ECS's is reported once (events of ECS's account are
    /// then parked: the configuration is wrong).
    pub fn learn(&self, arn: &str) {
        let Ok(origin) = Origin::of_arn(arn) else {
            return;
        };
        for (what, known) in [("account", &self.account), ("region", &self.region)] {
            let answered = match what {
                "account" => &origin.account,
                _ => &origin.region,
            };
            match known.get() {
                Some(known) if known == answered => {}
                Some(known) => {
                    if !self.disagreement_reported.swap(true, Ordering::Relaxed) {
                        tracing::error!(
                            mirrored = %known,
                            ecs = %answered,
                            "ECS answers for another {what} than the one blox mirrors: its events will be parked; check --account-id and the AWS configuration"
                        );
                    }
                }
                None => {
                    if known.set(answered.clone()).is_ok() {
                        tracing::info!(%answered, "mirroring the {what} ECS answers for; events of others are parked");
                    }
                }
            }
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
    /// Invalid messages, events of another account or region, and messages the store refused.
    pub parked: usize,
    pub dropped: usize,
    /// Times a part of the batch was split in two because the store refused one of its writes.
    pub splits: usize,
}

/// Why a message is parked (the `reason` label of `blox_events_parked_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParkedAs {
    /// Not a valid ECS event.
    Invalid,
    /// An event of another account or region.
    Foreign,
    /// The store refused its write (found by splitting a batch whose commit failed).
    Refused,
}

impl ParkedAs {
    fn label(self) -> &'static str {
        match self {
            ParkedAs::Invalid => "invalid",
            ParkedAs::Foreign => "foreign",
            ParkedAs::Refused => "refused",
        }
    }
}

/// Messages parsed at a time while earlier ones are committed (see `Ingestor::parse_and_apply`):
/// small, so that the first commit of a batch starts soon.
const PARSE_CHUNK: usize = 250;

/// What parsing a batch's messages needs: the account and region mirrored, the batch's receipt time
/// (for parked messages), the clusters mirrored.
struct Parsing {
    scope: Scope,
    received_at: String,
    clusters: Option<Vec<ClusterName>>,
}

impl Parsing {
    /// What a message becomes: an event's write, a parked message, or nothing (dropped).
    fn entry(&self, message: Message) -> Entry {
        let (scope, received_at) = (&self.scope, self.received_at.as_str());
        let mut entry = Entry {
            message,
            write: None,
            kind: None,
            parked_as: None,
            outcome: None,
        };
        let event = match EcsEvent::parse(&entry.message.body) {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(message_id = entry.message.id, error = %err, "parking a message that is not a valid ECS event");
                entry.park(ParkedAs::Invalid, err.to_string(), received_at);
                return entry;
            }
        };
        if let Some(origin) = event.origin()
            && let Err(foreign) = scope.check(&origin)
        {
            tracing::warn!(message_id = entry.message.id, error = %foreign, "parking an event of another account or region");
            entry.park(ParkedAs::Foreign, foreign.to_string(), received_at);
            return entry;
        }
        match event {
            EcsEvent::Task { cluster, task } if self.allowed(&cluster) => {
                entry.write = Some(PreparedWrite::new(Write::Upsert(documents::task(cluster, &task))));
                entry.kind = Some(Kind::Task);
            }
            EcsEvent::ContainerInstance { cluster, instance } if self.allowed(&cluster) => {
                entry.write = Some(PreparedWrite::new(Write::Upsert(documents::instance(
                    cluster, &instance,
                ))));
                entry.kind = Some(Kind::Instance);
            }
            EcsEvent::Task { .. } | EcsEvent::ContainerInstance { .. } => {
                metrics::counter!(m::EVENTS_DROPPED, "reason" => "cluster_not_allowed").increment(1);
            }
            EcsEvent::Other { detail_type } => {
                tracing::debug!(
                    detail_type,
                    message_id = entry.message.id,
                    "dropping an ECS event blox does not mirror"
                );
                metrics::counter!(m::EVENTS_DROPPED, "reason" => "other_detail_type").increment(1);
            }
        }
        entry
    }

    fn allowed(&self, cluster: &ClusterName) -> bool {
        self.clusters
            .as_ref()
            .is_none_or(|allowed| allowed.contains(cluster))
    }
}

/// A received message and what it becomes.
struct Entry {
    message: Message,
    /// The write still to commit: moved to the store when committed.
    write: Option<PreparedWrite>,
    /// The entity kind of an event's write, for the metrics; `None` for a parked or dropped message.
    kind: Option<Kind>,
    parked_as: Option<ParkedAs>,
    /// Set once the write is committed.
    outcome: Option<Outcome>,
}

impl Entry {
    /// Parsing made no write of it, on purpose: neither an event's write nor a parked message.
    fn dropped(&self) -> bool {
        self.kind.is_none() && self.parked_as.is_none()
    }

    fn park(&mut self, as_: ParkedAs, reason: String, received_at: &str) {
        self.write = Some(PreparedWrite::new(Write::Park(DeadLetter {
            id: 0,
            message_id: Some(self.message.id.clone()),
            received_at: received_at.to_owned(),
            reason,
            body: self.message.body.clone(),
        })));
        self.kind = None;
        self.parked_as = Some(as_);
    }
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
        let scope = self.options.mirrored.scope();
        if scope.account.is_none() || scope.region.is_none() {
            tracing::info!(
                account = scope.account.as_deref().unwrap_or("unknown"),
                region = scope.region.as_deref().unwrap_or("unknown"),
                "events are not checked against what is not known yet of the mirrored account and region (the reconciler learns the account from ECS; --account-id gives it)"
            );
        }
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

    /// Applies one batch; deletes its messages from the queue only once the store has committed their
    /// effect (or their parking). `Err` when the backend failed: then the messages whose effect was
    /// committed before the failure are deleted, and the others stay in the queue.
    pub async fn commit(&self, batch: Vec<Message>) -> Result<BatchReport, ()> {
        let oldest_sent = batch.iter().filter_map(|msg| msg.sent_at_ms).min();
        let parsing = Arc::new(Parsing {
            scope: self.options.mirrored.scope(),
            received_at: clock::now_rfc3339(),
            clusters: self.options.clusters.clone(),
        });
        let mut report = BatchReport::default();
        let (entries, committed) = self.parse_and_apply(batch, &parsing, &mut report).await;
        for entry in &entries {
            let label = entry.kind.map(Kind::name).unwrap_or("none");
            match (entry.outcome, entry.dropped()) {
                (_, true) => report.dropped += 1,
                (None, false) => {}
                (Some(Outcome::Written { .. }), _) => {
                    report.applied += 1;
                    metrics::counter!(m::EVENTS_APPLIED, "kind" => label).increment(1);
                }
                (Some(Outcome::Parked { .. }), _) => {
                    report.parked += 1;
                    let reason = entry.parked_as.unwrap_or(ParkedAs::Invalid).label();
                    metrics::counter!(m::EVENTS_PARKED, "reason" => reason).increment(1);
                }
                (Some(Outcome::Stale | Outcome::Kept | Outcome::Deleted { .. }), _) => {
                    report.stale += 1;
                    metrics::counter!(m::EVENTS_STALE, "kind" => label).increment(1);
                }
            }
        }
        let receipts: Vec<String> = match &committed {
            Ok(()) => entries.into_iter().map(|entry| entry.message.receipt).collect(),
            Err(err) => {
                metrics::counter!(m::INGEST_COMMIT_FAILURES).increment(1);
                let done: Vec<String> = entries
                    .into_iter()
                    .filter(|entry| entry.outcome.is_some())
                    .map(|entry| entry.message.receipt)
                    .collect();
                tracing::error!(
                    error = %err,
                    committed = done.len(),
                    "commit failed; the messages not committed stay in the queue"
                );
                done
            }
        };
        if committed.is_ok()
            && let Some(sent) = oldest_sent
        {
            let lag_ms = clock::now_unix_ms().saturating_sub(sent);
            metrics::gauge!(m::QUEUE_LAG_SECONDS).set(lag_ms as f64 / 1000.0);
        }
        // Committed: now the messages may go. A failed delete only means a harmless redelivery.
        if !receipts.is_empty() {
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
        }
        committed.map(|()| report).map_err(|_| ())
    }

    /// Parses the batch and commits it: a blocking thread parses it a chunk at a time while the
    /// store commits, each commit taking every chunk parsed by then, so that parsing (one core, ~6 µs
    /// an event) and committing overlap instead of adding up, and commits grow to what the parser is
    /// ahead by (fewer transactions, one fsync each). A small batch is parsed in place. On a failure
    /// the entries after it are left uncommitted (their messages stay in the queue); the entries
    /// returned are those parsed.
    async fn parse_and_apply(
        &self,
        batch: Vec<Message>,
        parsing: &Arc<Parsing>,
        report: &mut BatchReport,
    ) -> (Vec<Entry>, Result<(), StoreError>) {
        if batch.len() <= PARSE_CHUNK {
            let mut entries: Vec<Entry> = batch.into_iter().map(|message| parsing.entry(message)).collect();
            let committed = self.apply_isolating(&mut entries, parsing, report).await;
            return (entries, committed);
        }
        let mut all: Vec<Entry> = Vec::with_capacity(batch.len());
        let (parsed_tx, mut parsed) = mpsc::unbounded_channel::<Vec<Entry>>();
        let parser = {
            let parsing = Arc::clone(parsing);
            tokio::task::spawn_blocking(move || {
                let mut rest = batch.into_iter();
                loop {
                    let chunk: Vec<Entry> = rest
                        .by_ref()
                        .take(PARSE_CHUNK)
                        .map(|message| parsing.entry(message))
                        .collect();
                    // Empty at the end; a send fails once a commit failed and nothing more is wanted.
                    if chunk.is_empty() || parsed_tx.send(chunk).is_err() {
                        return;
                    }
                }
            })
        };
        while let Some(chunk) = parsed.recv().await {
            let from = all.len();
            all.extend(chunk);
            while let Ok(more) = parsed.try_recv() {
                all.extend(more);
            }
            let committed = self.apply_isolating(&mut all[from..], parsing, report).await;
            if committed.is_err() {
                return (all, committed);
            }
        }
        // The channel closes when the parser returns, or if it panicked: then part of the batch was
        // never parsed, and its messages stay in the queue.
        if let Err(error) = parser.await {
            let error = StoreError::Backend {
                backend: "ingest",
                operation: "parse",
                message: error.to_string(),
            };
            return (all, Err(error));
        }
        (all, Ok(()))
    }

    /// Commits the entries' writes: all in one transaction when the store takes them; when it refuses
    /// one of them, each half on its own, down to the single write it refuses, which is parked with
    /// the store's reason instead. Parts commit in the batch's order. Sets the outcome of every entry
    /// committed; `Err` on a failure of the backend (entries committed before it keep their outcome).
    async fn apply_isolating(
        &self,
        entries: &mut [Entry],
        parsing: &Parsing,
        report: &mut BatchReport,
    ) -> Result<(), StoreError> {
        // Ranges of entries still to commit; the next one on top.
        let mut pending = vec![(0, entries.len())];
        while let Some((start, end)) = pending.pop() {
            let part: Vec<usize> = (start..end).filter(|&i| entries[i].write.is_some()).collect();
            if part.is_empty() {
                continue;
            }
            // An event's write is moved to the store, not copied: should the commit fail, it is
            // parsed again from its message (parsing is pure). A parked message's is copied.
            let writes: Vec<PreparedWrite> = part
                .iter()
                .filter_map(|&i| {
                    let entry = &mut entries[i];
                    if entry.parked_as.is_some() {
                        entry.write.clone()
                    } else {
                        entry.write.take()
                    }
                })
                .collect();
            let applied = self.store.apply_prepared(writes).await;
            if applied.is_err() {
                for &i in &part {
                    let entry = &mut entries[i];
                    if entry.write.is_none() {
                        entry.write = parsing.entry(entry.message.clone()).write;
                    }
                }
            }
            match applied {
                Ok(outcomes) => {
                    for (&i, outcome) in part.iter().zip(outcomes) {
                        entries[i].outcome = Some(outcome);
                    }
                }
                Err(err) if err.is_about_the_writes() && part.len() > 1 => {
                    metrics::counter!(m::INGEST_BATCH_SPLITS).increment(1);
                    report.splits += 1;
                    tracing::warn!(error = %err, messages = part.len(), "the store refused a write of the batch; committing it in halves");
                    let middle = part[part.len() / 2];
                    pending.push((middle, end));
                    pending.push((start, middle));
                }
                Err(err) if err.is_about_the_writes() && entries[part[0]].parked_as.is_none() => {
                    let entry = &mut entries[part[0]];
                    tracing::warn!(message_id = entry.message.id, error = %err, "parking a message the store refused");
                    entry.park(
                        ParkedAs::Refused,
                        format!("the store refused it: {err}"),
                        &parsing.received_at,
                    );
                    pending.push((start, end));
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
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
