//! The public stores: the shared logic of [`crate::kv`] over each engine.

use std::fmt;
use std::path::Path;

use async_trait::async_trait;
use blox_model::ClusterName;
use tokio::sync::watch;

use crate::kv::KvStore;
use crate::log_engine::{LogEngine, Opened};
use crate::mem::MemEngine;
use crate::redb_engine::RedbEngine;
use crate::{
    Change, DeadLetter, Filter, Key, Kind, LogBounds, Outcome, Page, PageRequest, PreparedWrite, Record,
    Splice, Spliced, Store, StoreError, StoreOptions, Write,
};

/// The in-memory store, for tests: everything is lost when it is dropped.
pub struct MemStore(KvStore<MemEngine>);

impl MemStore {
    pub fn new(options: StoreOptions) -> MemStore {
        MemStore(KvStore::empty(MemEngine::default(), options))
    }
}

/// The embedded, durable store: one redb file. Every [`Store::apply`] is one redb write transaction,
/// fsynced before it returns.
pub struct RedbStore(KvStore<RedbEngine>);

impl RedbStore {
    /// Opens the store at `path`, creating the file and its parent directories if need be. An existing
    /// file keeps its data, and sequence numbers continue from its head. Blocks on file I/O.
    pub fn open(path: &Path, options: StoreOptions) -> Result<RedbStore, StoreError> {
        Ok(RedbStore(KvStore::open(RedbEngine::open(path)?, options)?))
    }
}

/// The embedded store held in memory and made durable by an append-only log with checkpoints, in one
/// directory (see `log_engine.rs`). Every [`Store::apply`] is one log frame, fsynced before it returns;
/// a crash loses nothing acknowledged and costs a replay of the log since the last checkpoint.
pub struct LogStore(KvStore<LogEngine>);

impl LogStore {
    /// Opens the store in directory `dir`, creating it if need be: loads the last checkpoint and replays
    /// the log after it. Blocks on file I/O.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<LogStore, StoreError> {
        let engine = LogEngine::open(dir)?;
        let opened = engine.opened();
        tracing::info!(
            dir = %dir.display(),
            checkpoint_bytes = opened.checkpoint_bytes,
            replayed_bytes = opened.replayed_bytes,
            "store opened"
        );
        Ok(LogStore(KvStore::open(engine, options)?))
    }

    /// What opening took: the checkpoint loaded and the log replayed after it.
    pub fn opened(&self) -> Opened {
        self.0.engine().opened()
    }
}

macro_rules! delegate_store {
    ($store:ident, $name:literal) => {
        impl fmt::Debug for $store {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct($name)
                    .field("options", &self.0.options())
                    .finish_non_exhaustive()
            }
        }

        #[async_trait]
        impl Store for $store {
            async fn apply(&self, writes: Vec<Write>) -> Result<Vec<Outcome>, StoreError> {
                self.0.apply(writes).await
            }

            async fn apply_prepared(&self, writes: Vec<PreparedWrite>) -> Result<Vec<Outcome>, StoreError> {
                self.0.apply_prepared(writes).await
            }

            async fn get(&self, key: &Key) -> Result<Option<Record>, StoreError> {
                self.0.get(key).await
            }

            async fn list(
                &self,
                kind: Kind,
                filter: &Filter,
                page: PageRequest,
            ) -> Result<Page<Record>, StoreError> {
                self.0.list(kind, filter, page).await
            }

            async fn list_spliced(
                &self,
                kind: Kind,
                filter: &Filter,
                page: PageRequest,
                splice: Splice,
                out: Vec<u8>,
            ) -> Result<Spliced, StoreError> {
                self.0.list_spliced(kind, filter, page, splice, out).await
            }

            async fn ids(&self, kind: Kind, cluster: &ClusterName) -> Result<Vec<(String, u64)>, StoreError> {
                self.0.ids(kind, cluster).await
            }

            async fn clusters(&self, kind: Kind) -> Result<Vec<ClusterName>, StoreError> {
                self.0.clusters(kind).await
            }

            async fn changes(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
                self.0.changes(after, limit).await
            }

            async fn log_bounds(&self) -> Result<LogBounds, StoreError> {
                self.0.log_bounds().await
            }

            fn subscribe(&self) -> watch::Receiver<u64> {
                self.0.subscribe()
            }

            async fn dead_letters(&self, page: PageRequest) -> Result<Page<DeadLetter>, StoreError> {
                self.0.dead_letters(page).await
            }

            async fn remove_dead_letter(&self, id: u64) -> Result<bool, StoreError> {
                self.0.remove_dead_letter(id, None).await
            }

            async fn count(&self, kind: Kind) -> Result<u64, StoreError> {
                self.0.count(kind).await
            }
        }
    };
}

delegate_store!(MemStore, "MemStore");
delegate_store!(RedbStore, "RedbStore");
delegate_store!(LogStore, "LogStore");
