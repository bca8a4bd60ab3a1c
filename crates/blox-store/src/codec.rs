//! Byte encodings of the store's keys and values.
//!
//! Keys sort the way listings must: an entity key is `[kind] cluster 0x00 id`, so that one cluster's
//! entities are contiguous; an index key is `[kind][index] value 0x00 cluster 0x00 id`, so that one
//! value's (and one value-and-cluster's) entries are contiguous. NUL is the separator, hence refused in
//! the strings keys are made of.
//!
//! Values start with a format byte, then fixed-width integers (u64 big-endian), length-prefixed strings
//! (u32 big-endian length) and, last, the body. Decoding never panics: anything that does not parse is
//! [`StoreError::Corrupt`].
//!
//! Entity and change values hold the entity's JSON body; since format 2 it is stored as a [`Body`]: a
//! tag byte, then either the JSON as given or an LZ4 block of it. Every change writes a body twice
//! (entity and change log), so their size is most of what a batch writes. Format 1 values (plain body,
//! no tag) are still read, so that files written before compression keep working.

use blox_model::ClusterName;

use crate::{Change, DeadLetter, Document, Key, Kind, StoreError};

/// Format of tombstones and dead letters; bumped when a layout changes.
const FORMAT: u8 = 1;

/// Format of entity and change values: 2 = tagged [`Body`]; 1 (still read) = plain body, no tag.
const DOC_FORMAT: u8 = 2;
const DOC_FORMAT_PLAIN: u8 = 1;

/// Tags of a format-2 body.
const BODY_PLAIN: u8 = 0;
const BODY_LZ4: u8 = 1;

/// Bodies shorter than this are stored plain: LZ4 gains little on them and a GET of one would pay
/// for decompression anyway.
const COMPRESS_MIN: usize = 128;

/// LZ4 expands at most ~255:1; a stored length beyond that is corruption, and must not be allocated.
const LZ4_MAX_RATIO: usize = 255;

/// The first byte of every entity and index key, and a field of every change. Stored: a kind keeps its
/// byte forever, and new kinds take new bytes.
pub(crate) fn kind_byte(kind: Kind) -> u8 {
    match kind {
        Kind::Task => 1,
        Kind::Instance => 2,
        Kind::Environment => 3,
        Kind::Revision => 4,
        Kind::Deployment => 5,
        Kind::Intent => 6,
        Kind::Failure => 7,
        Kind::Name => 8,
    }
}

fn kind_of(byte: u8, what: &'static str) -> Result<Kind, StoreError> {
    match byte {
        1 => Ok(Kind::Task),
        2 => Ok(Kind::Instance),
        3 => Ok(Kind::Environment),
        4 => Ok(Kind::Revision),
        5 => Ok(Kind::Deployment),
        6 => Ok(Kind::Intent),
        7 => Ok(Kind::Failure),
        8 => Ok(Kind::Name),
        _ => Err(StoreError::Corrupt { what }),
    }
}

/// The secondary indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Index {
    Status = 1,
    StartedBy = 2,
}

/// Whether a string cannot be part of a key or an indexed value: [`blox_model::storable`]'s rule,
/// which event parsing applies too, so that what parses is what the store accepts.
pub(crate) fn has_nul(value: &str) -> bool {
    !blox_model::storable(value)
}

pub(crate) fn check_nul(field: &'static str, value: &str) -> Result<(), StoreError> {
    if has_nul(value) {
        Err(StoreError::InvalidValue { field })
    } else {
        Ok(())
    }
}

/// `[kind] cluster 0 id`, refusing NUL in the cluster or id.
pub(crate) fn entity_key(key: &Key) -> Result<Vec<u8>, StoreError> {
    check_nul("cluster", key.cluster.as_str())?;
    check_nul("id", &key.id)?;
    let cluster = key.cluster.as_str().as_bytes();
    let mut out = Vec::with_capacity(2 + cluster.len() + key.id.len());
    out.push(kind_byte(key.kind));
    out.extend_from_slice(cluster);
    out.push(0);
    out.extend_from_slice(key.id.as_bytes());
    Ok(out)
}

/// The prefix of a kind's entity keys, or of one cluster's. The caller checked `cluster` for NUL.
pub(crate) fn entity_prefix(kind: Kind, cluster: Option<&str>) -> Vec<u8> {
    let mut out = vec![kind_byte(kind)];
    if let Some(cluster) = cluster {
        out.extend_from_slice(cluster.as_bytes());
        out.push(0);
    }
    out
}

/// `[kind][index] value 0 cluster 0 id`, built from the entity key (whose tail is `cluster 0 id`).
pub(crate) fn index_key(entity_key: &[u8], index: Index, value: &str) -> Vec<u8> {
    let tail = entity_key.get(1..).unwrap_or_default();
    let mut out = Vec::with_capacity(3 + value.len() + tail.len());
    out.push(entity_key.first().copied().unwrap_or_default());
    out.push(index as u8);
    out.extend_from_slice(value.as_bytes());
    out.push(0);
    out.extend_from_slice(tail);
    out
}

/// The prefix of one value's index entries, or of one value-and-cluster's. The caller checked for NUL.
pub(crate) fn index_prefix(kind: Kind, index: Index, value: &str, cluster: Option<&str>) -> Vec<u8> {
    let mut out = vec![kind_byte(kind), index as u8];
    out.extend_from_slice(value.as_bytes());
    out.push(0);
    if let Some(cluster) = cluster {
        out.extend_from_slice(cluster.as_bytes());
        out.push(0);
    }
    out
}

/// The entity key an index key points at.
pub(crate) fn entity_key_of_index(index_key: &[u8]) -> Result<Vec<u8>, StoreError> {
    let corrupt = StoreError::Corrupt { what: "index key" };
    let (&kind, rest) = index_key
        .split_first()
        .ok_or(StoreError::Corrupt { what: "index key" })?;
    let rest = rest.get(1..).ok_or(StoreError::Corrupt { what: "index key" })?;
    let separator = rest.iter().position(|&b| b == 0).ok_or(corrupt)?;
    let tail = &rest[separator + 1..];
    let mut out = Vec::with_capacity(1 + tail.len());
    out.push(kind);
    out.extend_from_slice(tail);
    Ok(out)
}

/// The (cluster, id) parts of an entity key, as bytes.
pub(crate) fn split_entity_key(key: &[u8]) -> Result<(Kind, &[u8], &[u8]), StoreError> {
    let what = "entity key";
    let (&kind, rest) = key.split_first().ok_or(StoreError::Corrupt { what })?;
    let separator = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or(StoreError::Corrupt { what })?;
    Ok((kind_of(kind, what)?, &rest[..separator], &rest[separator + 1..]))
}

pub(crate) fn parse_entity_key(key: &[u8]) -> Result<Key, StoreError> {
    let what = "entity key";
    let (kind, cluster, id) = split_entity_key(key)?;
    Ok(Key {
        kind,
        cluster: cluster_name(cluster, what)?,
        id: string(id, what)?,
    })
}

fn string(bytes: &[u8], what: &'static str) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::Corrupt { what })
}

pub(crate) fn cluster_name(bytes: &[u8], what: &'static str) -> Result<ClusterName, StoreError> {
    ClusterName::new(string(bytes, what)?).map_err(|_| StoreError::Corrupt { what })
}

pub(crate) fn u64_key(value: u64) -> [u8; 8] {
    value.to_be_bytes()
}

pub(crate) fn decode_u64(bytes: &[u8], what: &'static str) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt { what })?;
    Ok(u64::from_be_bytes(array))
}

fn put_str(out: &mut Vec<u8>, value: &[u8]) {
    // Strings here are keys, statuses and short texts; a length beyond u32 cannot arise from ECS, and
    // saturating keeps encoding total (decoding would then report corruption rather than panic).
    out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(value);
}

fn put_opt(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => out.push(0),
        Some(value) => {
            out.push(1);
            put_str(out, value.as_bytes());
        }
    }
}

/// A cursor over an encoded value; every read checks bounds.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Result<Self, StoreError> {
        let mut reader = Reader { buf, what };
        if reader.u8()? != FORMAT {
            return Err(reader.corrupt());
        }
        Ok(reader)
    }

    /// A reader of an entity or change value, and whether its body is tagged (format 2).
    fn new_doc(buf: &'a [u8], what: &'static str) -> Result<(Self, bool), StoreError> {
        let mut reader = Reader { buf, what };
        match reader.u8()? {
            DOC_FORMAT => Ok((reader, true)),
            DOC_FORMAT_PLAIN => Ok((reader, false)),
            _ => Err(reader.corrupt()),
        }
    }

    /// The body that ends a value.
    fn body(&mut self, tagged: bool) -> Result<Body<'a>, StoreError> {
        if !tagged {
            return Ok(Body::Plain(self.rest()));
        }
        match self.u8()? {
            BODY_PLAIN => Ok(Body::Plain(self.rest())),
            BODY_LZ4 => {
                let len: [u8; 4] = self.take(4)?.try_into().map_err(|_| self.corrupt())?;
                let len = u32::from_be_bytes(len) as usize;
                let block = self.rest();
                if len > block.len().saturating_mul(LZ4_MAX_RATIO) {
                    return Err(self.corrupt());
                }
                Ok(Body::Lz4 { len, block })
            }
            _ => Err(self.corrupt()),
        }
    }

    fn corrupt(&self) -> StoreError {
        StoreError::Corrupt { what: self.what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if n > self.buf.len() {
            return Err(self.corrupt());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, StoreError> {
        decode_u64(self.take(8)?, self.what)
    }

    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let len: [u8; 4] = self.take(4)?.try_into().map_err(|_| self.corrupt())?;
        self.take(u32::from_be_bytes(len) as usize)
    }

    fn str(&mut self) -> Result<&'a str, StoreError> {
        let bytes = self.bytes()?;
        std::str::from_utf8(bytes).map_err(|_| self.corrupt())
    }

    fn opt_str(&mut self) -> Result<Option<&'a str>, StoreError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.str()?)),
            _ => Err(self.corrupt()),
        }
    }

    fn bool(&mut self) -> Result<bool, StoreError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.corrupt()),
        }
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// An entity's JSON body as stored, borrowed from an encoded value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body<'a> {
    /// The JSON as given.
    Plain(&'a [u8]),
    /// An LZ4 block of `len` bytes of JSON.
    Lz4 { len: usize, block: &'a [u8] },
}

impl<'a> Body<'a> {
    /// The body to store for `plain`: `compressed` (from [`compress`]) when there is one.
    pub(crate) fn of(plain: &'a [u8], compressed: Option<&'a [u8]>) -> Body<'a> {
        match compressed {
            Some(block) => Body::Lz4 {
                len: plain.len(),
                block,
            },
            None => Body::Plain(plain),
        }
    }

    /// The JSON, decompressed if need be.
    pub(crate) fn to_vec(self) -> Result<Vec<u8>, StoreError> {
        match self {
            Body::Plain(plain) => Ok(plain.to_vec()),
            Body::Lz4 { len, block } => {
                let plain = lz4_flex::block::decompress(block, len)
                    .map_err(|_| StoreError::Corrupt { what: "entity body" })?;
                if plain.len() != len {
                    return Err(StoreError::Corrupt { what: "entity body" });
                }
                Ok(plain)
            }
        }
    }

    /// Appends the JSON to `out`, decompressing straight into it.
    pub(crate) fn append_to(self, out: &mut Vec<u8>) -> Result<(), StoreError> {
        match self {
            Body::Plain(plain) => out.extend_from_slice(plain),
            Body::Lz4 { len, block } => {
                let start = out.len();
                out.resize(start + len, 0);
                let written = lz4_flex::block::decompress_into(block, &mut out[start..])
                    .map_err(|_| StoreError::Corrupt { what: "entity body" })?;
                if written != len {
                    return Err(StoreError::Corrupt { what: "entity body" });
                }
            }
        }
        Ok(())
    }

    /// Whether the JSON is exactly `plain`; decompresses only when the lengths agree.
    pub(crate) fn equals(self, plain: &[u8]) -> Result<bool, StoreError> {
        match self {
            Body::Plain(stored) => Ok(stored == plain),
            Body::Lz4 { len, .. } if len != plain.len() => Ok(false),
            Body::Lz4 { .. } => Ok(self.to_vec()? == plain),
        }
    }

    fn stored_len(self) -> usize {
        match self {
            Body::Plain(plain) => 1 + plain.len(),
            Body::Lz4 { block, .. } => 5 + block.len(),
        }
    }

    fn put(self, out: &mut Vec<u8>) {
        match self {
            Body::Plain(plain) => {
                out.push(BODY_PLAIN);
                out.extend_from_slice(plain);
            }
            Body::Lz4 { len, block } => {
                out.push(BODY_LZ4);
                // Bodies are ECS JSON documents of a few kilobytes; see `put_str` on saturation.
                out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
                out.extend_from_slice(block);
            }
        }
    }
}

/// The LZ4 block of a body, when storing it compressed is worth it: the body is long enough, and the
/// block (with its length) is smaller.
pub(crate) fn compress(plain: &[u8]) -> Option<Vec<u8>> {
    if plain.len() < COMPRESS_MIN || u32::try_from(plain.len()).is_err() {
        return None;
    }
    let block = lz4_flex::block::compress(plain);
    (block.len() + 4 < plain.len()).then_some(block)
}

/// The stored fields of an entity, borrowed from its encoded value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntityView<'a> {
    pub seq: u64,
    pub version: u64,
    pub status: &'a str,
    pub started_by: Option<&'a str>,
    pub body: Body<'a>,
}

impl<'a> EntityView<'a> {
    /// The fields of `doc` at `seq`, with its body as `body` (see [`Body::of`]).
    pub(crate) fn of(seq: u64, doc: &'a Document, body: Body<'a>) -> Self {
        EntityView {
            seq,
            version: doc.version,
            status: &doc.status,
            started_by: doc.started_by.as_deref(),
            body,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let started_by = self.started_by.map_or(0, |s| 5 + s.len());
        let mut out =
            Vec::with_capacity(1 + 16 + 4 + self.status.len() + 1 + started_by + self.body.stored_len());
        out.push(DOC_FORMAT);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        put_str(&mut out, self.status.as_bytes());
        put_opt(&mut out, self.started_by);
        self.body.put(&mut out);
        out
    }

    pub(crate) fn decode(bytes: &'a [u8]) -> Result<Self, StoreError> {
        let (mut r, tagged) = Reader::new_doc(bytes, "entity")?;
        Ok(EntityView {
            seq: r.u64()?,
            version: r.u64()?,
            status: r.str()?,
            started_by: r.opt_str()?,
            body: r.body(tagged)?,
        })
    }

    /// Only the sequence number, without validating the rest.
    pub(crate) fn decode_seq(bytes: &[u8]) -> Result<u64, StoreError> {
        Reader::new_doc(bytes, "entity")?.0.u64()
    }

    pub(crate) fn to_document(self, key: Key) -> Result<Document, StoreError> {
        Ok(Document {
            key,
            version: self.version,
            status: self.status.to_owned(),
            started_by: self.started_by.map(str::to_owned),
            body: self.body.to_vec()?,
        })
    }
}

/// Encodes a change from its entity key (for kind, cluster and id) and the entity's fields.
pub(crate) fn encode_change(
    entity_key: &[u8],
    deleted: bool,
    entity: &EntityView<'_>,
) -> Result<Vec<u8>, StoreError> {
    let (kind, cluster, id) = split_entity_key(entity_key)?;
    let started_by = entity.started_by.map_or(0, |s| 5 + s.len());
    let mut out = Vec::with_capacity(
        3 + 8
            + cluster.len()
            + id.len()
            + 8
            + 4
            + entity.status.len()
            + 1
            + started_by
            + entity.body.stored_len(),
    );
    out.push(DOC_FORMAT);
    out.push(kind_byte(kind));
    out.push(u8::from(deleted));
    put_str(&mut out, cluster);
    put_str(&mut out, id);
    out.extend_from_slice(&entity.version.to_be_bytes());
    put_str(&mut out, entity.status.as_bytes());
    put_opt(&mut out, entity.started_by);
    entity.body.put(&mut out);
    Ok(out)
}

/// What trimming needs of an encoded change: the entity key when it is a deletion, `None` otherwise.
pub(crate) fn decode_deletion(bytes: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    let (mut r, _) = Reader::new_doc(bytes, "change")?;
    let kind = kind_of(r.u8()?, "change")?;
    if !r.bool()? {
        return Ok(None);
    }
    let cluster = r.bytes()?;
    let id = r.bytes()?;
    let mut key = Vec::with_capacity(2 + cluster.len() + id.len());
    key.push(kind_byte(kind));
    key.extend_from_slice(cluster);
    key.push(0);
    key.extend_from_slice(id);
    Ok(Some(key))
}

pub(crate) fn decode_change(seq: u64, bytes: &[u8]) -> Result<Change, StoreError> {
    let what = "change";
    let (mut r, tagged) = Reader::new_doc(bytes, what)?;
    let kind = kind_of(r.u8()?, what)?;
    let deleted = r.bool()?;
    let cluster = cluster_name(r.bytes()?, what)?;
    let id = r.str()?.to_owned();
    let doc = Document {
        key: Key { kind, cluster, id },
        version: r.u64()?,
        status: r.str()?.to_owned(),
        started_by: r.opt_str()?.map(str::to_owned),
        body: r.body(tagged)?.to_vec()?,
    };
    Ok(Change { seq, deleted, doc })
}

/// A deleted entity's tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tombstone {
    /// The deleted entity's version.
    pub version: u64,
    /// The sequence number of its deletion.
    pub seq: u64,
    /// The deletion's time (ms since the Unix epoch, the caller's); 0 when none was given.
    pub at_ms: u64,
}

impl Tombstone {
    /// Its key in the tombstone time table.
    pub(crate) fn time_key(&self) -> [u8; 16] {
        tombstone_time_key(self.at_ms, self.seq)
    }
}

/// A tombstone: version, seq, and (since deletions carry a time) the time. Tombstones written before
/// that end after the seq, and read with time 0.
pub(crate) fn encode_tombstone(tombstone: &Tombstone) -> [u8; 25] {
    let mut out = [0; 25];
    out[0] = FORMAT;
    out[1..9].copy_from_slice(&tombstone.version.to_be_bytes());
    out[9..17].copy_from_slice(&tombstone.seq.to_be_bytes());
    out[17..].copy_from_slice(&tombstone.at_ms.to_be_bytes());
    out
}

pub(crate) fn decode_tombstone(bytes: &[u8]) -> Result<Tombstone, StoreError> {
    let mut r = Reader::new(bytes, "tombstone")?;
    let (version, seq) = (r.u64()?, r.u64()?);
    let at_ms = match r.buf.len() {
        0 => 0,
        _ => r.u64()?,
    };
    if !r.buf.is_empty() {
        return Err(r.corrupt());
    }
    Ok(Tombstone { version, seq, at_ms })
}

/// `at_ms seq`, both u64 BE: the time table's keys sort by time, then by deletion.
pub(crate) fn tombstone_time_key(at_ms: u64, seq: u64) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&at_ms.to_be_bytes());
    out[8..].copy_from_slice(&seq.to_be_bytes());
    out
}

/// The (time, seq) of a time table key.
pub(crate) fn decode_tombstone_time_key(key: &[u8]) -> Result<(u64, u64), StoreError> {
    let what = "tombstone time key";
    if key.len() != 16 {
        return Err(StoreError::Corrupt { what });
    }
    Ok((decode_u64(&key[..8], what)?, decode_u64(&key[8..], what)?))
}

pub(crate) fn encode_dead_letter(letter: &DeadLetter) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        1 + 5
            + letter.message_id.as_ref().map_or(0, String::len)
            + 8
            + letter.received_at.len()
            + letter.reason.len()
            + letter.body.len(),
    );
    out.push(FORMAT);
    put_opt(&mut out, letter.message_id.as_deref());
    put_str(&mut out, letter.received_at.as_bytes());
    put_str(&mut out, letter.reason.as_bytes());
    out.extend_from_slice(letter.body.as_bytes());
    out
}

pub(crate) fn decode_dead_letter(key: &[u8], bytes: &[u8]) -> Result<DeadLetter, StoreError> {
    let what = "dead letter";
    let id = decode_u64(key, what)?;
    let mut r = Reader::new(bytes, what)?;
    let message_id = r.opt_str()?.map(str::to_owned);
    let received_at = r.str()?.to_owned();
    let reason = r.str()?.to_owned();
    let body = std::str::from_utf8(r.rest())
        .map_err(|_| StoreError::Corrupt { what })?
        .to_owned();
    Ok(DeadLetter {
        id,
        message_id,
        received_at,
        reason,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Document {
        Document {
            key: Key::task(
                ClusterName::new("prod").unwrap(),
                "arn:aws:ecs:us-east-1:123456789012:task/prod/1",
            ),
            version: 7,
            status: "RUNNING".into(),
            started_by: Some("ecs-svc/1".into()),
            body: br#"{"lastStatus":"RUNNING"}"#.to_vec(),
        }
    }

    /// A body LZ4 shrinks, like the JSON of a real task.
    fn long_doc() -> Document {
        let mut doc = doc();
        doc.body = format!(
            r#"{{"clusterARN":"arn:aws:ecs:us-east-1:123456789012:cluster/prod","containers":[{}],"lastStatus":"RUNNING"}}"#,
            (0..6)
                .map(|i| format!(r#"{{"name":"c{i}","lastStatus":"RUNNING","containerARN":"arn:aws:ecs:us-east-1:123456789012:container/prod/{i}"}}"#))
                .collect::<Vec<_>>()
                .join(",")
        )
        .into_bytes();
        doc
    }

    /// Both bodies: one stored plain, one compressed.
    fn docs() -> [(Document, bool); 2] {
        [(doc(), false), (long_doc(), true)]
    }

    /// Every strict prefix of an encoding, and a wrong format byte, decode to an error, not a panic.
    fn check_truncations<T: std::fmt::Debug>(bytes: &[u8], decode: impl Fn(&[u8]) -> Result<T, StoreError>) {
        assert!(decode(bytes).is_ok());
        for len in 0..bytes.len() {
            // A plain body is unprefixed, so prefixes that only cut it still decode: that is fine.
            let _ = decode(&bytes[..len]);
        }
        assert!(decode(&[]).is_err());
        let mut wrong = bytes.to_vec();
        wrong[0] = 0xee;
        assert!(matches!(decode(&wrong), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn entity_round_trip() {
        for (doc, compresses) in docs() {
            let compressed = compress(&doc.body);
            assert_eq!(compressed.is_some(), compresses);
            let body = Body::of(&doc.body, compressed.as_deref());
            let bytes = EntityView::of(42, &doc, body).encode();
            if compresses {
                assert!(bytes.len() < doc.body.len());
            }
            let view = EntityView::decode(&bytes).unwrap();
            assert_eq!(view, EntityView::of(42, &doc, body));
            assert_eq!(EntityView::decode_seq(&bytes).unwrap(), 42);
            assert_eq!(view.to_document(doc.key.clone()).unwrap(), doc);
            assert!(view.body.equals(&doc.body).unwrap());
            assert!(!view.body.equals(b"{}").unwrap());
            let mut other = doc.body.clone();
            *other.last_mut().unwrap() = b' ';
            assert!(!view.body.equals(&other).unwrap());
            check_truncations(&bytes, |b| EntityView::decode(b)?.to_document(doc.key.clone()));
            // Cutting into the header is an error.
            assert!(EntityView::decode(&bytes[..10]).is_err());
        }
    }

    #[test]
    fn change_round_trip() {
        for (doc, _) in docs() {
            let key = entity_key(&doc.key).unwrap();
            let compressed = compress(&doc.body);
            let entity = EntityView::of(0, &doc, Body::of(&doc.body, compressed.as_deref()));
            for deleted in [false, true] {
                let bytes = encode_change(&key, deleted, &entity).unwrap();
                assert_eq!(
                    decode_change(9, &bytes).unwrap(),
                    Change {
                        seq: 9,
                        deleted,
                        doc: doc.clone()
                    }
                );
                assert_eq!(decode_deletion(&bytes).unwrap(), deleted.then(|| key.clone()));
                check_truncations(&bytes, |b| decode_change(9, b));
                check_truncations(&bytes, decode_deletion);
            }
        }
    }

    /// Values written before bodies were compressed (format 1: no tag, plain body) still decode.
    #[test]
    fn format_1_values_decode() {
        let doc = long_doc();
        let mut entity = vec![1];
        entity.extend_from_slice(&42_u64.to_be_bytes());
        entity.extend_from_slice(&doc.version.to_be_bytes());
        put_str(&mut entity, doc.status.as_bytes());
        put_opt(&mut entity, doc.started_by.as_deref());
        entity.extend_from_slice(&doc.body);
        let view = EntityView::decode(&entity).unwrap();
        assert_eq!(view.seq, 42);
        assert_eq!(view.to_document(doc.key.clone()).unwrap(), doc);

        let key = entity_key(&doc.key).unwrap();
        let (_, cluster, id) = split_entity_key(&key).unwrap();
        let mut change = vec![1, kind_byte(Kind::Task), 0];
        put_str(&mut change, cluster);
        put_str(&mut change, id);
        change.extend_from_slice(&entity[9..]);
        assert_eq!(decode_change(3, &change).unwrap().doc, doc);
        // A deletion re-encodes a format-1 entity in the current format.
        let bytes = encode_change(&key, true, &view).unwrap();
        assert_eq!(bytes[0], DOC_FORMAT);
        assert_eq!(decode_change(4, &bytes).unwrap().doc, doc);
    }

    #[test]
    fn corrupt_compressed_bodies_are_errors() {
        let doc = long_doc();
        let compressed = compress(&doc.body).unwrap();
        let bytes = EntityView::of(1, &doc, Body::of(&doc.body, Some(&compressed))).encode();
        let body_at = bytes.len() - compressed.len() - 5;
        assert_eq!(bytes[body_at], BODY_LZ4);
        let decode = |bytes: &[u8]| EntityView::decode(bytes)?.to_document(doc.key.clone());
        // A length no block could expand to is refused before anything is allocated.
        let mut huge = bytes.clone();
        huge[body_at + 1..body_at + 5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&huge), Err(StoreError::Corrupt { .. })));
        // A length that disagrees with the block.
        let mut short = bytes.clone();
        short[body_at + 4] -= 1;
        assert!(matches!(decode(&short), Err(StoreError::Corrupt { .. })));
        // A damaged block, and an unknown tag.
        let mut damaged = bytes.clone();
        for b in &mut damaged[body_at + 5..] {
            *b = 0xff;
        }
        assert!(matches!(decode(&damaged), Err(StoreError::Corrupt { .. })));
        let mut tag = bytes;
        tag[body_at] = 7;
        assert!(matches!(decode(&tag), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn keys() {
        let doc = doc();
        let key = entity_key(&doc.key).unwrap();
        assert_eq!(parse_entity_key(&key).unwrap(), doc.key);
        assert!(key.starts_with(&entity_prefix(Kind::Task, Some("prod"))));
        assert!(key.starts_with(&entity_prefix(Kind::Task, None)));
        let index = index_key(&key, Index::Status, "RUNNING");
        assert!(index.starts_with(&index_prefix(Kind::Task, Index::Status, "RUNNING", Some("prod"))));
        assert_eq!(entity_key_of_index(&index).unwrap(), key);
        let nul = Key::task(ClusterName::new("prod").unwrap(), "a\0b");
        assert!(matches!(
            entity_key(&nul),
            Err(StoreError::InvalidValue { field: "id" })
        ));
        for garbage in [&b""[..], b"\x01", b"\x09prod\0x", b"\x01pr od\0x", b"\x01\xff\0x"] {
            assert!(parse_entity_key(garbage).is_err(), "{garbage:?}");
        }
        for garbage in [&b""[..], b"\x01", b"\x01\x01abc"] {
            assert!(entity_key_of_index(garbage).is_err(), "{garbage:?}");
        }
    }

    /// Existing files stay readable: task and instance keys keep their bytes; every kind round-trips
    /// through keys and changes.
    #[test]
    fn kinds_keep_their_bytes() {
        let prod = || ClusterName::new("prod").unwrap();
        assert_eq!(entity_key(&Key::task(prod(), "t")).unwrap(), b"\x01prod\0t");
        assert_eq!(entity_key(&Key::instance(prod(), "i")).unwrap(), b"\x02prod\0i");
        assert_eq!(
            index_key(b"\x01prod\0t", Index::StartedBy, "svc"),
            b"\x01\x02svc\0prod\0t"
        );
        let bytes: Vec<u8> = Kind::ALL.iter().map(|&kind| kind_byte(kind)).collect();
        assert_eq!(bytes, [1, 2, 3, 4, 5, 6, 7, 8]);
        for kind in Kind::ALL {
            let mut doc = doc();
            doc.key.kind = kind;
            doc.key.id = "env/0000000007".into();
            let key = entity_key(&doc.key).unwrap();
            assert_eq!(parse_entity_key(&key).unwrap(), doc.key);
            assert!(key.starts_with(&entity_prefix(kind, Some("prod"))));
            let entity = EntityView::of(3, &doc, Body::Plain(&doc.body));
            let change = encode_change(&key, true, &entity).unwrap();
            assert_eq!(decode_change(3, &change).unwrap().doc, doc);
            assert_eq!(decode_deletion(&change).unwrap(), Some(key));
        }
    }

    #[test]
    fn small_values_round_trip() {
        let tombstone = Tombstone {
            version: 3,
            seq: 99,
            at_ms: 1_700_000_000_000,
        };
        let bytes = encode_tombstone(&tombstone);
        assert_eq!(decode_tombstone(&bytes).unwrap(), tombstone);
        check_truncations(&bytes, decode_tombstone);
        assert!(decode_tombstone(&bytes[..16]).is_err());
        assert!(decode_tombstone(&bytes[..24]).is_err());
        assert!(decode_tombstone(&[&bytes[..], b"x"].concat()).is_err());
        // A tombstone of a file written before deletions carried a time: version and seq only.
        assert_eq!(
            decode_tombstone(&bytes[..17]).unwrap(),
            Tombstone {
                at_ms: 0,
                ..tombstone
            }
        );
        let key = tombstone.time_key();
        assert_eq!(decode_tombstone_time_key(&key).unwrap(), (1_700_000_000_000, 99));
        assert!(tombstone_time_key(5, u64::MAX) < tombstone_time_key(6, 0));
        assert!(decode_tombstone_time_key(&key[..15]).is_err());

        for message_id in [None, Some("m-1".to_owned())] {
            let letter = DeadLetter {
                id: 5,
                message_id,
                received_at: "2024-01-01T00:00:00Z".into(),
                reason: "bad json".into(),
                body: "{".into(),
            };
            let bytes = encode_dead_letter(&letter);
            assert_eq!(decode_dead_letter(&u64_key(5), &bytes).unwrap(), letter);
            check_truncations(&bytes, |b| decode_dead_letter(&u64_key(5), b));
            assert!(decode_dead_letter(b"short", &bytes).is_err());
        }
        assert!(decode_u64(b"1234567", "meta").is_err());
    }
}
