//! The log engine: every table in memory, made durable by an append-only write-ahead log and
//! periodic checkpoints, in one directory.
//!
//! - **Commit**: a write transaction changes the in-memory tables in place (with an undo log, as
//!   [`crate::mem`]) and records its puts and deletes in order; at commit they are appended to the
//!   current WAL segment as one *frame* of LZ4 blocks (≤ 64 KiB of operations each), followed by one
//!   `fdatasync`. A value that ends like a change-log value put just after it (an entity and its
//!   change carry the same compressed body) is written as its own prefix and a reference to that end,
//!   and LZ4 takes most of what remains (keys, ARNs, cluster names): an event costs about a third of
//!   its own size on disk. A write that fails is truncated away and undone; nothing else is written.
//! - **The change log stays on disk**: of the `Log` table, memory holds only where each value is (its
//!   segment, block and offset); a read decompresses the block (~20 µs; a range reads consecutive
//!   values, mostly of one block). Every other table is held whole.
//! - **Checkpoint**: when the WAL written since the last checkpoint passes a threshold (and when the
//!   engine is dropped), a copy of the tables (keys and values are `Arc<[u8]>`, so the copy is of the
//!   trees only, taken under the commit lock) is written by a background thread to `checkpoint.tmp`,
//!   fsynced and renamed over `checkpoint`, with the WAL position it covers. Segments before both
//!   that position and the oldest retained change are then deleted.
//! - **Recovery**: load `checkpoint`, replay the frames after its position, truncate a torn frame at
//!   the end of the last segment. No whole-file verification: a frame's CRC covers it.
//!
//! Files: `checkpoint`, `wal-NNNNNNNN.log` (segments, rolled at 64 MiB) and `lock` (held with an
//! exclusive file lock while open, so that two processes never write one directory).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use crate::StoreError;
use crate::engine::{
    Direction, Engine, Fetched, ReadTx, Table, Visit, WriteTx, is_empty_range, try_read_lock, walk,
};
use crate::leader::Fence;

const FRAME_MAGIC: u32 = 0x4258_5731; // "BXW1"
const CHECKPOINT_MAGIC: u32 = 0x4258_4331; // "BXC1"
const CHECKPOINT_FORMAT: u32 = 1;
/// magic, payload length, CRC-32 of the payload.
const FRAME_HEADER: usize = 12;
/// Raw (uncompressed) size at which a block is closed: small enough that reading one change
/// decompresses little, large enough for LZ4 to find the keys' repetitions.
const BLOCK_RAW: usize = 64 << 10;
/// The largest frame buffer a write transaction keeps for the next (a commit of ~3,000 events):
/// an occasional larger one gives its memory back.
const SPARE_FRAME_MAX: usize = 4 << 20;
/// A put's value shares its suffix with a change-log value put at most this many operations later
/// (an entity is put, then its indexes, then its change)...
const SHARE_LOOKAHEAD: usize = 8;
/// ...of at least this many bytes (a body: shorter shared tails are not worth a reference).
const SHARE_MIN: usize = 64;

/// When segments roll and checkpoints start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    /// A new segment is started when the current one has reached this size.
    pub segment_bytes: u64,
    /// The WAL written since the last checkpoint that starts the next one: at least this, and at
    /// least the last checkpoint's size divided by `checkpoint_divisor`. Replay after a crash runs at
    /// ~100 MB of log a second here (B-tree inserts of long keys), a checkpoint loads at ~400 MB/s:
    /// 48 MiB and a third of a 150 MB checkpoint keep a restart after a crash under a second at
    /// 110,000 entities and 1M retained changes, for ~1 KB of checkpoint written per event.
    pub checkpoint_min_wal: u64,
    pub checkpoint_divisor: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            segment_bytes: 64 << 20,
            checkpoint_min_wal: 48 << 20,
            checkpoint_divisor: 3,
        }
    }
}

fn failed<E: std::fmt::Display>(operation: &'static str) -> impl FnOnce(E) -> StoreError {
    move |error| StoreError::Backend {
        backend: LogEngine::NAME,
        operation,
        message: error.to_string(),
    }
}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::Corrupt { what }
}

/// Where one change-log value is: a block of a segment, and the value's place in the decompressed
/// block. `segment == PENDING` marks a value put by the transaction in progress (`value_offset` is its
/// index in the transaction's pending values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    segment: u32,
    block_offset: u32,
    block_len: u32,
    value_offset: u32,
    value_len: u32,
}

const PENDING: u32 = u32::MAX;

/// A key or value held in memory: shared rather than copied by a transaction's undo and WAL records
/// and by a checkpoint's snapshot, with its count in the same allocation (16 bytes in a tree node,
/// where `Bytes` took 32, and a separate header of its own once shared).
type Held = Arc<[u8]>;

type Map = BTreeMap<Held, Held>;

/// `bytes` in memory; every empty value (an index entry's) is one allocation.
fn held(bytes: &[u8]) -> Held {
    static EMPTY: std::sync::LazyLock<Held> = std::sync::LazyLock::new(|| Arc::from(&[][..]));
    if bytes.is_empty() {
        EMPTY.clone()
    } else {
        Arc::from(bytes)
    }
}

/// Where each retained change is: seq `first + i` at `places[i]`. The change log's keys are
/// consecutive (a commit appends the next seqs, trimming removes the oldest), so a deque holds them
/// in 20 bytes each (a `BTreeMap` took ~32: 35 MB at the default million retained changes).
#[derive(Default, Clone)]
struct LogIndex {
    first: u64,
    places: std::collections::VecDeque<Loc>,
}

fn out_of_sequence() -> StoreError {
    StoreError::Backend {
        backend: LogEngine::NAME,
        operation: "write",
        message: "change-log keys must be written in sequence and removed from either end".to_owned(),
    }
}

impl LogIndex {
    fn len(&self) -> usize {
        self.places.len()
    }

    fn slot(&self, seq: u64) -> Option<usize> {
        let offset = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        (offset < self.places.len()).then_some(offset)
    }

    fn get(&self, seq: u64) -> Option<Loc> {
        self.slot(seq).map(|i| self.places[i])
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut Loc> {
        self.slot(seq).map(|i| &mut self.places[i])
    }

    fn first(&self) -> Option<Loc> {
        self.places.front().copied()
    }

    /// Sets `seq`'s place (`Some`) or removes it (`None`), returning what was there: within the
    /// range, or just past either end; a removal at either end only.
    fn set(&mut self, seq: u64, loc: Option<Loc>) -> Result<Option<Loc>, StoreError> {
        if self.places.is_empty() {
            if let Some(loc) = loc {
                self.first = seq;
                self.places.push_back(loc);
            }
            return Ok(None);
        }
        let last = self.first + self.places.len() as u64 - 1;
        match (self.slot(seq), loc) {
            (Some(i), Some(loc)) => Ok(Some(std::mem::replace(&mut self.places[i], loc))),
            (Some(0), None) => {
                self.first += 1;
                Ok(self.places.pop_front())
            }
            (Some(_), None) if seq == last => Ok(self.places.pop_back()),
            (Some(_), None) => Err(out_of_sequence()),
            (None, None) => Ok(None),
            (None, Some(loc)) if seq == last + 1 => {
                self.places.push_back(loc);
                Ok(None)
            }
            (None, Some(loc)) if seq + 1 == self.first => {
                self.first = seq;
                self.places.push_front(loc);
                Ok(None)
            }
            (None, Some(_)) => Err(out_of_sequence()),
        }
    }

    /// The places of the seqs within the bounds, with their seqs.
    fn range(&self, start: Bound<u64>, end: Bound<u64>) -> impl DoubleEndedIterator<Item = (u64, Loc)> + '_ {
        let len = self.places.len() as u64;
        let index = |seq: u64| seq.saturating_sub(self.first).min(len);
        let from = match start {
            Bound::Included(seq) => index(seq),
            Bound::Excluded(seq) => index(seq.saturating_add(1)),
            Bound::Unbounded => 0,
        };
        let to = match end {
            Bound::Included(seq) => index(seq.saturating_add(1)),
            Bound::Excluded(seq) => index(seq),
            Bound::Unbounded => len,
        }
        .max(from);
        self.places
            .range(from as usize..to as usize)
            .enumerate()
            .map(move |(i, loc)| (self.first + from + i as u64, *loc))
    }
}

/// The tables as memory holds them.
#[derive(Default, Clone)]
struct Tables {
    /// Every table but [`Table::Log`] (whose slot stays empty).
    maps: [Map; Table::ALL.len()],
    /// seq → where its change is.
    log: LogIndex,
}

struct Wal {
    /// Every segment still on disk, by number; the last is written to.
    segments: BTreeMap<u32, File>,
    /// The current segment's number and length.
    current: u32,
    len: u64,
    /// Bytes appended since the engine opened, and at the start of the last checkpoint.
    written: u64,
    checkpoint_started_at: u64,
    /// The last checkpoint's size, which sets the distance to the next.
    checkpoint_bytes: u64,
    /// The segment the checkpoint on disk covers up to: recovery needs it and those after it.
    covered_segment: u32,
    /// A write failed and could not be undone on disk: refuse every further write.
    broken: bool,
}

struct State {
    tables: Tables,
    wal: Wal,
    /// The buffers of the last write transaction, emptied: the next one grows none of them again.
    spare: Spare,
}

#[derive(Default)]
struct Spare {
    undo: Vec<Undo>,
    ops: Vec<Op>,
    pending: Vec<Held>,
    frame: Vec<u8>,
}

impl Spare {
    /// The buffers emptied for the next transaction, unless an unusually large one grew them.
    fn emptied(mut self) -> Spare {
        if self.frame.capacity() > SPARE_FRAME_MAX {
            return Spare::default();
        }
        self.undo.clear();
        self.ops.clear();
        self.pending.clear();
        self.frame.clear();
        self
    }
}

struct Shared {
    dir: PathBuf,
    tuning: Tuning,
    state: RwLock<State>,
    /// The checkpoint being written, if any.
    checkpoint: Mutex<Option<JoinHandle<()>>>,
    /// Held for the engine's life.
    _lock: File,
    /// What opening it took.
    opened: Opened,
}

/// What opening a log store took: the checkpoint loaded, the log replayed after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Opened {
    pub checkpoint_bytes: u64,
    pub replayed_bytes: u64,
}

pub(crate) struct LogEngine {
    shared: Arc<Shared>,
}

fn segment_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("wal-{number:08}.log"))
}

fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| corrupt("change-log key"))?;
    Ok(u64::from_be_bytes(bytes))
}

/// A byte bound of the change log's 8-byte keys as a bound on sequence numbers.
fn seq_bound(bound: Bound<&[u8]>) -> Result<Bound<u64>, StoreError> {
    Ok(match bound {
        Bound::Included(key) => Bound::Included(seq_of(key)?),
        Bound::Excluded(key) => Bound::Excluded(seq_of(key)?),
        Bound::Unbounded => Bound::Unbounded,
    })
}

fn seq_range_is_empty(start: Bound<u64>, end: Bound<u64>) -> bool {
    match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s), Bound::Excluded(e))
        | (Bound::Excluded(s), Bound::Included(e))
        | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
        _ => false,
    }
}

/// Reads change-log values from their blocks, keeping the last block decompressed (a range reads
/// consecutive values, mostly from one block).
struct BlockReader<'a> {
    segments: &'a BTreeMap<u32, File>,
    last: Option<((u32, u32), Vec<u8>)>,
}

impl<'a> BlockReader<'a> {
    fn new(segments: &'a BTreeMap<u32, File>) -> Self {
        BlockReader { segments, last: None }
    }

    fn value(&mut self, loc: Loc) -> Result<&[u8], StoreError> {
        let id = (loc.segment, loc.block_offset);
        if self.last.as_ref().is_none_or(|(last, _)| *last != id) {
            let file = self
                .segments
                .get(&loc.segment)
                .ok_or(corrupt("change-log location"))?;
            let mut block = vec![0; loc.block_len as usize];
            file.read_exact_at(&mut block, u64::from(loc.block_offset))
                .map_err(failed("read"))?;
            self.last = Some((id, decode_block(&block)?));
        }
        let (_, raw) = self.last.as_ref().expect("set above");
        let start = loc.value_offset as usize;
        raw.get(start..start + loc.value_len as usize)
            .ok_or(corrupt("change-log location"))
    }
}

/// A block as written: raw length, compressed length, LZ4 block.
fn decode_block(block: &[u8]) -> Result<Vec<u8>, StoreError> {
    let header = block.get(..8).ok_or(corrupt("WAL block"))?;
    let raw_len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let comp_len = u32::from_be_bytes(header[4..].try_into().expect("4 bytes")) as usize;
    let comp = block.get(8..8 + comp_len).ok_or(corrupt("WAL block"))?;
    lz4_flex::block::decompress(comp, raw_len).map_err(|_| corrupt("WAL block"))
}

/// The tables as a transaction reads them: memory, the segments, and the transaction's own pending
/// change-log values.
struct Reading<'a> {
    tables: &'a Tables,
    segments: &'a BTreeMap<u32, File>,
    pending: &'a [Held],
}

impl ReadTx for Reading<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Reading {
            tables,
            segments,
            pending,
        } = *self;
        if table != Table::Log {
            return Ok(tables.maps[table.slot()].get(key).map(|value| value.to_vec()));
        }
        let Some(loc) = tables.log.get(seq_of(key)?) else {
            return Ok(None);
        };
        if loc.segment == PENDING {
            return Ok(Some(pending[loc.value_offset as usize].to_vec()));
        }
        Ok(Some(BlockReader::new(segments).value(loc)?.to_vec()))
    }

    fn fetch(&self, table: Table, key: &[u8]) -> Result<Option<Fetched>, StoreError> {
        if table == Table::Log {
            return Ok(self.get(table, key)?.map(Fetched::Copied));
        }
        Ok(self.tables.maps[table.slot()]
            .get(key)
            .cloned()
            .map(Fetched::Shared))
    }

    fn range(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        direction: Direction,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let Reading {
            tables,
            segments,
            pending,
        } = *self;
        if table != Table::Log {
            if is_empty_range(start, end) {
                return Ok(());
            }
            let range = tables.maps[table.slot()].range::<[u8], _>((start, end));
            return walk(range, direction, |(key, value)| visit(key, value));
        }
        let (start, end) = (seq_bound(start)?, seq_bound(end)?);
        if seq_range_is_empty(start, end) {
            return Ok(());
        }
        let mut reader = BlockReader::new(segments);
        let step = |(seq, loc): (u64, Loc)| -> Result<bool, StoreError> {
            let key = seq.to_be_bytes();
            if loc.segment == PENDING {
                visit(&key, &pending[loc.value_offset as usize])
            } else {
                visit(&key, reader.value(loc)?)
            }
        };
        let range = tables.log.range(start, end);
        walk(range, direction, step)
    }
}

impl State {
    fn reading(&self) -> Reading<'_> {
        Reading {
            tables: &self.tables,
            segments: &self.wal.segments,
            pending: &[],
        }
    }
}

/// One operation of a transaction, as the WAL records it.
enum Op {
    Put(Table, Held, Held),
    Delete(Table, Held),
}

enum Undo {
    Map(Table, Held, Option<Held>),
    Log(u64, Option<Loc>),
}

/// A write transaction over the locked state. Dropped without [`LogWrite::commit`], it undoes its
/// writes in memory (nothing reached the disk).
struct LogWrite<'a> {
    state: &'a mut State,
    undo: Vec<Undo>,
    ops: Vec<Op>,
    /// Values of the change-log entries put by this transaction, until the commit places them.
    pending: Vec<Held>,
}

impl LogWrite<'_> {
    fn reading(&self) -> Reading<'_> {
        Reading {
            tables: &self.state.tables,
            segments: &self.state.wal.segments,
            pending: &self.pending,
        }
    }
}

impl ReadTx for LogWrite<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.reading().get(table, key)
    }

    fn fetch(&self, table: Table, key: &[u8]) -> Result<Option<Fetched>, StoreError> {
        self.reading().fetch(table, key)
    }

    fn range(
        &self,
        table: Table,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        direction: Direction,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        self.reading().range(table, start, end, direction, visit)
    }
}

impl WriteTx for LogWrite<'_> {
    /// Owned or not (`put_owned` is the trait's default), the bytes are copied once, into their `Arc`.
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let key = held(key);
        let value = held(value);
        if table == Table::Log {
            let seq = seq_of(&key)?;
            let loc = Loc {
                segment: PENDING,
                block_offset: 0,
                block_len: 0,
                value_offset: u32::try_from(self.pending.len()).map_err(|_| corrupt("transaction size"))?,
                value_len: 0,
            };
            self.pending.push(value.clone());
            let previous = self.state.tables.log.set(seq, Some(loc))?;
            self.undo.push(Undo::Log(seq, previous));
        } else {
            let previous = self.state.tables.maps[table.slot()].insert(key.clone(), value.clone());
            self.undo.push(Undo::Map(table, key.clone(), previous));
        }
        self.ops.push(Op::Put(table, key, value));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        if table == Table::Log {
            let seq = seq_of(key)?;
            let previous = self.state.tables.log.set(seq, None)?;
            if previous.is_some() {
                self.undo.push(Undo::Log(seq, previous));
                self.ops.push(Op::Delete(table, held(key)));
            }
        } else if let Some((key, previous)) = self.state.tables.maps[table.slot()].remove_entry(key) {
            // The WAL record shares the removed key rather than a copy of it.
            self.ops.push(Op::Delete(table, key.clone()));
            self.undo.push(Undo::Map(table, key, Some(previous)));
        }
        Ok(())
    }
}

impl Drop for LogWrite<'_> {
    fn drop(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Map(table, key, previous) => {
                    let map = &mut self.state.tables.maps[table.slot()];
                    match previous {
                        Some(value) => map.insert(key, value),
                        None => map.remove(&key),
                    };
                }
                Undo::Log(seq, previous) => {
                    // Undone in reverse order, each change is at an end of the index again.
                    let _ = self.state.tables.log.set(seq, previous);
                }
            }
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(bytes: &[u8], at: &mut usize) -> Result<u64, StoreError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or(corrupt("WAL operation"))?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(corrupt("WAL operation"))
}

fn take<'b>(bytes: &'b [u8], at: &mut usize) -> Result<&'b [u8], StoreError> {
    let len = usize::try_from(take_varint(bytes, at)?).map_err(|_| corrupt("WAL operation"))?;
    let slice = bytes
        .get(*at..at.checked_add(len).ok_or(corrupt("WAL operation"))?)
        .ok_or(corrupt("WAL operation"))?;
    *at += len;
    Ok(slice)
}

/// What an operation does, in the low bits of its first byte (the table's slot above them).
const DELETE: u8 = 0;
const PUT: u8 = 1;
/// A put whose value is its own prefix followed by the end of a change-log value put later.
const PUT_SHARED: u8 = 2;

fn op_tag(table: Table, what: u8) -> u8 {
    ((table.slot() as u8) << 2) | what
}

fn table_of(tag: u8) -> Result<(Table, u8), StoreError> {
    let table = *Table::ALL
        .get(usize::from(tag >> 2))
        .ok_or(corrupt("WAL operation"))?;
    Ok((table, tag & 3))
}

/// How many bytes `a` and `b` end with alike. Compared a chunk at a time (one `memcmp` each: the
/// shared tails are whole compressed bodies), then byte by byte within the first chunk that differs.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    const CHUNK: usize = 32;
    let max = a.len().min(b.len());
    let mut n = 0;
    while n + CHUNK <= max && a[a.len() - n - CHUNK..a.len() - n] == b[b.len() - n - CHUNK..b.len() - n] {
        n += CHUNK;
    }
    n + a[..a.len() - n]
        .iter()
        .rev()
        .zip(b[..b.len() - n].iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

/// The change-log value at most [`SHARE_LOOKAHEAD`] operations after `ops[i]` that `value` shares
/// a tail of at least [`SHARE_MIN`] bytes with: (how far ahead, how many bytes).
fn shared_tail(ops: &[Op], i: usize, value: &[u8]) -> Option<(usize, usize)> {
    if value.len() < SHARE_MIN {
        return None;
    }
    let (ahead, log_value) = ops
        .iter()
        .enumerate()
        .skip(i + 1)
        .take(SHARE_LOOKAHEAD)
        .find_map(|(j, op)| match op {
            Op::Put(Table::Log, _, value) => Some((j - i, value)),
            _ => None,
        })?;
    let shared = common_suffix(value, log_value);
    (shared >= SHARE_MIN).then_some((ahead, shared))
}

/// A change-log value placed in a frame: its seq, its block (index in the frame) and offset in it.
struct Placed {
    seq: u64,
    block: usize,
    offset: usize,
    len: usize,
}

/// A frame ready to append: its bytes and where its blocks are within it.
struct Frame {
    bytes: Vec<u8>,
    blocks: Vec<(usize, usize)>,
    placed: Vec<Placed>,
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Compresses `raw` as the frame's next block (appended to `bytes`), and empties it.
fn close_block(
    raw: &mut Vec<u8>,
    bytes: &mut Vec<u8>,
    blocks: &mut Vec<(usize, usize)>,
) -> Result<(), StoreError> {
    if raw.is_empty() {
        return Ok(());
    }
    let start = bytes.len();
    // A block is at most 64 KiB plus one operation: a length past u32 is an encoding error.
    let raw_len = u32::try_from(raw.len()).map_err(failed("encode WAL block"))?;
    // Compressed straight into the frame, after room for the two lengths.
    bytes.resize(start + 8 + lz4_flex::block::get_maximum_output_size(raw.len()), 0);
    // Cannot fail (the room is LZ4's worst case); a failure is an encoding error, not a corrupt log.
    let comp_len =
        lz4_flex::block::compress_into(raw, &mut bytes[start + 8..]).map_err(failed("compress"))?;
    bytes.truncate(start + 8 + comp_len);
    bytes[start..start + 4].copy_from_slice(&raw_len.to_be_bytes());
    bytes[start + 4..start + 8].copy_from_slice(
        &u32::try_from(comp_len)
            .map_err(failed("encode WAL block"))?
            .to_be_bytes(),
    );
    blocks.push((start, bytes.len() - start));
    raw.clear();
    Ok(())
}

/// Encodes `ops` as a frame, in `bytes` (emptied first; a buffer kept from an earlier frame).
fn encode_frame(ops: &[Op], mut bytes: Vec<u8>) -> Result<Frame, StoreError> {
    bytes.clear();
    bytes.extend_from_slice(&FRAME_MAGIC.to_be_bytes());
    bytes.extend_from_slice(&[0; 8]);
    let mut blocks = Vec::new();
    let mut placed = Vec::new();
    let mut raw = Vec::with_capacity(BLOCK_RAW + 4096);
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Put(table, key, value) => match (*table != Table::Log)
                .then(|| shared_tail(ops, i, value))
                .flatten()
            {
                Some((ahead, shared)) => {
                    raw.push(op_tag(*table, PUT_SHARED));
                    put_bytes(&mut raw, key);
                    put_bytes(&mut raw, &value[..value.len() - shared]);
                    put_varint(&mut raw, ahead as u64);
                    put_varint(&mut raw, shared as u64);
                }
                None => {
                    raw.push(op_tag(*table, PUT));
                    put_bytes(&mut raw, key);
                    put_varint(&mut raw, value.len() as u64);
                    if *table == Table::Log {
                        placed.push(Placed {
                            seq: seq_of(key)?,
                            block: blocks.len(),
                            offset: raw.len(),
                            len: value.len(),
                        });
                    }
                    raw.extend_from_slice(value);
                }
            },
            Op::Delete(table, key) => {
                raw.push(op_tag(*table, DELETE));
                put_bytes(&mut raw, key);
            }
        }
        if raw.len() >= BLOCK_RAW {
            close_block(&mut raw, &mut bytes, &mut blocks)?;
        }
    }
    close_block(&mut raw, &mut bytes, &mut blocks)?;
    let payload_len = u32::try_from(bytes.len() - FRAME_HEADER).map_err(|_| corrupt("transaction size"))?;
    let crc = crc32fast::hash(&bytes[FRAME_HEADER..]);
    bytes[4..8].copy_from_slice(&payload_len.to_be_bytes());
    bytes[8..12].copy_from_slice(&crc.to_be_bytes());
    Ok(Frame {
        bytes,
        blocks,
        placed,
    })
}

/// One operation of a frame being replayed, borrowing from its decompressed block.
enum Replayed<'p> {
    /// The value, its block (index in the frame) and offset in the block.
    Put(Table, &'p [u8], &'p [u8], usize, usize),
    /// The value's own prefix, how many operations ahead its tail is, how long the tail is.
    Shared(Table, &'p [u8], &'p [u8], usize, usize),
    Delete(Table, &'p [u8]),
}

/// Applies a frame's operations to `tables` (recovery); `base` is the payload's offset in `segment`.
fn replay_frame(tables: &mut Tables, payload: &[u8], segment: u32, base: u64) -> Result<(), StoreError> {
    // (decompressed block, its offset and length in the segment)
    let mut blocks = Vec::new();
    let mut offset = 0;
    while offset < payload.len() {
        let header = payload.get(offset..offset + 8).ok_or(corrupt("WAL block"))?;
        let comp_len = u32::from_be_bytes(header[4..].try_into().expect("4 bytes")) as usize;
        let block = payload
            .get(offset..offset + 8 + comp_len)
            .ok_or(corrupt("WAL block"))?;
        let at = u32::try_from(base + offset as u64).map_err(|_| corrupt("WAL segment"))?;
        blocks.push((decode_block(block)?, at, block.len() as u32));
        offset += block.len();
    }
    let mut ops = Vec::new();
    for (index, (raw, _, _)) in blocks.iter().enumerate() {
        let mut at = 0;
        while at < raw.len() {
            let (table, what) = table_of(raw[at])?;
            at += 1;
            let key = take(raw, &mut at)?;
            ops.push(match what {
                DELETE => Replayed::Delete(table, key),
                PUT => {
                    let value = take(raw, &mut at)?;
                    Replayed::Put(table, key, value, index, at - value.len())
                }
                PUT_SHARED => {
                    let prefix = take(raw, &mut at)?;
                    let ahead = take_varint(raw, &mut at)? as usize;
                    let shared = take_varint(raw, &mut at)? as usize;
                    Replayed::Shared(table, key, prefix, ahead, shared)
                }
                _ => return Err(corrupt("WAL operation")),
            });
        }
    }
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Replayed::Put(Table::Log, key, value, block, offset) => {
                let (_, block_offset, block_len) = blocks[block];
                tables.log.set(
                    seq_of(key)?,
                    Some(Loc {
                        segment,
                        block_offset,
                        block_len,
                        value_offset: u32::try_from(offset).map_err(|_| corrupt("WAL block"))?,
                        value_len: u32::try_from(value.len()).map_err(|_| corrupt("WAL block"))?,
                    }),
                )?;
            }
            Replayed::Put(table, key, value, _, _) => {
                tables.maps[table.slot()].insert(held(key), held(value));
            }
            Replayed::Shared(table, key, prefix, ahead, shared) => {
                let Some(Replayed::Put(Table::Log, _, tail, _, _)) = ops.get(i + ahead) else {
                    return Err(corrupt("WAL operation"));
                };
                let tail = tail
                    .get(tail.len().checked_sub(shared).ok_or(corrupt("WAL operation"))?..)
                    .ok_or(corrupt("WAL operation"))?;
                let mut value = Vec::with_capacity(prefix.len() + tail.len());
                value.extend_from_slice(prefix);
                value.extend_from_slice(tail);
                tables.maps[table.slot()].insert(held(key), Arc::from(value));
            }
            Replayed::Delete(Table::Log, key) => {
                tables.log.set(seq_of(key)?, None)?;
            }
            Replayed::Delete(table, key) => {
                tables.maps[table.slot()].remove(key);
            }
        }
    }
    Ok(())
}

/// Replays the frames of one segment from `from`; returns where the valid frames end, and whether
/// they ended before the file did (a frame cut short or failing its CRC: the caller decides whether
/// that may be a torn write).
fn replay_segment(
    tables: &mut Tables,
    file: &File,
    number: u32,
    from: u64,
) -> Result<(u64, bool), StoreError> {
    let len = file.metadata().map_err(failed("stat"))?.len();
    let mut at = from;
    let mut header = [0u8; FRAME_HEADER];
    let mut payload = Vec::new();
    while at < len {
        if len - at < FRAME_HEADER as u64 || file.read_exact_at(&mut header, at).is_err() {
            return Ok((at, true));
        }
        let magic = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
        let payload_len = u64::from(u32::from_be_bytes(header[4..8].try_into().expect("4 bytes")));
        let crc = u32::from_be_bytes(header[8..].try_into().expect("4 bytes"));
        if magic != FRAME_MAGIC || len - at - (FRAME_HEADER as u64) < payload_len {
            return Ok((at, true));
        }
        payload.resize(payload_len as usize, 0);
        file.read_exact_at(&mut payload, at + FRAME_HEADER as u64)
            .map_err(failed("read"))?;
        if crc32fast::hash(&payload) != crc {
            return Ok((at, true));
        }
        replay_frame(tables, &payload, number, at + FRAME_HEADER as u64)?;
        at += FRAME_HEADER as u64 + payload_len;
    }
    Ok((at, false))
}

/// The checkpoint's contents besides the tables: the WAL position it covers.
struct Covered {
    segment: u32,
    offset: u64,
}

fn write_checkpoint(dir: &Path, tables: &Tables, covered: &Covered) -> Result<u64, StoreError> {
    let tmp = dir.join("checkpoint.tmp");
    let file = File::create(&tmp).map_err(failed("create checkpoint"))?;
    let mut out = CrcWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
        written: 0,
    };
    let write = |out: &mut CrcWriter, bytes: &[u8]| out.write(bytes).map_err(failed("write checkpoint"));
    write(&mut out, &CHECKPOINT_MAGIC.to_be_bytes())?;
    write(&mut out, &CHECKPOINT_FORMAT.to_be_bytes())?;
    write(&mut out, &covered.segment.to_be_bytes())?;
    write(&mut out, &covered.offset.to_be_bytes())?;
    for table in Table::ALL {
        if table == Table::Log {
            write(&mut out, &(tables.log.len() as u64).to_be_bytes())?;
            for (seq, loc) in tables.log.range(Bound::Unbounded, Bound::Unbounded) {
                write(&mut out, &seq.to_be_bytes())?;
                for field in [
                    loc.segment,
                    loc.block_offset,
                    loc.block_len,
                    loc.value_offset,
                    loc.value_len,
                ] {
                    write(&mut out, &field.to_be_bytes())?;
                }
            }
            continue;
        }
        let map = &tables.maps[table.slot()];
        write(&mut out, &(map.len() as u64).to_be_bytes())?;
        for (key, value) in map {
            // Keys and values are far below 4 GiB: a transaction's frame is refused past that.
            write(&mut out, &(key.len() as u32).to_be_bytes())?;
            write(&mut out, key)?;
            write(&mut out, &(value.len() as u32).to_be_bytes())?;
            write(&mut out, value)?;
        }
    }
    let crc = out.crc.clone().finalize();
    out.inner
        .write_all(&crc.to_be_bytes())
        .map_err(failed("write checkpoint"))?;
    let written = out.written + 4;
    let file = out
        .inner
        .into_inner()
        .map_err(|error| failed("write checkpoint")(error.error()))?;
    file.sync_all().map_err(failed("sync checkpoint"))?;
    std::fs::rename(&tmp, dir.join("checkpoint")).map_err(failed("rename checkpoint"))?;
    sync_dir(dir)?;
    Ok(written)
}

struct CrcWriter {
    inner: BufWriter<File>,
    crc: crc32fast::Hasher,
    written: u64,
}

impl CrcWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc.update(bytes);
        self.written += bytes.len() as u64;
        self.inner.write_all(bytes)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(failed("sync directory"))
}

/// Reads a checkpoint's fields in order, through a buffer, keeping the CRC of what it read.
struct Cursor {
    reader: std::io::BufReader<File>,
    crc: crc32fast::Hasher,
    buf: Vec<u8>,
}

impl Cursor {
    fn take(&mut self, n: usize) -> Result<&[u8], StoreError> {
        use std::io::Read as _;
        self.buf.resize(n, 0);
        self.reader
            .read_exact(&mut self.buf)
            .map_err(|_| corrupt("checkpoint"))?;
        self.crc.update(&self.buf);
        Ok(&self.buf)
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn bytes(&mut self) -> Result<Held, StoreError> {
        let len = self.u32()? as usize;
        Ok(held(self.take(len)?))
    }
}

/// Reads a checkpoint file: its tables, the WAL position it covers, and its size. Streamed, so that
/// memory holds the tables and not the file besides.
fn read_checkpoint(path: &Path) -> Result<Option<(Tables, Covered, u64)>, StoreError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(failed("read checkpoint")(error)),
    };
    let size = file.metadata().map_err(failed("read checkpoint"))?.len();
    let mut cursor = Cursor {
        reader: std::io::BufReader::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
        buf: Vec::new(),
    };
    if cursor.u32()? != CHECKPOINT_MAGIC || cursor.u32()? != CHECKPOINT_FORMAT {
        return Err(corrupt("checkpoint"));
    }
    let covered = Covered {
        segment: cursor.u32()?,
        offset: cursor.u64()?,
    };
    let mut tables = Tables::default();
    for table in Table::ALL {
        let count = cursor.u64()?;
        if table == Table::Log {
            for _ in 0..count {
                let seq = cursor.u64()?;
                let loc = Loc {
                    segment: cursor.u32()?,
                    block_offset: cursor.u32()?,
                    block_len: cursor.u32()?,
                    value_offset: cursor.u32()?,
                    value_len: cursor.u32()?,
                };
                tables.log.set(seq, Some(loc))?;
            }
            continue;
        }
        let map = &mut tables.maps[table.slot()];
        for _ in 0..count {
            let key = cursor.bytes()?;
            let value = cursor.bytes()?;
            map.insert(key, value);
        }
    }
    let crc = cursor.crc.clone().finalize();
    if cursor.u32()? != crc {
        return Err(corrupt("checkpoint"));
    }
    Ok(Some((tables, covered, size)))
}

impl LogEngine {
    /// Opens (or creates) the engine's directory: loads the checkpoint, replays the WAL after it,
    /// truncates a torn last frame. Blocks on file I/O.
    pub(crate) fn open(dir: &Path) -> Result<LogEngine, StoreError> {
        Self::open_with(dir, Tuning::default())
    }

    /// What opening took.
    pub(crate) fn opened(&self) -> Opened {
        self.shared.opened
    }

    pub(crate) fn open_with(dir: &Path, tuning: Tuning) -> Result<LogEngine, StoreError> {
        std::fs::create_dir_all(dir).map_err(failed("create_dir"))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(failed("open lock"))?;
        lock.try_lock().map_err(|_| StoreError::Backend {
            backend: Self::NAME,
            operation: "lock",
            message: format!("{} is already open in another process", dir.display()),
        })?;
        let (mut tables, covered, checkpoint_bytes) = match read_checkpoint(&dir.join("checkpoint"))? {
            Some(loaded) => loaded,
            None => (
                Tables::default(),
                Covered {
                    segment: 0,
                    offset: 0,
                },
                0,
            ),
        };
        let mut replayed = 0;
        let mut numbers = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(failed("read_dir"))? {
            let name = entry.map_err(failed("read_dir"))?.file_name();
            let name = name.to_string_lossy();
            if let Some(number) = name
                .strip_prefix("wal-")
                .and_then(|rest| rest.strip_suffix(".log"))
                .and_then(|number| number.parse::<u32>().ok())
            {
                numbers.push(number);
            }
        }
        numbers.sort_unstable();
        let mut segments = BTreeMap::new();
        let mut len = 0;
        let last = numbers.last().copied();
        for &number in &numbers {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(segment_path(dir, number))
                .map_err(failed("open segment"))?;
            if number >= covered.segment {
                let from = if number == covered.segment {
                    covered.offset
                } else {
                    0
                };
                let (end, torn) = replay_segment(&mut tables, &file, number, from)?;
                replayed += end - from;
                if torn {
                    if Some(number) != last {
                        return Err(corrupt("WAL segment before the last"));
                    }
                    tracing::warn!(
                        segment = number,
                        at = end,
                        "truncating a torn write at the end of the log"
                    );
                    file.set_len(end).map_err(failed("truncate"))?;
                    file.sync_all().map_err(failed("sync"))?;
                }
                len = end;
            }
            segments.insert(number, file);
        }
        let current = match last {
            Some(number) if number >= covered.segment => number,
            _ => {
                // No segment since the checkpoint: start the one it points at.
                let file = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .read(true)
                    .write(true)
                    .open(segment_path(dir, covered.segment))
                    .map_err(failed("create segment"))?;
                file.set_len(covered.offset).map_err(failed("truncate"))?;
                sync_dir(dir)?;
                segments.insert(covered.segment, file);
                len = covered.offset;
                covered.segment
            }
        };
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            tuning,
            state: RwLock::new(State {
                tables,
                wal: Wal {
                    segments,
                    current,
                    len,
                    written: 0,
                    checkpoint_started_at: 0,
                    checkpoint_bytes,
                    covered_segment: covered.segment,
                    broken: false,
                },
                spare: Spare::default(),
            }),
            checkpoint: Mutex::new(None),
            _lock: lock,
            opened: Opened {
                checkpoint_bytes,
                replayed_bytes: replayed,
            },
        });
        release_segments(
            dir,
            &mut shared.state.write().unwrap_or_else(PoisonError::into_inner),
        );
        Ok(LogEngine { shared })
    }

    /// Appends a transaction's frame, built in `buffer` (returned for the next), and places its
    /// change-log values; on failure the segment is cut back to where it was (or the engine refuses
    /// further writes, if even that fails).
    fn append(&self, state: &mut State, ops: &[Op], buffer: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let frame = encode_frame(ops, buffer)?;
        let wal = &mut state.wal;
        if wal.broken {
            return Err(StoreError::Backend {
                backend: Self::NAME,
                operation: "write",
                message: "an earlier write failed and could not be undone; restart to recover".to_owned(),
            });
        }
        if wal.len >= self.shared.tuning.segment_bytes {
            self.roll(wal)?;
        }
        let file = wal.segments.get(&wal.current).ok_or(corrupt("WAL segment"))?;
        let start = wal.len;
        let end = start + frame.bytes.len() as u64;
        if u32::try_from(end).is_err() {
            return Err(StoreError::TooLarge {
                operations: ops.len(),
                bytes: frame.bytes.len(),
                max_operations: usize::MAX,
                max_bytes: u32::MAX as usize,
            });
        }
        if let Err(error) = file
            .write_all_at(&frame.bytes, start)
            .and_then(|()| file.sync_data())
        {
            if file.set_len(start).and_then(|()| file.sync_data()).is_err() {
                wal.broken = true;
            }
            return Err(failed("write")(error));
        }
        wal.len = end;
        wal.written += frame.bytes.len() as u64;
        // Last first: a seq put twice is where its last put is; one removed since is left removed.
        for placed in frame.placed.iter().rev() {
            let (block_start, block_len) = frame.blocks[placed.block];
            if let Some(loc) = state.tables.log.get_mut(placed.seq)
                && loc.segment == PENDING
            {
                // Each fits in 32 bits: the frame's end does (checked above).
                *loc = Loc {
                    segment: wal.current,
                    block_offset: (start + block_start as u64) as u32,
                    block_len: block_len as u32,
                    value_offset: placed.offset as u32,
                    value_len: placed.len as u32,
                };
            }
        }
        Ok(frame.bytes)
    }

    /// Starts the next segment.
    fn roll(&self, wal: &mut Wal) -> Result<(), StoreError> {
        let next = wal.current + 1;
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(segment_path(&self.shared.dir, next))
            .map_err(failed("create segment"))?;
        sync_dir(&self.shared.dir)?;
        wal.segments.insert(next, file);
        wal.current = next;
        wal.len = 0;
        Ok(())
    }

    /// Starts a checkpoint of the state as it is (the caller holds the commit lock) on a thread of
    /// its own, unless one is running.
    fn start_checkpoint(&self, state: &mut State) {
        let mut running = self
            .shared
            .checkpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if running.as_ref().is_some_and(|handle| !handle.is_finished()) {
            return;
        }
        if let Some(handle) = running.take() {
            let _ = handle.join();
        }
        let snapshot = state.tables.clone();
        let covered = Covered {
            segment: state.wal.current,
            offset: state.wal.len,
        };
        state.wal.checkpoint_started_at = state.wal.written;
        let shared = Arc::clone(&self.shared);
        let handle = std::thread::Builder::new()
            .name("blox-checkpoint".to_owned())
            .spawn(move || {
                let started = tokio::time::Instant::now();
                match write_checkpoint(&shared.dir, &snapshot, &covered) {
                    Ok(bytes) => {
                        drop(snapshot);
                        let mut state = shared.state.write().unwrap_or_else(PoisonError::into_inner);
                        state.wal.checkpoint_bytes = bytes;
                        state.wal.covered_segment = covered.segment;
                        release_segments(&shared.dir, &mut state);
                        drop(state);
                        tracing::info!(
                            bytes,
                            segment = covered.segment,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "store checkpoint written"
                        );
                    }
                    Err(error) => tracing::error!(%error, "store checkpoint failed; the WAL is kept"),
                }
            });
        match handle {
            Ok(handle) => *running = Some(handle),
            Err(error) => tracing::error!(%error, "could not start a store checkpoint"),
        }
    }

    fn wants_checkpoint(&self, wal: &Wal) -> bool {
        let tuning = self.shared.tuning;
        let since = wal.written - wal.checkpoint_started_at;
        since
            >= tuning
                .checkpoint_min_wal
                .max(wal.checkpoint_bytes / tuning.checkpoint_divisor)
    }

    /// Leaves the directory as a crash would: no closing checkpoint.
    #[cfg(test)]
    fn crash(&self) {
        self.shared
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .wal
            .broken = true;
    }
}

/// The first segment still needed: by recovery (the checkpoint's) or by the change log (its oldest
/// retained value's).
fn keep_from(state: &State) -> u32 {
    let oldest_change = state.tables.log.first().map_or(u32::MAX, |loc| loc.segment);
    state
        .wal
        .covered_segment
        .min(oldest_change)
        .min(state.wal.current)
}

/// Deletes the segments before [`keep_from`].
fn release_segments(dir: &Path, state: &mut State) {
    let keep_from = keep_from(state);
    while let Some((&number, _)) = state.wal.segments.first_key_value() {
        if number >= keep_from {
            break;
        }
        state.wal.segments.remove(&number);
        if let Err(error) = std::fs::remove_file(segment_path(dir, number)) {
            tracing::warn!(segment = number, %error, "could not delete a WAL segment");
        }
    }
}

impl Engine for LogEngine {
    const NAME: &'static str = "log";
    const BLOCKING: bool = true;

    fn read<R>(&self, f: impl FnOnce(&dyn ReadTx) -> Result<R, StoreError>) -> Result<R, StoreError> {
        // A panicking writer has rolled back before the lock is released, so poisoned data is intact.
        let state = self.shared.state.read().unwrap_or_else(PoisonError::into_inner);
        f(&state.reading())
    }

    /// A write transaction holds the state until its fsync: a read that would wait for it, or for a
    /// writer waiting for it (std's lock lets writers go first), is given back.
    fn try_read<R, F>(&self, f: F) -> Result<Result<R, StoreError>, F>
    where
        F: FnOnce(&dyn ReadTx) -> Result<R, StoreError>,
    {
        match try_read_lock(&self.shared.state) {
            Some(state) => Ok(f(&state.reading())),
            None => Err(f),
        }
    }

    fn write<R>(
        &self,
        _fence: Option<&Fence>,
        mut f: impl FnMut(&mut dyn WriteTx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut state = self.shared.state.write().unwrap_or_else(PoisonError::into_inner);
        let Spare {
            undo,
            ops,
            pending,
            frame,
        } = std::mem::take(&mut state.spare);
        let mut tx = LogWrite {
            state: &mut state,
            undo,
            ops,
            pending,
        };
        let result = f(&mut tx)?;
        let frame = if tx.ops.is_empty() {
            frame
        } else {
            self.append(tx.state, &tx.ops, frame)?
        };
        // Committed: nothing to undo, and the buffers serve the next transaction.
        tx.undo.clear();
        let spare = Spare {
            undo: std::mem::take(&mut tx.undo),
            ops: std::mem::take(&mut tx.ops),
            pending: std::mem::take(&mut tx.pending),
            frame,
        };
        drop(tx);
        state.spare = spare.emptied();
        if state
            .wal
            .segments
            .first_key_value()
            .is_some_and(|(&first, _)| first < keep_from(&state))
        {
            release_segments(&self.shared.dir, &mut state);
        }
        if self.wants_checkpoint(&state.wal) {
            self.start_checkpoint(&mut state);
        }
        Ok(result)
    }
}

impl Drop for LogEngine {
    /// A clean close leaves a checkpoint of everything, so that the next open replays nothing.
    fn drop(&mut self) {
        let handle = self
            .shared
            .checkpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        let state = self.shared.state.read().unwrap_or_else(PoisonError::into_inner);
        if state.wal.written == state.wal.checkpoint_started_at || state.wal.broken {
            return;
        }
        let covered = Covered {
            segment: state.wal.current,
            offset: state.wal.len,
        };
        if let Err(error) = write_checkpoint(&self.shared.dir, &state.tables, &covered) {
            tracing::error!(%error, "the closing store checkpoint failed; the WAL is kept");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{letter, task};
    use crate::kv::{CHANGES_IN_PLACE, KvStore};
    use crate::{Change, DeadLetter, Kind, LogBounds, PageRequest, Record, StoreOptions, Write};

    fn tiny() -> Tuning {
        Tuning {
            segment_bytes: 4 << 10,
            checkpoint_min_wal: 16 << 10,
            checkpoint_divisor: 1,
        }
    }

    fn options() -> StoreOptions {
        StoreOptions {
            change_log_retention: 150,
            dead_letter_retention: 5,
            ..StoreOptions::default()
        }
    }

    fn open(dir: &Path) -> KvStore<LogEngine> {
        KvStore::open(LogEngine::open_with(dir, tiny()).unwrap(), options()).unwrap()
    }

    #[derive(Debug, PartialEq)]
    struct Everything {
        tasks: Vec<Record>,
        changes: Vec<Change>,
        letters: Vec<DeadLetter>,
        bounds: LogBounds,
    }

    async fn everything(store: &KvStore<LogEngine>) -> Everything {
        let bounds = store.log_bounds().await.unwrap();
        let page = PageRequest::default();
        Everything {
            tasks: store
                .list(Kind::Task, &Default::default(), page.clone())
                .await
                .unwrap()
                .items,
            changes: store.changes(bounds.oldest_resumable, 10_000).await.unwrap(),
            letters: store.dead_letters(page).await.unwrap().items,
            bounds,
        }
    }

    /// Writes batches that update, delete and park, enough to roll segments, trim the log and
    /// checkpoint (with `tiny()`).
    async fn storm(store: &KvStore<LogEngine>, rounds: std::ops::RangeInclusive<u64>) {
        for round in rounds {
            let mut writes: Vec<Write> = (0..20)
                .map(|t| {
                    let status = if t % 3 == 0 { "STOPPED" } else { "RUNNING" };
                    let mut doc = task("c", &format!("t{t}"), round, status);
                    // Bodies from a few bytes to kilobytes: long ones are compressed and shared
                    // between an entity and its change in the WAL.
                    doc.body = format!(
                        r#"{{"round":{round},"task":{t},"pad":"{}"}}"#,
                        "ab".repeat(t * t * 5)
                    )
                    .into_bytes();
                    Write::Upsert(doc)
                })
                .collect();
            writes.push(Write::Park(letter(&format!("bad {round}"))));
            if round % 4 == 0 {
                writes.push(Write::Delete {
                    key: task("c", &format!("t{}", round % 20), 0, "").key,
                    unchanged_since: u64::MAX,
                    at_ms: round,
                });
            }
            store.apply(writes).await.unwrap();
        }
    }

    fn segments(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|entry| {
                entry
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("wal-")
            })
            .count()
    }

    /// Reopened after a clean close and after a crash, at several points of the log's life, the store
    /// holds exactly what it held.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_keeps_everything() {
        for (rounds, crash) in [(1, false), (1, true), (40, false), (40, true), (120, true)] {
            let dir = tempfile::tempdir().unwrap();
            let before = {
                let store = open(dir.path());
                storm(&store, 1..=rounds).await;
                if crash {
                    store.engine().crash();
                }
                everything(&store).await
            };
            let store = open(dir.path());
            assert_eq!(
                everything(&store).await,
                before,
                "{rounds} rounds, crash: {crash}"
            );
            // And it goes on from there, durably.
            storm(&store, rounds + 1..=rounds + 3).await;
            let after = everything(&store).await;
            assert!(after.bounds.head > before.bounds.head);
            store.engine().crash();
            drop(store);
            assert_eq!(
                everything(&open(dir.path())).await,
                after,
                "{rounds} rounds, crash: {crash}"
            );
            if rounds > 100 {
                // The change log keeps 150 changes (~8 rounds): old segments were deleted.
                assert!(segments(dir.path()) < 30, "{} segments", segments(dir.path()));
            }
        }
    }

    /// A frame cut short or garbled at the end of the last segment (a write torn by the crash) is
    /// dropped on open; the store holds what was committed before it and takes new writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn torn_tail_is_truncated() {
        for garbage in [
            &b"BX"[..],
            &FRAME_MAGIC.to_be_bytes()[..],
            &[0x42, 0x58, 0x57, 0x31, 0, 0, 0, 9, 1, 2, 3, 4, 5][..],
        ] {
            let dir = tempfile::tempdir().unwrap();
            let before = {
                let store = open(dir.path());
                storm(&store, 1..=10).await;
                store.engine().crash();
                everything(&store).await
            };
            let last = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .filter(|path| path.file_name().unwrap().to_string_lossy().starts_with("wal-"))
                .max()
                .unwrap();
            let mut file = OpenOptions::new().append(true).open(&last).unwrap();
            file.write_all(garbage).unwrap();
            drop(file);
            let store = open(dir.path());
            assert_eq!(everything(&store).await, before);
            storm(&store, 11..=12).await;
            let after = everything(&store).await;
            store.engine().crash();
            drop(store);
            assert_eq!(everything(&open(dir.path())).await, after);
        }
    }

    /// The chunked suffix comparison agrees with a byte-by-byte one, around the chunk's size.
    #[test]
    fn common_suffix_counts_the_bytes_that_end_both_alike() {
        fn check(a: &[u8], b: &[u8]) {
            let bytewise = a
                .iter()
                .rev()
                .zip(b.iter().rev())
                .take_while(|(x, y)| x == y)
                .count();
            assert_eq!(common_suffix(a, b), bytewise, "{a:?} / {b:?}");
            assert_eq!(common_suffix(b, a), bytewise, "{b:?} / {a:?}");
        }
        let tail: Vec<u8> = (0..200_u8).collect();
        for shared in [0, 1, 31, 32, 33, 63, 64, 65, 100, 200] {
            for (head_a, head_b) in [(&b"x"[..], &b"y"[..]), (b"", b"z"), (b"", b""), (b"abc", b"abc")] {
                let a = [head_a, &tail[200 - shared..]].concat();
                let b = [head_b, &tail[200 - shared..]].concat();
                check(&a, &b);
            }
        }
        check(b"", b"");
        check(&tail, &tail[1..]);
    }

    /// An entity's value and the change put after it, which end alike, are written as one copy of
    /// that end and read back whole.
    #[test]
    fn shared_tails_are_written_once() {
        let body: Vec<u8> = (0..2_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let with = |head: &[u8]| held(&[head, &body].concat());
        let ops = vec![
            Op::Put(Table::Entities, held(b"k"), with(b"entity")),
            Op::Put(Table::Index, held(b"i"), held(b"")),
            Op::Put(Table::Log, held(&7u64.to_be_bytes()), with(b"change")),
            Op::Delete(Table::Index, held(b"j")),
        ];
        let frame = encode_frame(&ops, Vec::new()).unwrap();
        assert!(
            frame.bytes.len() < body.len() + 100,
            "{} bytes",
            frame.bytes.len()
        );
        let mut tables = Tables::default();
        tables.maps[Table::Index.slot()].insert(held(b"j"), held(b""));
        replay_frame(&mut tables, &frame.bytes[FRAME_HEADER..], 3, FRAME_HEADER as u64).unwrap();
        assert_eq!(tables.maps[Table::Entities.slot()][&b"k"[..]], with(b"entity"));
        assert!(tables.maps[Table::Index.slot()].contains_key(&b"i"[..]));
        assert!(!tables.maps[Table::Index.slot()].contains_key(&b"j"[..]));
        let loc = tables.log.get(7).unwrap();
        assert_eq!(loc.segment, 3);
        let block = &frame.bytes[loc.block_offset as usize..][..loc.block_len as usize];
        let raw = decode_block(block).unwrap();
        assert_eq!(
            &raw[loc.value_offset as usize..][..loc.value_len as usize],
            &with(b"change")[..]
        );
        assert_eq!(frame.placed.len(), 1);
        assert_eq!(frame.placed[0].offset, loc.value_offset as usize);
    }

    /// The change log's index answers ranges as a map of the same entries would, and refuses what
    /// would leave a gap.
    #[test]
    fn log_index_is_a_map_of_consecutive_seqs() {
        let loc = |n: u32| Loc {
            segment: n,
            block_offset: 0,
            block_len: 0,
            value_offset: 0,
            value_len: 0,
        };
        let mut index = LogIndex::default();
        let mut model = BTreeMap::new();
        for seq in 5..=20u64 {
            assert_eq!(index.set(seq, Some(loc(seq as u32))).unwrap(), None);
            model.insert(seq, loc(seq as u32));
        }
        for seq in [5, 6, 20] {
            assert_eq!(index.set(seq, None).unwrap(), model.remove(&seq));
        }
        assert_eq!(
            index.set(6, Some(loc(60))).unwrap(),
            None,
            "back in front of the first"
        );
        model.insert(6, loc(60));
        assert_eq!(index.set(10, Some(loc(100))).unwrap(), model.insert(10, loc(100)));
        assert!(index.set(12, None).is_err(), "a removal in the middle");
        assert!(index.set(30, Some(loc(30))).is_err(), "a gap after the last");
        assert!(index.set(2, Some(loc(2))).is_err(), "a gap before the first");
        assert_eq!(index.set(40, None).unwrap(), None);
        let bounds = [
            Bound::Unbounded,
            Bound::Included(0),
            Bound::Included(6),
            Bound::Excluded(6),
            Bound::Included(11),
            Bound::Excluded(19),
            Bound::Included(19),
            Bound::Included(25),
        ];
        for start in bounds {
            for end in bounds {
                let expected: Vec<(u64, Loc)> = if seq_range_is_empty(start, end) {
                    Vec::new()
                } else {
                    model.range((start, end)).map(|(k, v)| (*k, *v)).collect()
                };
                let got: Vec<_> = index.range(start, end).collect();
                assert_eq!(got, expected, "{start:?}..{end:?}");
                let mut reversed: Vec<_> = index.range(start, end).rev().collect();
                reversed.reverse();
                assert_eq!(reversed, expected, "{start:?}..{end:?} reversed");
            }
        }
        assert_eq!(index.len(), model.len());
        assert_eq!(index.first(), model.values().next().copied());
    }

    /// A second process (here, a second open) cannot open a directory in use.
    #[test]
    fn one_process_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _first = LogEngine::open(dir.path()).unwrap();
        let error = LogEngine::open(dir.path()).err().unwrap();
        assert!(error.to_string().contains("already open"), "{error}");
    }

    /// A write transaction holds the engine until its fsync (~90 ms for 10,000 events). A read of a
    /// few entries that would wait for it waits on the blocking pool, not on the worker that asked:
    /// here the runtime's only thread, which must go on to release the writer. So do a stream's reads
    /// of the change log, live (a few changes, read in place when no writer holds the engine) or a
    /// backlog.
    #[tokio::test(flavor = "current_thread")]
    async fn a_read_that_would_wait_for_a_writer_leaves_its_worker_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        storm(&store, 1..=1).await;
        assert!(
            store.engine().try_read(|_| Ok(())).is_ok(),
            "with no writer, a read runs in place"
        );
        let key = task("c", "t1", 0, "").key;
        let record = check_hand_off(&store, {
            let key = key.clone();
            |store| async move { store.get(&key).await }
        })
        .await
        .unwrap()
        .expect("the task is stored");
        assert_eq!(record.doc.key, key);
        let LogBounds {
            oldest_resumable,
            head,
        } = store.log_bounds().await.unwrap();
        assert!(
            head - oldest_resumable > CHANGES_IN_PLACE,
            "a backlog is read too"
        );
        for after in [head - 1, oldest_resumable] {
            let changes = check_hand_off(
                &store,
                move |store| async move { store.changes(after, 1_000).await },
            )
            .await
            .unwrap();
            let seqs: Vec<u64> = changes.iter().map(|change| change.seq).collect();
            assert_eq!(seqs, (after + 1..=head).collect::<Vec<_>>(), "after {after}");
        }
    }

    /// Runs `read` while a writer holds `store`'s engine, and checks that the read waited for the
    /// writer without holding the runtime's only worker (which releases the writer). Its output.
    async fn check_hand_off<T, Read>(
        store: &KvStore<LogEngine>,
        read: impl FnOnce(KvStore<LogEngine>) -> Read,
    ) -> T
    where
        Read: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        const DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
        let (held, holding) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                store.engine().write(None, |_| {
                    held.send(()).unwrap();
                    // Not released in time: the read blocked the thread that releases.
                    Ok(released.recv_timeout(DEADLINE).is_ok())
                })
            })
        };
        holding.recv().unwrap();
        let (started, reading) = tokio::sync::oneshot::channel();
        let read = read(store.clone());
        let read = tokio::spawn(async move {
            let _ = started.send(());
            // Nothing between the signal and the engine's lock awaits: by the time this task gives
            // the thread back, the read has been handed off or has run (or blocks here).
            read.await
        });
        // Resumes only once the read's task has given the thread back: one thread runs one task.
        reading.await.unwrap();
        let finished_under_the_writer = read.is_finished();
        let _ = release.send(());
        assert!(
            writer.join().unwrap().unwrap(),
            "the read waiting for the writer held the runtime's only worker"
        );
        assert!(!finished_under_the_writer, "the read did not wait for the writer");
        read.await.unwrap()
    }
}
