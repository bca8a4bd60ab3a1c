//! The in-memory engine: one `BTreeMap` per table behind a lock. A write transaction writes in place and
//! keeps an undo log, replayed backwards if the transaction fails or panics, so that a failed batch
//! leaves nothing behind.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{PoisonError, RwLock};

use crate::StoreError;
use crate::engine::{Direction, Engine, ReadTx, Table, Visit, WriteTx, is_empty_range, walk};
use crate::leader::Fence;

pub(crate) type Map = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
pub(crate) struct Tables([Map; Table::ALL.len()]);

#[derive(Default)]
pub(crate) struct MemEngine {
    tables: RwLock<Tables>,
}

impl Tables {
    pub(crate) fn map(&self, table: Table) -> &Map {
        &self.0[table.slot()]
    }

    /// Sets (`Some`) or removes (`None`) one entry.
    pub(crate) fn set(&mut self, table: Table, key: Vec<u8>, value: Option<Vec<u8>>) {
        let map = &mut self.0[table.slot()];
        match value {
            Some(value) => map.insert(key, value),
            None => map.remove(&key),
        };
    }
}

impl ReadTx for Tables {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0[table.slot()].get(key).cloned())
    }

    fn range(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        direction: Direction,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        if is_empty_range(start, end) {
            return Ok(());
        }
        let range = self.0[table.slot()].range::<[u8], _>((start, end));
        walk(range, direction, |(key, value)| visit(key, value))
    }
}

/// A write transaction over the locked tables. Dropped without [`MemWrite::commit`], it undoes its
/// writes.
struct MemWrite<'a> {
    tables: &'a mut Tables,
    /// (table, key, value before the write), in write order.
    undo: Vec<(Table, Vec<u8>, Option<Vec<u8>>)>,
}

impl MemWrite<'_> {
    fn commit(mut self) {
        self.undo.clear();
    }
}

impl Drop for MemWrite<'_> {
    fn drop(&mut self) {
        while let Some((table, key, previous)) = self.undo.pop() {
            let map = &mut self.tables.0[table.slot()];
            match previous {
                Some(value) => map.insert(key, value),
                None => map.remove(&key),
            };
        }
    }
}

impl ReadTx for MemWrite<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.tables.get(table, key)
    }

    fn range(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        direction: Direction,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        self.tables.range(table, start, end, direction, visit)
    }
}

impl WriteTx for MemWrite<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.put_owned(table, key.to_vec(), value.to_vec())
    }

    fn put_owned(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) -> Result<(), StoreError> {
        let previous = self.tables.0[table.slot()].insert(key.clone(), value);
        self.undo.push((table, key, previous));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        if let Some(previous) = self.tables.0[table.slot()].remove(key) {
            self.undo.push((table, key.to_vec(), Some(previous)));
        }
        Ok(())
    }
}

impl Engine for MemEngine {
    const NAME: &'static str = "memory";
    const BLOCKING: bool = false;

    fn read<R>(&self, f: impl FnOnce(&dyn ReadTx) -> Result<R, StoreError>) -> Result<R, StoreError> {
        // A panicking writer has rolled back before the lock is released, so poisoned data is intact.
        let tables = self.tables.read().unwrap_or_else(PoisonError::into_inner);
        f(&*tables)
    }

    fn write<R>(
        &self,
        _fence: Option<&Fence>,
        mut f: impl FnMut(&mut dyn WriteTx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut tables = self.tables.write().unwrap_or_else(PoisonError::into_inner);
        let mut tx = MemWrite {
            tables: &mut tables,
            undo: Vec::new(),
        };
        let result = f(&mut tx)?;
        tx.commit();
        Ok(result)
    }
}
