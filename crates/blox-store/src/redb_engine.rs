//! The redb engine: one redb table per [`Table`], one redb write transaction per store write, committed
//! with redb's default durability (fsync before `commit` returns).

use std::cell::OnceCell;
use std::fmt::Display;
use std::ops::Bound;
use std::path::Path;

use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

use crate::StoreError;
use crate::engine::{Direction, Engine, ReadTx, Table, Visit, WriteTx, is_empty_range, walk};
use crate::leader::Fence;

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

const DEFS: [Def; Table::ALL.len()] = [
    TableDefinition::new("entities"),
    TableDefinition::new("index"),
    TableDefinition::new("log"),
    TableDefinition::new("tombstones"),
    TableDefinition::new("meta"),
    TableDefinition::new("dead_letters"),
    TableDefinition::new("tombstone_times"),
];

fn def(table: Table) -> Def {
    DEFS[table.slot()]
}

/// Maps a redb error to [`StoreError::Backend`], naming the operation.
pub(crate) fn failed<E: Display>(operation: &'static str) -> impl FnOnce(E) -> StoreError {
    move |error| StoreError::Backend {
        backend: "redb",
        operation,
        message: error.to_string(),
    }
}

/// redb's own page cache (read cache and write buffer together). redb's default, 1 GiB, would let a
/// long-running server grow to about the size of its file (the change log alone is ~1 GB at the default
/// retention and ECS-sized documents). 192 MiB holds the entity table of ~100k tasks and 10k instances
/// (~150 MB), which is what listings read; measured with `blox bench`, 128 MiB made a cluster listing
/// 1.6x slower and 256 MiB was no faster. Pages beyond it come from the OS page cache, for a read call.
const CACHE_BYTES: usize = 192 << 20;

pub(crate) struct RedbEngine {
    db: Database,
}

impl RedbEngine {
    /// Opens (or creates) the database file, and creates any missing table so that read transactions
    /// can always open every table.
    pub(crate) fn open(path: &Path) -> Result<RedbEngine, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(failed("create_dir"))?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            // After an unclean shutdown redb verifies the whole file before it opens (about 2 s per
            // GB here): say so, since blox serves nothing meanwhile.
            .set_repair_callback(|session| {
                tracing::warn!(
                    progress = session.progress(),
                    "repairing the store after an unclean shutdown"
                )
            })
            .create(path)
            .map_err(failed("open"))?;
        let txn = db.begin_write().map_err(failed("begin_write"))?;
        for table in Table::ALL {
            txn.open_table(def(table)).map_err(failed("open_table"))?;
        }
        txn.commit().map_err(failed("commit"))?;
        Ok(RedbEngine { db })
    }
}

/// Visits a redb range; shared by read and write transactions.
fn visit_range<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    start: Bound<&[u8]>,
    end: Bound<&[u8]>,
    direction: Direction,
    visit: &mut Visit<'_>,
) -> Result<(), StoreError> {
    if is_empty_range(start, end) {
        return Ok(());
    }
    let range = table.range::<&[u8]>((start, end)).map_err(failed("range"))?;
    walk(range, direction, |entry| {
        let (key, value) = entry.map_err(failed("range"))?;
        visit(key.value(), value.value())
    })
}

/// A read transaction; tables are opened on first use, since most reads touch one or two.
struct RedbRead {
    txn: ReadTransaction,
    tables: [OnceCell<ReadOnlyTable<&'static [u8], &'static [u8]>>; Table::ALL.len()],
}

impl RedbRead {
    fn table(&self, table: Table) -> Result<&ReadOnlyTable<&'static [u8], &'static [u8]>, StoreError> {
        let cell = &self.tables[table.slot()];
        if let Some(open) = cell.get() {
            return Ok(open);
        }
        let open = self.txn.open_table(def(table)).map_err(failed("open_table"))?;
        Ok(cell.get_or_init(|| open))
    }
}

impl ReadTx for RedbRead {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.table(table)?.get(key).map_err(failed("get"))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn range(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        direction: Direction,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        visit_range(self.table(table)?, start, end, direction, visit)
    }
}

type WriteTable<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;

/// A write transaction; tables are opened on first use.
struct RedbWrite<'txn> {
    txn: &'txn WriteTransaction,
    tables: [OnceCell<WriteTable<'txn>>; Table::ALL.len()],
}

impl<'txn> RedbWrite<'txn> {
    fn table(&self, table: Table) -> Result<&WriteTable<'txn>, StoreError> {
        let cell = &self.tables[table.slot()];
        if let Some(open) = cell.get() {
            return Ok(open);
        }
        let open = self.txn.open_table(def(table)).map_err(failed("open_table"))?;
        Ok(cell.get_or_init(|| open))
    }

    fn table_mut(&mut self, table: Table) -> Result<&mut WriteTable<'txn>, StoreError> {
        self.table(table)?;
        self.tables[table.slot()].get_mut().ok_or(StoreError::Backend {
            backend: "redb",
            operation: "open_table",
            message: format!("table {} was not opened", table.name()),
        })
    }
}

impl ReadTx for RedbWrite<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.table(table)?.get(key).map_err(failed("get"))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn range(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        direction: Direction,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        visit_range(self.table(table)?, start, end, direction, visit)
    }
}

impl WriteTx for RedbWrite<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.table_mut(table)?
            .insert(key, value)
            .map_err(failed("insert"))?;
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.table_mut(table)?.remove(key).map_err(failed("remove"))?;
        Ok(())
    }
}

impl Engine for RedbEngine {
    const NAME: &'static str = "redb";
    const BLOCKING: bool = true;

    fn read<R>(&self, f: impl FnOnce(&dyn ReadTx) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let txn = self.db.begin_read().map_err(failed("begin_read"))?;
        f(&RedbRead {
            txn,
            tables: Default::default(),
        })
    }

    fn write<R>(
        &self,
        _fence: Option<&Fence>,
        mut f: impl FnMut(&mut dyn WriteTx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let txn = self.db.begin_write().map_err(failed("begin_write"))?;
        let result = {
            let mut tx = RedbWrite {
                txn: &txn,
                tables: Default::default(),
            };
            f(&mut tx)
        };
        match result {
            Ok(value) => {
                txn.commit().map_err(failed("commit"))?;
                Ok(value)
            }
            Err(error) => {
                // The batch's error is what matters; an abort failure only means nothing was written.
                if let Err(abort) = txn.abort() {
                    tracing::warn!(%abort, "aborting a failed redb write transaction failed");
                }
                Err(error)
            }
        }
    }
}
