//! The store of blox: one narrow trait, [`Store`], with an embedded [redb] backend (the default) and an
//! in-memory one (for tests), both passing the same [`conformance`] suite. The trait is shaped so that
//! it can also be implemented on etcd (revisions, compare-and-swap, prefix watch).
//!
//! What it keeps:
//! - **entities** (tasks, container instances) as versioned documents keyed by (kind, cluster, id), each
//!   carrying the sequence number of its last change (the API's `entityVersion`);
//! - **scheduler documents** (environments, their revisions, deployments) in the same tables, written
//!   only by compare-and-swap on that sequence number ([`Write::Put`], [`Write::Remove`]);
//! - **secondary indexes** by status and by `startedBy`, so that a filtered listing reads only matching
//!   entries;
//! - a **change log**: one global, strictly increasing sequence, every insert, replace and delete with
//!   the document as it became, kept for a bounded, configurable number of changes;
//! - **tombstones** of deleted entities (as long as their deletion is in the change log, and at least
//!   [`StoreOptions::tombstone_retention`] after it), so that a stale event cannot resurrect what the
//!   reconciler removed;
//! - **parked messages** (the dead-letter table): bodies that could not be applied, with the reason.
//!
//! Writes go through [`Store::apply`]: one durable transaction per call, which is what lets the SQS
//! consumer delete a batch of messages only after their effects are committed.

use std::fmt;

use async_trait::async_trait;
use blox_model::ClusterName;
use thiserror::Error;
use tokio::sync::watch;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

mod codec;
mod engine;
mod etcd;
mod kv;
pub mod leader;
mod log_engine;
mod mem;
mod redb_engine;
mod stores;

pub use etcd::{EtcdConfig, EtcdLeadership, EtcdStore, EtcdTls, WallClock};
pub use log_engine::Opened;
pub use stores::{LogStore, MemStore, RedbStore};

/// What kind of entity a document is: an ECS entity (mirrored, written under the version rule) or a
/// scheduler document (blox's own, written by compare-and-swap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Task,
    Instance,
    /// A scheduler environment. Id: its name.
    Environment,
    /// An immutable revision of an environment. Id: `"{environment}/{revision:010}"` ([`Key::revision`]).
    Revision,
    /// A deployment of an environment revision. Id: the deployment id.
    Deployment,
    /// A start intent of a deployment on an instance. Id: `"{deployment}/{instance ARN}"`
    /// ([`Key::intent`]).
    Intent,
    /// Failed start attempts of a deployment on an instance. Id: as [`Kind::Intent`]'s.
    Failure,
    /// The reservation of an environment name: names are unique across clusters, and replicas
    /// creating one at once race on this key. Id: the name; cluster: [`Key::NAMES`] for every name.
    /// Kept after its environment is deleted (a new environment of the name takes it over).
    Name,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Task,
        Kind::Instance,
        Kind::Environment,
        Kind::Revision,
        Kind::Deployment,
        Kind::Intent,
        Kind::Failure,
        Kind::Name,
    ];

    /// Whether this kind mirrors ECS (written with `Upsert`, `Observe`, `Delete`) rather than being a
    /// scheduler document (written with `Put`, `Remove`).
    pub fn is_ecs(self) -> bool {
        match self {
            Kind::Task | Kind::Instance => true,
            Kind::Environment
            | Kind::Revision
            | Kind::Deployment
            | Kind::Intent
            | Kind::Failure
            | Kind::Name => false,
        }
    }

    /// Lower-case name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Task => "task",
            Kind::Instance => "instance",
            Kind::Environment => "environment",
            Kind::Revision => "revision",
            Kind::Deployment => "deployment",
            Kind::Intent => "intent",
            Kind::Failure => "failure",
            Kind::Name => "name",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Identity of an entity: its kind, its cluster (name) and its id (the task or container-instance ARN;
/// for a scheduler document, see [`Kind`]: its cluster is the environment's).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub kind: Kind,
    pub cluster: ClusterName,
    pub id: String,
}

impl Key {
    pub fn task(cluster: ClusterName, arn: impl Into<String>) -> Key {
        Key {
            kind: Kind::Task,
            cluster,
            id: arn.into(),
        }
    }

    pub fn instance(cluster: ClusterName, arn: impl Into<String>) -> Key {
        Key {
            kind: Kind::Instance,
            cluster,
            id: arn.into(),
        }
    }

    pub fn environment(cluster: ClusterName, name: impl Into<String>) -> Key {
        Key {
            kind: Kind::Environment,
            cluster,
            id: name.into(),
        }
    }

    /// The id is zero-padded so that an environment's revisions sort by number.
    pub fn revision(cluster: ClusterName, environment: &str, revision: u64) -> Key {
        Key {
            kind: Kind::Revision,
            cluster,
            id: format!("{environment}/{revision:010}"),
        }
    }

    pub fn deployment(cluster: ClusterName, id: impl Into<String>) -> Key {
        Key {
            kind: Kind::Deployment,
            cluster,
            id: id.into(),
        }
    }

    /// A deployment's start intent on an instance.
    pub fn intent(cluster: ClusterName, deployment: &str, instance_arn: &str) -> Key {
        Key {
            kind: Kind::Intent,
            cluster,
            id: blox_model::daemon::instance_record_id(deployment, instance_arn),
        }
    }

    /// The cluster of every [`Kind::Name`] key: one key per name, whatever the environment's cluster.
    pub const NAMES: &'static str = "blox-names";

    /// The reservation of an environment name.
    pub fn name(name: impl Into<String>) -> Key {
        Key {
            kind: Kind::Name,
            cluster: ClusterName::new(Self::NAMES).expect("a valid cluster name"),
            id: name.into(),
        }
    }

    /// A deployment's failed start attempts on an instance.
    pub fn failure(cluster: ClusterName, deployment: &str, instance_arn: &str) -> Key {
        Key {
            kind: Kind::Failure,
            cluster,
            id: blox_model::daemon::instance_record_id(deployment, instance_arn),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} in cluster {}", self.kind, self.id, self.cluster)
    }
}

/// An entity as written: identity, ECS version, the fields that are indexed, and the body (the entity's
/// JSON as the API serves it; the store never looks inside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub key: Key,
    /// ECS's per-resource version; 0 = unknown. Ordered by [`blox_model::supersedes`]. Unused (0) for
    /// scheduler documents, which compare-and-swap on the sequence number instead.
    pub version: u64,
    /// `lastStatus` of a task, `status` of an instance, upper case as ECS writes it; the status of an
    /// environment or deployment. Indexed.
    pub status: String,
    /// `startedBy` of a task; for a deployment (or a revision), the name of its environment, so that
    /// an environment's deployments are listed by index; for an intent or a failure record, its
    /// deployment's id. Indexed.
    pub started_by: Option<String>,
    pub body: Vec<u8>,
}

/// A stored entity with the sequence number of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub doc: Document,
}

/// One entry of the change log. For a deletion, `doc` is the entity as it was when deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub deleted: bool,
    pub doc: Document,
}

/// A message that could not be applied, kept for an operator to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Assigned by the store, strictly increasing.
    pub id: u64,
    /// The source's id of the message (the SQS message id), when it had one.
    pub message_id: Option<String>,
    /// RFC 3339 time at which it was parked (given by the caller: the store reads no clock).
    pub received_at: String,
    pub reason: String,
    pub body: String,
}

/// One write of a batch given to [`Store::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Insert the document, or replace the stored one when [`blox_model::supersedes`] says so (a deleted
    /// entity's tombstone counts as stored, with the version it had). Otherwise nothing changes.
    Upsert(Document),
    /// An entity as ECS described it just now (the reconciler's and the executor's writes). Like
    /// `Upsert`, except that:
    /// - a tombstone blocks it only when the description is older than the deletion: ECS listing the
    ///   entity again proves it exists, even at the version it had when it was deleted;
    /// - it replaces a stored entity (or passes a tombstone) whose version is *ahead* of the
    ///   description's when that entity's last change (the deletion's, for a tombstone) is not after
    ///   `unchanged_since`, and the description has a version (not 0). ECS's per-resource version only
    ///   grows, so a version ECS described after it was stored, and ahead of what ECS describes, can
    ///   only have come from a bogus event; a description racing a newer event (stored after
    ///   `unchanged_since`) is stale as usual. `unchanged_since: 0` never corrects ([`Write::observe`]).
    Observe { doc: Document, unchanged_since: u64 },
    /// Delete the entity if it exists and its last change is not after `unchanged_since` (a sequence
    /// number read before the caller looked at ECS). This is how the reconciler removes what ECS no
    /// longer lists without racing events that arrived meanwhile. Leaves a tombstone, kept while the
    /// deletion is in the change log and at least [`StoreOptions::tombstone_retention`] after `at_ms`
    /// (milliseconds since the Unix epoch, given by the caller: the store reads no clock; 0 for "no
    /// time", whose tombstone goes with its deletion's change as before).
    Delete {
        key: Key,
        unchanged_since: u64,
        at_ms: u64,
    },
    /// Park a message. `id` of the given value is ignored: the store assigns it.
    Park(DeadLetter),
    /// Insert or replace a scheduler document if the live record is as expected; otherwise the whole
    /// batch fails with [`StoreError::Conflict`]. Outcome: `Written`.
    Put { doc: Document, expect: Expect },
    /// Remove a scheduler document whose last change is `expect`; otherwise the whole batch fails with
    /// [`StoreError::Conflict`]. Logged as a deletion; leaves no tombstone (no ECS version to guard), so
    /// a later `Put { expect: Absent }` of the key succeeds. Outcome: `Deleted`.
    Remove { key: Key, expect: u64 },
}

impl Write {
    /// An `Observe` that corrects no version ahead of it: an answer of ECS that may race events.
    pub fn observe(doc: Document) -> Write {
        Write::Observe {
            doc,
            unchanged_since: 0,
        }
    }

    /// The variant's name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Write::Upsert(_) => "Upsert",
            Write::Observe { .. } => "Observe",
            Write::Delete { .. } => "Delete",
            Write::Park(_) => "Park",
            Write::Put { .. } => "Put",
            Write::Remove { .. } => "Remove",
        }
    }
}

/// A [`Write`] whose document body is already compressed as the store keeps it, for
/// [`Store::apply_prepared`]: the ingest compresses on its parsing thread, so that the work is not
/// done by the store's single writer.
#[derive(Debug, Clone)]
pub struct PreparedWrite {
    write: Write,
    /// The body's LZ4 block when it is stored compressed ([`codec::compress`]).
    compressed: Option<Vec<u8>>,
}

impl PreparedWrite {
    pub fn new(write: Write) -> PreparedWrite {
        let compressed = match &write {
            Write::Upsert(doc) | Write::Observe { doc, .. } | Write::Put { doc, .. } => {
                codec::compress(&doc.body)
            }
            Write::Delete { .. } | Write::Park(_) | Write::Remove { .. } => None,
        };
        PreparedWrite { write, compressed }
    }

    /// Every one of `writes`, prepared: what [`Store::apply`] does before it takes its write lock.
    pub fn all(writes: Vec<Write>) -> Vec<PreparedWrite> {
        writes.into_iter().map(PreparedWrite::new).collect()
    }

    pub fn into_write(self) -> Write {
        self.write
    }
}

/// What a compare-and-swap write expects of the live record of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No live record (never written, or removed).
    Absent,
    /// A live record whose last change has this sequence number.
    Seq(u64),
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Absent => f.write_str("no live record"),
            Expect::Seq(seq) => write!(f, "seq {seq}"),
        }
    }
}

/// What one [`Write`] did, in the order of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Inserted or replaced; the change has this sequence number.
    Written { seq: u64 },
    /// Not newer than what is stored (or a tombstone): nothing changed.
    Stale,
    /// Deleted; the deletion has this sequence number.
    Deleted { seq: u64 },
    /// A delete that found nothing, or found the entity changed after `unchanged_since`.
    Kept,
    /// Parked with this id.
    Parked { id: u64 },
}

/// Which entities a listing returns. All given fields must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub cluster: Option<ClusterName>,
    /// Compared with [`Document::status`] exactly: callers upper-case.
    pub status: Option<String>,
    pub started_by: Option<String>,
}

/// Where a page starts and how long it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// Continue after this cursor (from [`Page::next`] of the previous page with the same filter).
    pub after: Option<Cursor>,
    /// At most this many items; `None` for all.
    pub limit: Option<usize>,
}

/// An opaque position in a listing. Callers may encode it (the API does, as `nextToken`), and must
/// treat it as untrusted when it comes back: a cursor that does not belong to the listing yields a
/// page starting at the nearest position, never an error or a panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(pub Vec<u8>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Present when there may be more items.
    pub next: Option<Cursor>,
}

/// How [`Store::list_spliced`] writes each entity: `before`, its seq in decimal, `middle`, its
/// body, `after`; `separator` before every entity but the first of the page, and before the first
/// too with `lead` (a page that continues a body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Splice {
    pub before: &'static [u8],
    pub middle: &'static [u8],
    pub after: &'static [u8],
    pub separator: &'static [u8],
    pub lead: bool,
}

impl Splice {
    /// Writes the `index`th entity of a page, its body by `body`.
    pub fn write(
        &self,
        out: &mut Vec<u8>,
        index: usize,
        seq: u64,
        body: impl FnOnce(&mut Vec<u8>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if index > 0 || self.lead {
            out.extend_from_slice(self.separator);
        }
        out.extend_from_slice(self.before);
        out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        out.extend_from_slice(self.middle);
        body(out)?;
        out.extend_from_slice(self.after);
        Ok(())
    }
}

/// A page written by [`Store::list_spliced`].
#[derive(Debug)]
pub struct Spliced {
    pub out: Vec<u8>,
    pub count: usize,
    pub next: Option<Cursor>,
}

/// The retained part of the change log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    /// The oldest position a reader may resume from: changes with `seq > oldest_resumable` are all
    /// retained.
    pub oldest_resumable: u64,
    /// The sequence number of the last committed change (0 before any).
    pub head: u64,
}

/// Options common to every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// How many changes the change log keeps (at least 1). Older ones are trimmed as new ones commit.
    pub change_log_retention: u64,
    /// How many parked messages are kept; the oldest are dropped beyond it.
    pub dead_letter_retention: u64,
    /// How long a deletion's tombstone is kept at least, measured from its [`Write::Delete`]'s `at_ms`
    /// to the latest `at_ms` the store was given (it reads no clock), whatever the change log keeps.
    /// A tombstone also stays as long as its deletion is in the change log.
    pub tombstone_retention: std::time::Duration,
}

impl StoreOptions {
    /// The default of [`StoreOptions::tombstone_retention`]: an hour, longer than an event can stay
    /// in flight (a visibility timeout, 60 s by default) plus a reconcile interval (5 min by default).
    pub const TOMBSTONE_RETENTION: std::time::Duration = std::time::Duration::from_secs(3600);
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            change_log_retention: 1_000_000,
            dead_letter_retention: 10_000,
            tombstone_retention: Self::TOMBSTONE_RETENTION,
        }
    }
}

#[derive(Debug, Error)]
pub enum StoreError {
    /// A reader asked for changes after `requested`, but changes up to `oldest_resumable` are gone.
    #[error(
        "changes after {requested} are no longer retained; the oldest resumable position is {oldest_resumable}"
    )]
    Compacted { requested: u64, oldest_resumable: u64 },
    /// A reader asked for changes after a position the store has not reached.
    #[error("position {requested} is ahead of the change log's head {head}")]
    Future { requested: u64, head: u64 },
    /// A key or indexed value contains a byte the store cannot encode (NUL).
    #[error("{field} contains a NUL byte")]
    InvalidValue { field: &'static str },
    /// The backend failed; the batch was not committed.
    #[error("{backend} backend failed during {operation}: {message}")]
    Backend {
        backend: &'static str,
        operation: &'static str,
        message: String,
    },
    /// Stored bytes did not decode (a bug or a foreign file).
    #[error("corrupt {what} in the store")]
    Corrupt { what: &'static str },
    /// A `Put` or `Remove` found the live record other than expected (`found`: its seq, `None` when
    /// there is none); nothing of the batch was applied.
    #[error(
        "compare-and-swap conflict on {key}: expected {expected}, found {}",
        .found.map_or_else(|| "no live record".to_owned(), |seq| format!("seq {seq}"))
    )]
    Conflict {
        key: Key,
        expected: Expect,
        found: Option<u64>,
    },
    /// A write of the wrong family for its kind: ECS entities are written only under the version rule,
    /// scheduler documents only by compare-and-swap. The batch was refused whole.
    #[error(
        "{write} of a {kind} is refused: {}",
        if kind.is_ecs() {
            "ECS entities are written with Upsert, Observe or Delete (the version rule)"
        } else {
            "scheduler documents are written with Put or Remove (compare-and-swap)"
        }
    )]
    WrongWrite { write: &'static str, kind: Kind },
    /// A `Put` that would replace a revision: revisions are immutable (a change of an environment is
    /// a new revision). The batch was refused whole.
    #[error("{key} is a revision and cannot be replaced: write a new revision instead")]
    ImmutableRevision { key: Key },
    /// A batch that the backend cannot commit in one transaction (etcd's limits on operations and
    /// request bytes) and that may not be split, having compare-and-swap writes. Nothing was applied.
    #[error(
        "the batch needs {operations} operations and {bytes} bytes in one transaction; the backend accepts {max_operations} and {max_bytes}"
    )]
    TooLarge {
        operations: usize,
        bytes: usize,
        max_operations: usize,
        max_bytes: usize,
    },
    /// The write was made through a leader's store ([`leader::Term::store`]) whose term has ended:
    /// another replica may lead now. Nothing was applied.
    #[error("this replica's leadership term has ended: the write was not made")]
    Fenced,
}

impl StoreError {
    /// Whether the error is about the writes given (a value the store cannot encode, a write the
    /// store refuses, a compare-and-swap conflict), not about the backend: the same batch fails the
    /// same way however often it is tried, while a batch without the offending write may commit. A
    /// backend failure (disk full, I/O) or corruption is not: nothing of the batch is at fault.
    pub fn is_about_the_writes(&self) -> bool {
        match self {
            StoreError::InvalidValue { .. }
            | StoreError::Conflict { .. }
            | StoreError::WrongWrite { .. }
            | StoreError::ImmutableRevision { .. }
            | StoreError::TooLarge { .. } => true,
            StoreError::Fenced
            | StoreError::Compacted { .. }
            | StoreError::Future { .. }
            | StoreError::Backend { .. }
            | StoreError::Corrupt { .. } => false,
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies a batch in one durable transaction: when this returns `Ok`, every outcome is committed
    /// (for redb: fsynced). On `Err` (including a compare-and-swap [`StoreError::Conflict`]), nothing
    /// of the batch is, and no sequence number is consumed.
    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<Outcome>, StoreError>;

    /// [`Store::apply`] of writes prepared by the caller. A backend that keeps bodies otherwise
    /// ignores the preparation.
    async fn apply_prepared(&self, writes: Vec<PreparedWrite>) -> Result<Vec<Outcome>, StoreError> {
        self.apply(writes.into_iter().map(PreparedWrite::into_write).collect())
            .await
    }

    async fn get(&self, key: &Key) -> Result<Option<Record>, StoreError>;

    /// Lists entities of a kind matching `filter`, in key order of the index used, reading only
    /// matching index entries when a filter is given.
    async fn list(&self, kind: Kind, filter: &Filter, page: PageRequest) -> Result<Page<Record>, StoreError>;

    /// [`Store::list`] written straight into `out` as `splice` says, each body copied once from
    /// the stored bytes (decompressed into `out`): no record per entity. Returns `out`, the number
    /// of entities written and the cursor of the next page, as `list` would.
    async fn list_spliced(
        &self,
        kind: Kind,
        filter: &Filter,
        page: PageRequest,
        splice: Splice,
        mut out: Vec<u8>,
    ) -> Result<Spliced, StoreError> {
        let page = self.list(kind, filter, page).await?;
        for (i, record) in page.items.iter().enumerate() {
            splice.write(&mut out, i, record.seq, |out| {
                out.extend_from_slice(&record.doc.body);
                Ok(())
            })?;
        }
        Ok(Spliced {
            out,
            count: page.items.len(),
            next: page.next,
        })
    }

    /// Every entity of a kind in a cluster, as (id, seq of its last change): what the reconciler
    /// compares with what ECS lists.
    async fn ids(&self, kind: Kind, cluster: &ClusterName) -> Result<Vec<(String, u64)>, StoreError>;

    /// The clusters that have at least one entity of a kind, in name order.
    async fn clusters(&self, kind: Kind) -> Result<Vec<ClusterName>, StoreError>;

    /// Up to `limit` changes with `seq > after`, oldest first.
    async fn changes(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError>;

    async fn log_bounds(&self) -> Result<LogBounds, StoreError>;

    /// The head of the change log, updated after every commit that wrote a change. Readers wait on it
    /// instead of polling; a slow reader never holds up writers.
    fn subscribe(&self) -> watch::Receiver<u64>;

    /// Parked messages, newest first.
    async fn dead_letters(&self, page: PageRequest) -> Result<Page<DeadLetter>, StoreError>;

    /// Removes a parked message; `false` when there was none with that id.
    async fn remove_dead_letter(&self, id: u64) -> Result<bool, StoreError>;

    /// Number of stored entities of a kind.
    async fn count(&self, kind: Kind) -> Result<u64, StoreError>;
}
