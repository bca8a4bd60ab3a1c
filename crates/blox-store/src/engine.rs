//! The ordered key-value transaction abstraction the store's logic is written against once
//! ([`crate::kv`]), with one implementation per backend ([`crate::mem`], [`crate::redb_engine`]).
//!
//! Keys and values are plain byte strings, ordered lexicographically; every table is one such ordered
//! map. A write transaction is all-or-nothing: [`Engine::write`] commits when its closure returns `Ok`
//! and leaves no trace of the closure's writes when it returns `Err` (or panics).

use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, TryLockError};

use crate::StoreError;
use crate::leader::Fence;

/// The tables of the store. Every backend has exactly these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    /// entity key → encoded entity (see [`crate::codec`]).
    Entities,
    /// index key → empty.
    Index,
    /// seq (u64 BE) → encoded change.
    Log,
    /// entity key → (version, seq of the deletion, time of the deletion).
    Tombstones,
    /// name → u64 BE: head, first retained seq, dead-letter counters, entity counts.
    Meta,
    /// dead-letter id (u64 BE) → encoded dead letter.
    DeadLetters,
    /// (deletion time in ms, seq of the deletion) (u64 BE each) → entity key: the tombstones that carry
    /// a time, oldest first, so that those past their retention are found without a scan.
    TombstoneTimes,
}

impl Table {
    pub(crate) const ALL: [Table; 7] = [
        Table::Entities,
        Table::Index,
        Table::Log,
        Table::Tombstones,
        Table::Meta,
        Table::DeadLetters,
        Table::TombstoneTimes,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Entities => "entities",
            Table::Index => "index",
            Table::Log => "log",
            Table::Tombstones => "tombstones",
            Table::Meta => "meta",
            Table::DeadLetters => "dead_letters",
            Table::TombstoneTimes => "tombstone_times",
        }
    }

    pub(crate) fn slot(self) -> usize {
        self as usize
    }
}

/// A value read by [`ReadTx::fetch`]: a copy, or the engine's own bytes, shared.
pub(crate) enum Fetched {
    Copied(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl std::ops::Deref for Fetched {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Fetched::Copied(bytes) => bytes,
            Fetched::Shared(bytes) => bytes,
        }
    }
}

/// Iteration order of [`ReadTx::range`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Forward,
    Reverse,
}

/// Called for each entry of a range; returns whether to go on.
pub(crate) type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool, StoreError> + 'a;

pub(crate) trait ReadTx {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// [`ReadTx::get`] without a copy where the engine holds the value in memory (the log engine).
    fn fetch(&self, table: Table, key: &[u8]) -> Result<Option<Fetched>, StoreError> {
        Ok(self.get(table, key)?.map(Fetched::Copied))
    }

    /// Visits the entries between `start` and `end` in `direction` until `visit` returns `false`. An
    /// empty or inverted range visits nothing (it must not panic: bounds may come from a cursor).
    fn range(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        direction: Direction,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError>;
}

pub(crate) trait WriteTx: ReadTx {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError>;

    /// [`WriteTx::put`] of a key and value the caller has no further use for, which an engine that
    /// keeps them in memory as they are (the memory engine) takes without a copy.
    fn put_owned(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        self.put(table, &key, &value)
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError>;
}

pub(crate) trait Engine: Send + Sync + 'static {
    /// Names the backend in errors.
    const NAME: &'static str;
    /// Whether transactions block on I/O, so that the store runs them on tokio's blocking pool (all
    /// but reads of a few entries, which cost less than the hand-off: see `KvStore::read_in_place`).
    const BLOCKING: bool;

    fn read<R>(&self, f: impl FnOnce(&dyn ReadTx) -> Result<R, StoreError>) -> Result<R, StoreError>;

    /// [`Engine::read`] when it can start without waiting for a writer; `f` back otherwise, for the
    /// caller to wait where waiting blocks nothing else (see `KvStore::read_in_place`). By default it
    /// always reads: right for an engine whose reads never wait for writers (redb's) or whose writers
    /// hold it for no I/O (memory's).
    fn try_read<R, F>(&self, f: F) -> Result<Result<R, StoreError>, F>
    where
        F: FnOnce(&dyn ReadTx) -> Result<R, StoreError>,
    {
        Ok(self.read(f))
    }

    /// Runs `f` in one write transaction, committed (durably, for a persistent engine) iff `f` returns
    /// `Ok`. An engine whose commit can lose a race (etcd's, optimistic) runs `f` again on fresh
    /// state, so `f` must not keep effects of its own between calls. With a `fence`, the commit
    /// happens only while the fence's leadership term holds ([`StoreError::Fenced`] otherwise); an
    /// engine of one process has no other leader and ignores it.
    fn write<R>(
        &self,
        fence: Option<&Fence>,
        f: impl FnMut(&mut dyn WriteTx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError>;
}

/// `lock` read-locked if no writer holds it or waits for it (std's lock lets writers go first): what
/// an engine's [`Engine::try_read`] starts from. A panicking writer rolls back before it releases the
/// lock, so a poisoned lock's data is intact.
pub(crate) fn try_read_lock<T>(lock: &RwLock<T>) -> Option<RwLockReadGuard<'_, T>> {
    match lock.try_read() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// Steps through `entries` in `direction` until `step` returns `false`: every engine's range visit.
pub(crate) fn walk<I: DoubleEndedIterator>(
    entries: I,
    direction: Direction,
    mut step: impl FnMut(I::Item) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    match direction {
        Direction::Forward => {
            for entry in entries {
                if !step(entry)? {
                    break;
                }
            }
        }
        Direction::Reverse => {
            for entry in entries.rev() {
                if !step(entry)? {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Whether a range between these bounds is certainly empty. `BTreeMap::range` panics on such bounds, and
/// they do arise from untrusted cursors.
pub(crate) fn is_empty_range(start: Bound<&[u8]>, end: Bound<&[u8]>) -> bool {
    match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s), Bound::Excluded(e))
        | (Bound::Excluded(s), Bound::Included(e))
        | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
        _ => false,
    }
}
