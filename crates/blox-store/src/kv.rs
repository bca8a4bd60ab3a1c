//! The store's logic, written once over [`Engine`]: how a batch of writes becomes entity, index, log,
//! tombstone and dead-letter entries, and how listings read them back.
//!
//! ECS entities and scheduler documents share the tables and the change log; they differ only in the
//! rule that admits a write (the version rule, or compare-and-swap on the last change's seq).

use std::ops::Bound;
use std::sync::Arc;

use blox_model::{ClusterName, supersedes};
use tokio::sync::watch;

use crate::codec::{
    self, Body, EntityView, Index, Tombstone, check_nul, decode_u64, entity_key, entity_key_of_index,
    has_nul, index_key, u64_key,
};
use crate::engine::{Direction, Engine, ReadTx, Table, WriteTx};
use crate::leader::Fence;
use crate::{
    Change, Cursor, DeadLetter, Document, Expect, Filter, Key, Kind, LogBounds, Outcome, Page, PageRequest,
    PreparedWrite, Record, Splice, Spliced, StoreError, StoreOptions, Write,
};

/// The counters kept in the meta table. Loaded at the start of a write transaction, updated in
/// memory while the batch applies, and written back once at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    /// Sequence number of the last change (0 before any).
    head: u64,
    /// Sequence number of the oldest retained change; `head + 1` when the log is empty.
    first: u64,
    /// Id the next parked message gets.
    dead_letter_next: u64,
    /// Number of parked messages.
    dead_letter_count: u64,
    /// The latest deletion time given ([`Write::Delete`]'s `at_ms`): the store's measure of a
    /// tombstone's age, since it reads no clock.
    clock_ms: u64,
    /// Number of entities, by [`count_slot`].
    counts: [u64; KINDS],
}

const KINDS: usize = Kind::ALL.len();

/// The meta table's counters before the counts.
const COUNTERS: usize = 5;

/// The meta table's keys: five counters, then one count per kind in [`count_slot`] order.
const META_KEYS: [&[u8]; COUNTERS + KINDS] = [
    b"head",
    b"first",
    b"dead_letters.next",
    b"dead_letters.count",
    b"tombstones.clock_ms",
    b"count.task",
    b"count.instance",
    b"count.environment",
    b"count.revision",
    b"count.deployment",
    b"count.intent",
    b"count.failure",
    b"count.name",
];

fn count_slot(kind: Kind) -> usize {
    match kind {
        Kind::Task => 0,
        Kind::Instance => 1,
        Kind::Environment => 2,
        Kind::Revision => 3,
        Kind::Deployment => 4,
        Kind::Intent => 5,
        Kind::Failure => 6,
        Kind::Name => 7,
    }
}

impl Meta {
    fn values(&self) -> [u64; COUNTERS + KINDS] {
        let mut values = [0; COUNTERS + KINDS];
        values[..COUNTERS].copy_from_slice(&[
            self.head,
            self.first,
            self.dead_letter_next,
            self.dead_letter_count,
            self.clock_ms,
        ]);
        values[COUNTERS..].copy_from_slice(&self.counts);
        values
    }

    fn load(tx: &dyn ReadTx) -> Result<Meta, StoreError> {
        let mut values = [None; COUNTERS + KINDS];
        for (value, key) in values.iter_mut().zip(META_KEYS) {
            *value = tx
                .get(Table::Meta, key)?
                .map(|bytes| decode_u64(&bytes, "meta value"))
                .transpose()?;
        }
        let [
            head,
            first,
            dead_letter_next,
            dead_letter_count,
            clock_ms,
            counts @ ..,
        ] = values;
        // Absent keys hold their initial values (an empty store's): a key is written once it changes.
        // That is also what keeps files from before the scheduler kinds readable.
        let meta = Meta {
            head: head.unwrap_or(0),
            first: first.unwrap_or(1),
            dead_letter_next: dead_letter_next.unwrap_or(1),
            dead_letter_count: dead_letter_count.unwrap_or(0),
            clock_ms: clock_ms.unwrap_or(0),
            counts: counts.map(|count| count.unwrap_or(0)),
        };
        if meta.first == 0 || meta.first > meta.head + 1 || meta.dead_letter_next == 0 {
            return Err(StoreError::Corrupt { what: "meta value" });
        }
        Ok(meta)
    }

    /// Writes the fields that differ from `before`.
    fn store(&self, tx: &mut dyn WriteTx, before: &Meta) -> Result<(), StoreError> {
        for ((key, value), old) in META_KEYS.iter().zip(self.values()).zip(before.values()) {
            if value != old {
                tx.put(Table::Meta, key, &value.to_be_bytes())?;
            }
        }
        Ok(())
    }
}

/// The store over one engine. Cheap to share: everything lives behind one `Arc`.
pub(crate) struct KvStore<E> {
    inner: Arc<Inner<E>>,
}

impl<E> Clone for KvStore<E> {
    fn clone(&self) -> Self {
        KvStore {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<E> {
    engine: E,
    options: StoreOptions,
    head: watch::Sender<u64>,
}

impl<E: Engine> KvStore<E> {
    /// Wraps an opened engine, reading the head that [`crate::Store::subscribe`] starts from.
    pub(crate) fn open(engine: E, options: StoreOptions) -> Result<Self, StoreError> {
        let head = engine.read(Meta::load)?.head;
        Ok(Self::with_head(engine, options, head))
    }

    /// Wraps an engine known to be empty.
    pub(crate) fn empty(engine: E, options: StoreOptions) -> Self {
        Self::with_head(engine, options, 0)
    }

    fn with_head(engine: E, options: StoreOptions, head: u64) -> Self {
        let (head, _) = watch::channel(head);
        KvStore {
            inner: Arc::new(Inner {
                engine,
                options,
                head,
            }),
        }
    }

    pub(crate) fn options(&self) -> StoreOptions {
        self.inner.options
    }

    pub(crate) fn engine(&self) -> &E {
        &self.inner.engine
    }

    /// Moves [`crate::Store::subscribe`]'s head to the head stored, when another process committed.
    /// Read in place like any read of a few entries: the watch that calls it runs on an async worker.
    pub(crate) async fn refresh_head(&self) -> Result<(), StoreError> {
        let head = self.read_in_place(Meta::load).await?.head;
        self.inner.advance_head(head);
        Ok(())
    }

    /// Runs `f` on the blocking pool when the engine blocks, in place otherwise.
    async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner<E>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        if E::BLOCKING {
            let inner = Arc::clone(&self.inner);
            tokio::task::spawn_blocking(move || f(&inner))
                .await
                .map_err(|error| StoreError::Backend {
                    backend: E::NAME,
                    operation: "spawn_blocking",
                    message: error.to_string(),
                })?
        } else {
            f(&self.inner)
        }
    }

    /// Runs a read of a few entries in place, even on a blocking engine: handing it to the blocking
    /// pool costs more than the read (a B-tree descent that redb serves from its cache, or from the OS
    /// page cache), and requests wait on it. But a read that would wait for a writer (a log store
    /// transaction holds the engine until its fsync: ~90 ms for 10,000 events) waits on the blocking
    /// pool, so that this worker goes on serving everything else.
    async fn read_in_place<R: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn ReadTx) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        match self.inner.engine.try_read(f) {
            Ok(result) => result,
            Err(f) => self.run(move |inner| inner.engine.read(f)).await,
        }
    }

    pub(crate) async fn apply(&self, writes: Vec<Write>) -> Result<Vec<Outcome>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        // Prepared on the store's thread, before its write lock is taken.
        self.commit(None, move || PreparedWrite::all(writes)).await
    }

    pub(crate) async fn apply_prepared(
        &self,
        writes: Vec<PreparedWrite>,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.apply_prepared_fenced(writes, None).await
    }

    /// Compresses the writes' bodies as [`KvStore::apply`] does, on the blocking pool when the engine
    /// blocks: for a caller that splits a batch before committing it (the etcd store).
    pub(crate) async fn prepare(&self, writes: Vec<Write>) -> Result<Vec<PreparedWrite>, StoreError> {
        self.run(move |_| Ok(PreparedWrite::all(writes))).await
    }

    /// [`KvStore::apply_prepared`], committed only while `fence`'s term holds (see [`Engine::write`]).
    pub(crate) async fn apply_prepared_fenced(
        &self,
        writes: Vec<PreparedWrite>,
        fence: Option<Fence>,
    ) -> Result<Vec<Outcome>, StoreError> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        self.commit(fence, move || writes).await
    }

    async fn commit(
        &self,
        fence: Option<Fence>,
        prepare: impl FnOnce() -> Vec<PreparedWrite> + Send + 'static,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.run(move |inner| {
            let writes = prepare();
            check_families(&writes)?;
            let (outcomes, before, after) = inner
                .engine
                .write(fence.as_ref(), |tx| apply_batch(tx, &inner.options, &writes))?;
            if after > before {
                inner.advance_head(after);
            }
            Ok(outcomes)
        })
        .await
    }

    pub(crate) async fn get(&self, key: &Key) -> Result<Option<Record>, StoreError> {
        let key = match entity_key(key) {
            Ok(key) => key,
            // Such a key cannot have been stored.
            Err(StoreError::InvalidValue { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        self.read_in_place(move |tx| {
            tx.get(Table::Entities, &key)?
                .map(|bytes| record(&key, EntityView::decode(&bytes)?))
                .transpose()
        })
        .await
    }

    pub(crate) async fn list(
        &self,
        kind: Kind,
        filter: &Filter,
        page: PageRequest,
    ) -> Result<Page<Record>, StoreError> {
        let filter = filter.clone();
        self.run(move |inner| inner.engine.read(|tx| list(tx, kind, &filter, &page)))
            .await
    }

    pub(crate) async fn list_spliced(
        &self,
        kind: Kind,
        filter: &Filter,
        page: PageRequest,
        splice: Splice,
        out: Vec<u8>,
    ) -> Result<Spliced, StoreError> {
        let filter = filter.clone();
        self.run(move |inner| {
            inner.engine.read(|tx| {
                let (mut out, mut written, mut last) = (out, 0, 0);
                let page = list_with(tx, kind, &filter, &page, |_, entity| {
                    last = out.len();
                    splice.write(&mut out, written, entity.seq, |out| entity.body.append_to(out))?;
                    written += 1;
                    Ok(())
                })?;
                // The listing reads one entity past a full page to know that another follows.
                if written > page.items.len() {
                    out.truncate(last);
                }
                Ok(Spliced {
                    out,
                    count: page.items.len(),
                    next: page.next,
                })
            })
        })
        .await
    }

    pub(crate) async fn ids(
        &self,
        kind: Kind,
        cluster: &ClusterName,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let prefix = codec::entity_prefix(kind, Some(cluster.as_str()));
        self.run(move |inner| {
            inner.engine.read(|tx| {
                let end = prefix_end(&prefix);
                let mut ids = Vec::new();
                tx.range(
                    Table::Entities,
                    Bound::Included(&prefix),
                    end_bound(&end),
                    Direction::Forward,
                    &mut |key, value| {
                        let corrupt = || StoreError::Corrupt { what: "entity key" };
                        let id = key.get(prefix.len()..).ok_or_else(corrupt)?;
                        let id = std::str::from_utf8(id).map_err(|_| corrupt())?;
                        ids.push((id.to_owned(), EntityView::decode_seq(value)?));
                        Ok(true)
                    },
                )?;
                Ok(ids)
            })
        })
        .await
    }

    pub(crate) async fn clusters(&self, kind: Kind) -> Result<Vec<ClusterName>, StoreError> {
        self.run(move |inner| inner.engine.read(|tx| clusters(tx, kind)))
            .await
    }

    pub(crate) async fn changes(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        // Live streams ask from one or two changes behind the head, once per commit and per client:
        // those few entries are read in place. A backlog, or a read that would wait for a writer, goes
        // to the blocking pool at once, as one read: never in place first and then again there.
        let few = move |tx: &dyn ReadTx| {
            let head = check_position(tx, after)?;
            if head - after > CHANGES_IN_PLACE {
                return Ok(None);
            }
            read_changes(tx, after, limit, head).map(Some)
        };
        if let Ok(read) = self.inner.engine.try_read(few)
            && let Some(changes) = read?
        {
            return Ok(changes);
        }
        self.run(move |inner| {
            inner.engine.read(|tx| {
                let head = check_position(tx, after)?;
                read_changes(tx, after, limit, head)
            })
        })
        .await
    }

    pub(crate) async fn log_bounds(&self) -> Result<LogBounds, StoreError> {
        self.read_in_place(|tx| {
            let meta = Meta::load(tx)?;
            Ok(LogBounds {
                oldest_resumable: meta.first - 1,
                head: meta.head,
            })
        })
        .await
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }

    pub(crate) async fn dead_letters(&self, page: PageRequest) -> Result<Page<DeadLetter>, StoreError> {
        self.run(move |inner| inner.engine.read(|tx| dead_letters(tx, &page)))
            .await
    }

    pub(crate) async fn remove_dead_letter(&self, id: u64, fence: Option<Fence>) -> Result<bool, StoreError> {
        self.run(move |inner| {
            inner.engine.write(fence.as_ref(), |tx| {
                let key = u64_key(id);
                if tx.get(Table::DeadLetters, &key)?.is_none() {
                    return Ok(false);
                }
                let before = Meta::load(tx)?;
                let mut meta = before;
                tx.delete(Table::DeadLetters, &key)?;
                meta.dead_letter_count = meta.dead_letter_count.saturating_sub(1);
                meta.store(tx, &before)?;
                Ok(true)
            })
        })
        .await
    }

    pub(crate) async fn count(&self, kind: Kind) -> Result<u64, StoreError> {
        self.read_in_place(move |tx| Ok(Meta::load(tx)?.counts[count_slot(kind)]))
            .await
    }
}

impl<E> Inner<E> {
    /// Concurrent batches may finish out of order: the head only moves forward.
    fn advance_head(&self, head: u64) {
        self.head.send_if_modified(|current| {
            let newer = head > *current;
            if newer {
                *current = head;
            }
            newer
        });
    }
}

/// At most this many changes are read in place (see [`KvStore::changes`]).
pub(crate) const CHANGES_IN_PLACE: u64 = 16;

/// Checks that the change log can be read after `after`; returns its head.
fn check_position(tx: &dyn ReadTx, after: u64) -> Result<u64, StoreError> {
    let meta = Meta::load(tx)?;
    let oldest_resumable = meta.first - 1;
    if after < oldest_resumable {
        return Err(StoreError::Compacted {
            requested: after,
            oldest_resumable,
        });
    }
    if after > meta.head {
        return Err(StoreError::Future {
            requested: after,
            head: meta.head,
        });
    }
    Ok(meta.head)
}

/// Up to `limit` changes after `after`, which [`check_position`] accepted with this `head`.
fn read_changes(tx: &dyn ReadTx, after: u64, limit: usize, head: u64) -> Result<Vec<Change>, StoreError> {
    let mut changes = Vec::with_capacity(limit.min((head - after) as usize));
    if limit == 0 {
        return Ok(changes);
    }
    let start = u64_key(after);
    tx.range(
        Table::Log,
        Bound::Excluded(&start),
        Bound::Unbounded,
        Direction::Forward,
        &mut |key, value| {
            changes.push(codec::decode_change(decode_u64(key, "change key")?, value)?);
            Ok(changes.len() < limit)
        },
    )?;
    Ok(changes)
}

/// Refuses a batch with a write of the wrong family for its kind before any transaction starts: an
/// `Upsert` of a deployment would bypass compare-and-swap, a `Put` of a task the version rule; and a
/// `Put` replacing a revision, which is immutable.
fn check_families(writes: &[PreparedWrite]) -> Result<(), StoreError> {
    for PreparedWrite { write, .. } in writes {
        let (kind, ecs_write) = match write {
            Write::Upsert(doc) | Write::Observe { doc, .. } => (doc.key.kind, true),
            Write::Delete { key, .. } => (key.kind, true),
            Write::Put { doc, expect } => {
                if doc.key.kind == Kind::Revision && *expect != Expect::Absent {
                    return Err(StoreError::ImmutableRevision { key: doc.key.clone() });
                }
                (doc.key.kind, false)
            }
            Write::Remove { key, .. } => (key.kind, false),
            Write::Park(_) => continue,
        };
        if kind.is_ecs() != ecs_write {
            return Err(StoreError::WrongWrite {
                write: write.name(),
                kind,
            });
        }
    }
    Ok(())
}

/// Applies a batch inside one write transaction; returns the outcomes and the head before and after.
fn apply_batch(
    tx: &mut dyn WriteTx,
    options: &StoreOptions,
    writes: &[PreparedWrite],
) -> Result<(Vec<Outcome>, u64, u64), StoreError> {
    let before = Meta::load(tx)?;
    let mut meta = before;
    let mut outcomes = Vec::with_capacity(writes.len());
    for PreparedWrite { write, compressed } in writes {
        let compressed = compressed.as_deref();
        outcomes.push(match write {
            Write::Upsert(doc) => upsert(tx, &mut meta, doc, compressed, None)?,
            Write::Observe { doc, unchanged_since } => {
                upsert(tx, &mut meta, doc, compressed, Some(*unchanged_since))?
            }
            Write::Delete {
                key,
                unchanged_since,
                at_ms,
            } => delete(tx, &mut meta, key, *unchanged_since, *at_ms)?,
            Write::Put { doc, expect } => put(tx, &mut meta, doc, compressed, *expect)?,
            Write::Remove { key, expect } => remove(tx, &mut meta, key, *expect)?,
            Write::Park(letter) => {
                let id = meta.dead_letter_next;
                tx.put(
                    Table::DeadLetters,
                    &u64_key(id),
                    &codec::encode_dead_letter(letter),
                )?;
                meta.dead_letter_next += 1;
                meta.dead_letter_count += 1;
                Outcome::Parked { id }
            }
        });
    }
    let tombstone_retention_ms = u64::try_from(options.tombstone_retention.as_millis()).unwrap_or(u64::MAX);
    trim_log(
        tx,
        &mut meta,
        options.change_log_retention.max(1),
        tombstone_retention_ms,
    )?;
    if meta.clock_ms > before.clock_ms {
        expire_tombstones(tx, &meta, tombstone_retention_ms)?;
    }
    trim_dead_letters(tx, &mut meta, options.dead_letter_retention)?;
    meta.store(tx, &before)?;
    Ok((outcomes, before.head, meta.head))
}

/// `observed`: the document is ECS's answer to a Describe, which proves the entity exists now, with
/// the `unchanged_since` of [`Write::Observe`]. `compressed`: the body's as [`PreparedWrite`] has it.
fn upsert(
    tx: &mut dyn WriteTx,
    meta: &mut Meta,
    doc: &Document,
    compressed: Option<&[u8]>,
    observed: Option<u64>,
) -> Result<Outcome, StoreError> {
    let key = document_key(doc)?;
    let stored_bytes = tx.fetch(Table::Entities, &key)?;
    let stored = stored_bytes.as_deref().map(EntityView::decode).transpose()?;
    // A version ahead of what ECS describes, stored before the caller asked ECS: bogus (see
    // `Write::Observe`).
    let bogus = |version: u64, seq: u64| {
        observed.is_some_and(|unchanged_since| {
            doc.version != 0 && version > doc.version && seq <= unchanged_since
        })
    };
    match &stored {
        Some(stored) => {
            let identical = stored.version == doc.version
                && stored.status == doc.status
                && stored.started_by == doc.started_by.as_deref()
                && stored.body.equals(&doc.body)?;
            if !supersedes(Some(stored.version), doc.version, identical) && !bogus(stored.version, stored.seq)
            {
                return Ok(Outcome::Stale);
            }
        }
        None => {
            // A tombstone stands for the deleted entity, whose content is gone: never identical.
            if let Some(bytes) = tx.get(Table::Tombstones, &key)? {
                let tombstone = codec::decode_tombstone(&bytes)?;
                // An event no newer than the deletion is a late duplicate; a Describe at the same
                // version means ECS lists the entity again (e.g. its cluster is mirrored again).
                let blocked = if observed.is_some() {
                    doc.version < tombstone.version && !bogus(tombstone.version, tombstone.seq)
                } else {
                    !supersedes(Some(tombstone.version), doc.version, false)
                };
                if blocked {
                    return Ok(Outcome::Stale);
                }
                remove_tombstone(tx, &key, &tombstone)?;
            }
            meta.counts[count_slot(doc.key.kind)] += 1;
        }
    }
    let seq = write_entity(tx, meta, &key, doc, compressed, stored)?;
    Ok(Outcome::Written { seq })
}

/// A compare-and-swap write of a scheduler document (the family was checked by [`check_families`]).
fn put(
    tx: &mut dyn WriteTx,
    meta: &mut Meta,
    doc: &Document,
    compressed: Option<&[u8]>,
    expect: Expect,
) -> Result<Outcome, StoreError> {
    let key = document_key(doc)?;
    let stored_bytes = tx.fetch(Table::Entities, &key)?;
    let stored = stored_bytes.as_deref().map(EntityView::decode).transpose()?;
    let found = stored.as_ref().map(|stored| stored.seq);
    let matched = match expect {
        Expect::Absent => found.is_none(),
        Expect::Seq(seq) => found == Some(seq),
    };
    if !matched {
        // The caller's transaction rolls back: nothing of the batch stays, no seq is consumed.
        return Err(StoreError::Conflict {
            key: doc.key.clone(),
            expected: expect,
            found,
        });
    }
    if stored.is_none() {
        meta.counts[count_slot(doc.key.kind)] += 1;
    }
    let seq = write_entity(tx, meta, &key, doc, compressed, stored)?;
    Ok(Outcome::Written { seq })
}

/// The entity key of a document to write, refusing NUL in it or in the indexed fields.
fn document_key(doc: &Document) -> Result<Vec<u8>, StoreError> {
    let key = entity_key(&doc.key)?;
    check_nul("status", &doc.status)?;
    if let Some(started_by) = &doc.started_by {
        check_nul("started_by", started_by)?;
    }
    Ok(key)
}

/// Writes `doc` over `stored` (its current entity, if any) at the next seq: entity, indexes, change.
/// The caller decided that the write applies and counted an insert. `compressed`: the body's LZ4
/// block from [`PreparedWrite`], for both the entity and its change.
fn write_entity(
    tx: &mut dyn WriteTx,
    meta: &mut Meta,
    key: &[u8],
    doc: &Document,
    compressed: Option<&[u8]>,
    stored: Option<EntityView<'_>>,
) -> Result<u64, StoreError> {
    let seq = meta.head + 1;
    meta.head = seq;
    let entity = EntityView::of(seq, doc, Body::of(&doc.body, compressed));
    tx.put_owned(Table::Entities, key.to_vec(), entity.encode())?;
    let (old_status, old_started_by) = stored.map_or((None, None), |s| (Some(s.status), s.started_by));
    reindex(tx, key, Index::Status, old_status, Some(&doc.status))?;
    reindex(
        tx,
        key,
        Index::StartedBy,
        old_started_by,
        doc.started_by.as_deref(),
    )?;
    tx.put_owned(
        Table::Log,
        u64_key(seq).to_vec(),
        codec::encode_change(key, false, &entity)?,
    )?;
    Ok(seq)
}

/// Moves an entity's entry in one index; nothing to do (the common case) when the value is unchanged.
fn reindex(
    tx: &mut dyn WriteTx,
    key: &[u8],
    index: Index,
    old: Option<&str>,
    new: Option<&str>,
) -> Result<(), StoreError> {
    if old == new {
        return Ok(());
    }
    if let Some(old) = old {
        tx.delete(Table::Index, &index_key(key, index, old))?;
    }
    if let Some(new) = new {
        tx.put(Table::Index, &index_key(key, index, new), &[])?;
    }
    Ok(())
}

fn delete(
    tx: &mut dyn WriteTx,
    meta: &mut Meta,
    key: &Key,
    unchanged_since: u64,
    at_ms: u64,
) -> Result<Outcome, StoreError> {
    let entity_key = entity_key(key)?;
    // The clock moves with every deletion given a time, even one that deletes nothing.
    meta.clock_ms = meta.clock_ms.max(at_ms);
    let Some(bytes) = tx.get(Table::Entities, &entity_key)? else {
        return Ok(Outcome::Kept);
    };
    let stored = EntityView::decode(&bytes)?;
    if stored.seq > unchanged_since {
        return Ok(Outcome::Kept);
    }
    let seq = remove_entity(tx, meta, &entity_key, key.kind, &stored)?;
    let tombstone = Tombstone {
        version: stored.version,
        seq,
        at_ms,
    };
    tx.put(
        Table::Tombstones,
        &entity_key,
        &codec::encode_tombstone(&tombstone),
    )?;
    if at_ms != 0 {
        tx.put(Table::TombstoneTimes, &tombstone.time_key(), &entity_key)?;
    }
    Ok(Outcome::Deleted { seq })
}

/// Removes an entity's tombstone and its time entry.
fn remove_tombstone(
    tx: &mut dyn WriteTx,
    entity_key: &[u8],
    tombstone: &Tombstone,
) -> Result<(), StoreError> {
    tx.delete(Table::Tombstones, entity_key)?;
    if tombstone.at_ms != 0 {
        tx.delete(Table::TombstoneTimes, &tombstone.time_key())?;
    }
    Ok(())
}

/// Whether a tombstone is past its retention: kept for at least `retention_ms` after its deletion's
/// time, as the store's clock measures it. One without a time (0) is, as soon as asked: it lives as
/// long as its deletion is in the change log, as tombstones always did.
fn expired(tombstone: &Tombstone, clock_ms: u64, retention_ms: u64) -> bool {
    tombstone.at_ms == 0 || tombstone.at_ms.saturating_add(retention_ms) <= clock_ms
}

/// Removes the tombstones whose deletion left the change log and whose retention has passed at the
/// store's clock: the entries of the time table up to the cutoff, oldest first. A tombstone whose
/// deletion is still in the log loses its time entry only: [`trim_log`] removes it with its deletion
/// (it is expired by then, the clock never going back).
fn expire_tombstones(tx: &mut dyn WriteTx, meta: &Meta, retention_ms: u64) -> Result<(), StoreError> {
    let Some(cutoff) = meta.clock_ms.checked_sub(retention_ms) else {
        return Ok(());
    };
    // Entries with a time up to the cutoff, inclusive: every key below (cutoff + 1, seq 0).
    let end = codec::tombstone_time_key(cutoff.saturating_add(1), 0);
    let mut due = Vec::new();
    tx.range(
        Table::TombstoneTimes,
        Bound::Unbounded,
        Bound::Excluded(&end),
        Direction::Forward,
        &mut |key, entity_key| {
            due.push((
                key.to_vec(),
                codec::decode_tombstone_time_key(key)?.1,
                entity_key.to_vec(),
            ));
            Ok(true)
        },
    )?;
    for (time_key, seq, entity_key) in due {
        tx.delete(Table::TombstoneTimes, &time_key)?;
        if seq >= meta.first {
            continue;
        }
        if let Some(bytes) = tx.get(Table::Tombstones, &entity_key)?
            && codec::decode_tombstone(&bytes)?.seq == seq
        {
            tx.delete(Table::Tombstones, &entity_key)?;
        }
    }
    Ok(())
}

/// A compare-and-swap removal of a scheduler document. No tombstone: it would guard an ECS version
/// these documents do not have, and CAS already stops a stale writer.
fn remove(tx: &mut dyn WriteTx, meta: &mut Meta, key: &Key, expect: u64) -> Result<Outcome, StoreError> {
    let entity_key = entity_key(key)?;
    let stored_bytes = tx.get(Table::Entities, &entity_key)?;
    let stored = stored_bytes.as_deref().map(EntityView::decode).transpose()?;
    let found = stored.as_ref().map(|stored| stored.seq);
    let Some(stored) = stored.filter(|stored| stored.seq == expect) else {
        return Err(StoreError::Conflict {
            key: key.clone(),
            expected: Expect::Seq(expect),
            found,
        });
    };
    let seq = remove_entity(tx, meta, &entity_key, key.kind, &stored)?;
    Ok(Outcome::Deleted { seq })
}

/// Removes the entity `stored` at the next seq: entity, indexes, count, and a deletion change holding
/// it as it was.
fn remove_entity(
    tx: &mut dyn WriteTx,
    meta: &mut Meta,
    entity_key: &[u8],
    kind: Kind,
    stored: &EntityView<'_>,
) -> Result<u64, StoreError> {
    let seq = meta.head + 1;
    meta.head = seq;
    tx.delete(Table::Entities, entity_key)?;
    reindex(tx, entity_key, Index::Status, Some(stored.status), None)?;
    reindex(tx, entity_key, Index::StartedBy, stored.started_by, None)?;
    tx.put(
        Table::Log,
        &u64_key(seq),
        &codec::encode_change(entity_key, true, stored)?,
    )?;
    let count = &mut meta.counts[count_slot(kind)];
    *count = count.saturating_sub(1);
    Ok(seq)
}

/// Drops the oldest changes beyond `retention`, and with each trimmed deletion its tombstone if it is
/// past its retention (see [`expired`]) and still the deletion's (the entity may have been deleted
/// again since: then the tombstone belongs to the later deletion). A tombstone kept here is removed
/// by [`expire_tombstones`] once a later deletion's time passes its retention.
fn trim_log(
    tx: &mut dyn WriteTx,
    meta: &mut Meta,
    retention: u64,
    tombstone_retention_ms: u64,
) -> Result<(), StoreError> {
    let retained = meta.head + 1 - meta.first;
    if retained <= retention {
        return Ok(());
    }
    let new_first = meta.head + 1 - retention;
    let (start, end) = (u64_key(meta.first), u64_key(new_first));
    let mut deletions = Vec::new();
    tx.range(
        Table::Log,
        Bound::Included(&start),
        Bound::Excluded(&end),
        Direction::Forward,
        &mut |key, value| {
            if let Some(entity_key) = codec::decode_deletion(value)? {
                deletions.push((decode_u64(key, "change key")?, entity_key));
            }
            Ok(true)
        },
    )?;
    for seq in meta.first..new_first {
        tx.delete(Table::Log, &u64_key(seq))?;
    }
    for (seq, entity_key) in deletions {
        if let Some(bytes) = tx.get(Table::Tombstones, &entity_key)? {
            let tombstone = codec::decode_tombstone(&bytes)?;
            if tombstone.seq == seq && expired(&tombstone, meta.clock_ms, tombstone_retention_ms) {
                remove_tombstone(tx, &entity_key, &tombstone)?;
            }
        }
    }
    tracing::trace!(from = meta.first, to = new_first, "trimmed the change log");
    meta.first = new_first;
    Ok(())
}

fn trim_dead_letters(tx: &mut dyn WriteTx, meta: &mut Meta, retention: u64) -> Result<(), StoreError> {
    if meta.dead_letter_count <= retention {
        return Ok(());
    }
    let mut oldest = Vec::new();
    let excess = meta.dead_letter_count - retention;
    tx.range(
        Table::DeadLetters,
        Bound::Unbounded,
        Bound::Unbounded,
        Direction::Forward,
        &mut |key, _| {
            oldest.push(key.to_vec());
            Ok((oldest.len() as u64) < excess)
        },
    )?;
    for key in &oldest {
        tx.delete(Table::DeadLetters, key)?;
    }
    // The count follows the table: if they ever disagreed, the table wins.
    meta.dead_letter_count -= oldest.len() as u64;
    if (oldest.len() as u64) < excess {
        meta.dead_letter_count = 0;
    }
    Ok(())
}

fn record(entity_key: &[u8], entity: EntityView<'_>) -> Result<Record, StoreError> {
    Ok(Record {
        seq: entity.seq,
        doc: entity.to_document(codec::parse_entity_key(entity_key)?)?,
    })
}

/// The smallest key greater than every key starting with `prefix`; `None` when there is none.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn end_bound(end: &Option<Vec<u8>>) -> Bound<&[u8]> {
    end.as_deref().map_or(Bound::Unbounded, Bound::Excluded)
}

fn list(
    tx: &dyn ReadTx,
    kind: Kind,
    filter: &Filter,
    page: &PageRequest,
) -> Result<Page<Record>, StoreError> {
    list_with(tx, kind, filter, page, record)
}

/// A page of a listing, each entity (its key and stored fields, borrowed) mapped by `item`.
fn list_with<T>(
    tx: &dyn ReadTx,
    kind: Kind,
    filter: &Filter,
    page: &PageRequest,
    mut item: impl FnMut(&[u8], EntityView<'_>) -> Result<T, StoreError>,
) -> Result<Page<T>, StoreError> {
    let empty = || {
        Ok(Page {
            items: Vec::new(),
            next: None,
        })
    };
    // A value with NUL cannot have been stored, so nothing matches it.
    if filter.status.as_deref().is_some_and(has_nul) || filter.started_by.as_deref().is_some_and(has_nul) {
        return empty();
    }
    let cluster = filter.cluster.as_ref().map(ClusterName::as_str);
    let (table, prefix, status) = match (&filter.started_by, &filter.status) {
        (Some(started_by), status) => (
            Table::Index,
            codec::index_prefix(kind, Index::StartedBy, started_by, cluster),
            status.as_deref(),
        ),
        (None, Some(status)) => (
            Table::Index,
            codec::index_prefix(kind, Index::Status, status, cluster),
            None,
        ),
        (None, None) => (Table::Entities, codec::entity_prefix(kind, cluster), None),
    };
    scan_page(tx, table, &prefix, page, |key, value| {
        if table == Table::Entities {
            return item(key, EntityView::decode(value)?).map(Some);
        }
        let entity_key = entity_key_of_index(key)?;
        let bytes = tx
            .get(Table::Entities, &entity_key)?
            .ok_or(StoreError::Corrupt { what: "index entry" })?;
        let entity = EntityView::decode(&bytes)?;
        if status.is_some_and(|status| status != entity.status) {
            return Ok(None);
        }
        item(&entity_key, entity).map(Some)
    })
}

/// One page of the entries of `table` under `prefix`, in key order, each mapped by `item` (`None` skips
/// it). The cursor is the key of the last item returned, whatever it is clamped to the prefix.
fn scan_page<T, F: FnMut(&[u8], &[u8]) -> Result<Option<T>, StoreError>>(
    tx: &dyn ReadTx,
    table: Table,
    prefix: &[u8],
    page: &PageRequest,
    mut item: F,
) -> Result<Page<T>, StoreError> {
    let after = page.after.as_ref().map(|cursor| cursor.0.as_slice());
    let start = match after {
        None => Bound::Included(prefix),
        Some(after) if after.starts_with(prefix) => Bound::Excluded(after),
        Some(after) if after < prefix => Bound::Included(prefix),
        // Past every key of the listing.
        Some(_) => {
            return Ok(Page {
                items: Vec::new(),
                next: None,
            });
        }
    };
    let end = prefix_end(prefix);
    let limit = page.limit.unwrap_or(usize::MAX);
    let mut items = Vec::new();
    let mut last = Vec::new();
    let mut more = false;
    tx.range(
        table,
        start,
        end_bound(&end),
        Direction::Forward,
        &mut |key, value| {
            let Some(found) = item(key, value)? else {
                return Ok(true);
            };
            if items.len() == limit {
                // One more item exists: the page is full and another follows.
                more = true;
                return Ok(false);
            }
            items.push(found);
            // Only a full page's last key becomes the cursor. Copying every item's key would read
            // each key's bytes, a cache miss apiece on a large listing, for nothing.
            if items.len() == limit {
                last.extend_from_slice(key);
            }
            Ok(true)
        },
    )?;
    let next = more.then(|| {
        if items.is_empty() {
            Cursor(after.unwrap_or_default().to_vec())
        } else {
            Cursor(last)
        }
    });
    Ok(Page { items, next })
}

/// Distinct clusters by skip-scan: one seek per cluster, not one step per entity.
fn clusters(tx: &dyn ReadTx, kind: Kind) -> Result<Vec<ClusterName>, StoreError> {
    let kind_prefix = codec::entity_prefix(kind, None);
    let end = prefix_end(&kind_prefix);
    let mut start = kind_prefix.clone();
    let mut clusters = Vec::new();
    loop {
        let mut found = None;
        tx.range(
            Table::Entities,
            Bound::Included(&start),
            end_bound(&end),
            Direction::Forward,
            &mut |key, _| {
                found = Some(key.to_vec());
                Ok(false)
            },
        )?;
        let Some(key) = found else {
            return Ok(clusters);
        };
        let (_, cluster, _) = codec::split_entity_key(&key)?;
        clusters.push(codec::cluster_name(cluster, "entity key")?);
        // Just past `[kind] cluster 0 <any id>`: the next cluster's first key.
        start.clear();
        start.extend_from_slice(&kind_prefix);
        start.extend_from_slice(cluster);
        start.push(1);
    }
}

/// Parked messages newest first; the cursor is the id (u64 BE) of the last one returned, and any bytes
/// given back as a cursor compare as a position in that key space.
fn dead_letters(tx: &dyn ReadTx, page: &PageRequest) -> Result<Page<DeadLetter>, StoreError> {
    let after = page.after.as_ref().map(|cursor| cursor.0.as_slice());
    let end = after.map_or(Bound::Unbounded, Bound::Excluded);
    let limit = page.limit.unwrap_or(usize::MAX);
    let mut items = Vec::new();
    let mut more = false;
    tx.range(
        Table::DeadLetters,
        Bound::Unbounded,
        end,
        Direction::Reverse,
        &mut |key, value| {
            if items.len() == limit {
                more = true;
                return Ok(false);
            }
            items.push(codec::decode_dead_letter(key, value)?);
            Ok(true)
        },
    )?;
    let next = more.then(|| match items.last() {
        Some(last) => Cursor(u64_key(last.id).to_vec()),
        // Nothing returned (a zero limit): resume where this page started, the newest end if unset.
        None => Cursor(after.map_or_else(|| vec![u8::MAX; 9], <[u8]>::to_vec)),
    });
    Ok(Page { items, next })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemEngine;
    use crate::redb_engine::RedbEngine;

    fn doc(n: u64) -> Document {
        Document {
            key: Key::task(ClusterName::new("c").unwrap(), format!("t{}", n % 7)),
            version: n,
            status: "RUNNING".into(),
            started_by: None,
            body: format!(r#"{{"n":{n},"padding":"{}"}}"#, "x".repeat(200)).into_bytes(),
        }
    }

    /// A live stream's read (a few changes, in place) and a backlog's (on the blocking pool) return
    /// the same changes, and both check the resume point.
    async fn in_place_and_backlog_reads_agree<E: Engine>(store: KvStore<E>) {
        for n in 1..=40 {
            store.apply(vec![Write::Upsert(doc(n))]).await.unwrap();
        }
        // Retention is 30: the log holds changes 11 to 40, more than are read in place.
        let all = store.changes(10, 1_000).await.unwrap();
        assert_eq!(
            all.iter().map(|c| c.seq).collect::<Vec<_>>(),
            (11..=40).collect::<Vec<_>>()
        );
        assert_eq!(all[29].doc, doc(40));
        for after in [10, 20, 23, 24, 25, 30, 39, 40] {
            let tail = store.changes(after, 1_000).await.unwrap();
            assert_eq!(tail, all[after as usize - 10..], "after {after}");
        }
        assert_eq!(store.changes(30, 3).await.unwrap(), all[20..23]);
        assert_eq!(store.changes(12, 3).await.unwrap(), all[2..5]);
        assert!(store.changes(30, 0).await.unwrap().is_empty());
        assert!(matches!(
            store.changes(41, 10).await,
            Err(StoreError::Future {
                requested: 41,
                head: 40
            })
        ));
        assert!(matches!(
            store.changes(5, 10).await,
            Err(StoreError::Compacted {
                requested: 5,
                oldest_resumable: 10
            })
        ));
    }

    fn options() -> StoreOptions {
        StoreOptions {
            change_log_retention: 30,
            ..StoreOptions::default()
        }
    }

    #[tokio::test]
    async fn mem_in_place_and_backlog_reads_agree() {
        in_place_and_backlog_reads_agree(KvStore::empty(MemEngine::default(), options())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_in_place_and_backlog_reads_agree() {
        let dir = tempfile::tempdir().unwrap();
        let engine = RedbEngine::open(&dir.path().join("store.redb")).unwrap();
        in_place_and_backlog_reads_agree(KvStore::open(engine, options()).unwrap()).await;
    }
}
