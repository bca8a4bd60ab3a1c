//! The etcd backend: the store's tables as keys under one prefix of an etcd cluster, shared by every
//! replica of blox.
//!
//! Each replica keeps the whole keyspace of its prefix in memory ([`Tables`], loaded page by page at
//! one revision, then kept current by a watch from the next revision), so that reads never leave the
//! process and streams on any replica follow every replica's writes. A write runs the store's logic
//! ([`crate::kv`]) against that copy with its changes set aside, then commits them in one etcd
//! transaction on the condition that no other write committed since the copy was current: every
//! write transaction also rewrites one *serial* key, and the condition compares its mod revision. A
//! lost race waits for the watch to bring the winner's writes, then runs the logic again. A leader's
//! write carries one more condition: that the leadership key is still the one its term created
//! ([`Fence`]).
//!
//! Layout under the prefix `P`: `P d/<table><key>` the tables (the table as one byte), `P serial`,
//! `P leader` (the leader's id, with the lease). The change log and its retention are the tables'
//! (the same as redb's); etcd's own history is compacted by the leader ([`compact_history`]).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::engine::{Direction, Engine, ReadTx, Table, Visit, WriteTx, is_empty_range, try_read_lock};
use crate::kv::KvStore;
use crate::leader::{Fence, LeaderGuard, LeaderInfo, Leadership, Term};
use crate::mem::{Map, Tables};
use crate::{PreparedWrite, Store, StoreError, StoreOptions, Write};

const BACKEND: &str = "etcd";

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1_572_864;

/// Keys read per page while loading the keyspace (bounded so that a page of large values stays far
/// below the client's 4 MiB message limit).
const LOAD_PAGE: i64 = 256;
/// How long one write waits for the watch to bring a conflicting write before it gives up.
const CONFLICT_PATIENCE: Duration = Duration::from_secs(30);
/// A request to etcd that takes longer has failed (the cluster has no leader, or is unreachable).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Writes of one ECS batch committed together at most; larger batches are split before trying.
const CHUNK_WRITES: usize = 32;
/// The largest answer read from etcd: a watch resuming from behind gets up to a thousand revisions
/// in one message, far beyond tonic's default limit of 4 MiB.
const MAX_ANSWER_BYTES: usize = 256 << 20;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `http://HOST:PORT` or `https://HOST:PORT`, one per member.
    pub endpoints: Vec<String>,
    /// Every key blox writes starts with it; several blox deployments can share one etcd.
    pub prefix: String,
    /// User and password, when etcd's auth is on.
    pub user: Option<(String, String)>,
    pub tls: Option<EtcdTls>,
    /// The cluster's `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// The cluster's `--max-request-bytes`.
    pub max_request_bytes: usize,
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: "/blox/".to_owned(),
            user: None,
            tls: None,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

/// TLS towards etcd: the CA that signed its certificates, and the client's certificate and key
/// (PEM) when etcd asks for one.
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    pub ca_pem: Option<Vec<u8>>,
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

fn failed(operation: &'static str) -> impl Fn(etcd_client::Error) -> StoreError {
    move |error| StoreError::Backend {
        backend: BACKEND,
        operation,
        message: error.to_string(),
    }
}

fn timed_out(operation: &'static str) -> StoreError {
    StoreError::Backend {
        backend: BACKEND,
        operation,
        message: format!("no answer from etcd within {}s", REQUEST_TIMEOUT.as_secs()),
    }
}

/// Runs one request to etcd with [`REQUEST_TIMEOUT`].
async fn request<T>(
    operation: &'static str,
    future: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(REQUEST_TIMEOUT, future)
        .await
        .map_err(|_| timed_out(operation))?
        .map_err(failed(operation))
}

/// The keys of one prefix.
#[derive(Debug)]
struct Keys {
    prefix: Vec<u8>,
    data: Vec<u8>,
    serial: Vec<u8>,
    leader: Vec<u8>,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        let prefix = prefix.as_bytes().to_vec();
        let with = |suffix: &[u8]| [prefix.as_slice(), suffix].concat();
        Keys {
            data: with(b"d/"),
            serial: with(b"serial"),
            leader: with(b"leader"),
            prefix,
        }
    }

    fn data_key(&self, table: Table, key: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.data.len() + 1 + key.len());
        bytes.extend_from_slice(&self.data);
        bytes.push(table.slot() as u8);
        bytes.extend_from_slice(key);
        bytes
    }

    /// The table entry an etcd key stands for, if it is one.
    fn table_entry<'k>(&self, key: &'k [u8]) -> Option<(Table, &'k [u8])> {
        let rest = key.strip_prefix(self.data.as_slice())?;
        let (&slot, key) = rest.split_first()?;
        Table::ALL.get(usize::from(slot)).map(|table| (*table, key))
    }
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The replica's copy of the keyspace.
#[derive(Default)]
struct Cache {
    tables: Tables,
    /// Mod revision of the serial key: the revision of the last write transaction the copy holds.
    serial_rev: i64,
}

/// One write of a transaction: table, key, and the value (`None`: deleted).
type Entry = (Table, Vec<u8>, Option<Vec<u8>>);

impl Cache {
    fn absorb(&mut self, keys: &Keys, key: &[u8], value: Option<&[u8]>, revision: i64) {
        if key == keys.serial.as_slice() {
            self.serial_rev = self.serial_rev.max(revision);
        } else if let Some((table, key)) = keys.table_entry(key) {
            self.tables.set(table, key.to_vec(), value.map(<[u8]>::to_vec));
        }
    }
}

struct Shared {
    client: Client,
    keys: Keys,
    cache: RwLock<Cache>,
    /// The highest etcd revision whose effects the copy holds.
    applied: watch::Sender<i64>,
}

impl Shared {
    fn advance(&self, revision: i64) {
        self.applied.send_if_modified(|applied| {
            let newer = revision > *applied;
            if newer {
                *applied = revision;
            }
            newer
        });
    }

    /// Reads the whole prefix at one revision.
    async fn load(&self) -> Result<(Cache, i64), StoreError> {
        let mut client = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_ANSWER_BYTES);
        let mut cache = Cache::default();
        let end = prefix_end(&self.keys.prefix);
        let mut start = self.keys.prefix.clone();
        let mut revision = None;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(LOAD_PAGE);
            if let Some(revision) = revision {
                options = options.with_revision(revision);
            }
            let page = request("load", client.get(start.clone(), Some(options))).await?;
            let at = *revision.get_or_insert(page.header().map_or(0, |header| header.revision()));
            for kv in page.kvs() {
                cache.absorb(&self.keys, kv.key(), Some(kv.value()), kv.mod_revision());
            }
            match page.kvs().last() {
                Some(last) if page.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok((cache, at)),
            }
        }
    }

    /// Replaces the copy with a fresh load (at start, and when the watch fell behind compaction). A
    /// load older than what the copy holds (a commit of this replica's landed meanwhile) is taken
    /// again: the copy never goes back.
    async fn reload(&self) -> Result<i64, StoreError> {
        loop {
            let (cache, revision) = self.load().await?;
            {
                let mut current = self.cache.write().unwrap_or_else(PoisonError::into_inner);
                if cache.serial_rev < current.serial_rev {
                    continue;
                }
                *current = cache;
            }
            self.advance(revision);
            return Ok(revision);
        }
    }

    /// Keeps the copy current: watches the prefix from the revision after the one applied, and
    /// reloads when that revision was compacted away.
    async fn follow(self: Arc<Self>) {
        let mut client = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_ANSWER_BYTES);
        loop {
            let from = *self.applied.borrow() + 1;
            let options = WatchOptions::new()
                .with_range(prefix_end(&self.keys.prefix))
                .with_start_revision(from);
            let mut stream = match client.watch(self.keys.prefix.clone(), Some(options)).await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(%error, "etcd watch failed to start; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            loop {
                let response = match stream.message().await {
                    Ok(Some(response)) => response,
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%error, "etcd watch broke; resuming");
                        break;
                    }
                };
                if response.canceled() {
                    if response.compact_revision() > 0 {
                        tracing::warn!(
                            compact_revision = response.compact_revision(),
                            "etcd compacted past this replica's copy; reloading it"
                        );
                        while let Err(error) = self.reload().await {
                            tracing::warn!(%error, "reloading from etcd failed; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                    break;
                }
                let before = *self.applied.borrow();
                let mut top = before;
                // This replica's own commits are in the copy already. When they are all a response
                // holds (always, for a leader alone), the copy is not locked: this task runs on an
                // async worker, and a write transaction holds the copy for reading while it decides.
                let news = || {
                    response.events().iter().filter_map(|event| {
                        let kv = event.kv().filter(|kv| kv.mod_revision() > before)?;
                        Some((event.event_type(), kv))
                    })
                };
                if news().next().is_some() {
                    let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
                    for (event_type, kv) in news() {
                        let value = match event_type {
                            EventType::Put => Some(kv.value()),
                            EventType::Delete => None,
                        };
                        cache.absorb(&self.keys, kv.key(), value, kv.mod_revision());
                        top = top.max(kv.mod_revision());
                    }
                }
                self.advance(top);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) struct EtcdEngine {
    shared: Arc<Shared>,
    runtime: Handle,
    /// Writes of this replica run one at a time (they would conflict with each other anyway).
    writer: Mutex<()>,
    max_txn_ops: usize,
    max_request_bytes: usize,
    _follower: AbortOnDrop,
}

impl EtcdEngine {
    async fn connect(config: &EtcdConfig) -> Result<EtcdEngine, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Backend {
                backend: BACKEND,
                operation: "connect",
                message: "no etcd endpoint given".to_owned(),
            });
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        if let Some((user, password)) = &config.user {
            // etcd's simple tokens expire (5 minutes by default): sign in again when one has.
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &config.tls {
            let mut tls_options = TlsOptions::new();
            if let Some(ca) = &tls.ca_pem {
                tls_options = tls_options.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity_pem {
                tls_options = tls_options.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls_options);
        }
        let client = request("connect", Client::connect(&config.endpoints, Some(options))).await?;
        let (applied, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            client,
            keys: Keys::new(&config.prefix),
            cache: RwLock::default(),
            applied,
        });
        shared.reload().await?;
        let follower = AbortOnDrop(tokio::spawn(shared.clone().follow()));
        Ok(EtcdEngine {
            shared,
            runtime: Handle::current(),
            writer: Mutex::new(()),
            max_txn_ops: config.max_txn_ops.max(3),
            max_request_bytes: config.max_request_bytes,
            _follower: follower,
        })
    }

    /// The serial key's mod revision in etcd now.
    async fn serial_revision(&self) -> Result<i64, StoreError> {
        let mut client = self.shared.client.clone();
        let response = request("get", client.get(self.shared.keys.serial.clone(), None)).await?;
        Ok(response.kvs().first().map_or(0, |kv| kv.mod_revision()))
    }

    /// Waits until the copy holds the write transaction of revision `revision`.
    async fn catch_up(&self, revision: i64, until: Instant) -> Result<(), StoreError> {
        let mut applied = self.shared.applied.subscribe();
        let wait = applied.wait_for(|applied| *applied >= revision);
        match tokio::time::timeout_at(until, wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StoreError::Backend {
                backend: BACKEND,
                operation: "txn",
                message: format!(
                    "this replica's copy did not reach etcd revision {revision} within {}s",
                    CONFLICT_PATIENCE.as_secs()
                ),
            }),
        }
    }

    /// Commits `writes`; `Ok(false)` when another write came first (the copy was not current).
    async fn commit(
        &self,
        writes: &[Entry],
        serial_rev: i64,
        fence: Option<&Fence>,
    ) -> Result<Result<i64, i64>, StoreError> {
        let keys = &self.shared.keys;
        let mut bytes = keys.serial.len();
        let mut ops = Vec::with_capacity(writes.len() + 1);
        for (table, key, value) in writes {
            let key = keys.data_key(*table, key);
            bytes += key.len() + value.as_ref().map_or(0, Vec::len) + 16;
            ops.push(match value {
                Some(value) => TxnOp::put(key, value.clone(), None),
                None => TxnOp::delete(key, None),
            });
        }
        ops.push(TxnOp::put(keys.serial.clone(), Vec::new(), None));
        // Room for the compares and the request's framing.
        if ops.len() > self.max_txn_ops || bytes + 4096 > self.max_request_bytes {
            return Err(StoreError::TooLarge {
                operations: ops.len(),
                bytes,
                max_operations: self.max_txn_ops,
                max_bytes: self.max_request_bytes,
            });
        }
        let mut compares = vec![Compare::mod_revision(
            keys.serial.clone(),
            CompareOp::Equal,
            serial_rev,
        )];
        if let Some(fence) = fence {
            if !fence.guard.holds() {
                return Err(StoreError::Fenced);
            }
            compares.push(Compare::create_revision(
                keys.leader.clone(),
                CompareOp::Equal,
                fence.token,
            ));
        }
        let txn = Txn::new().when(compares).and_then(ops).or_else(vec![
            TxnOp::get(keys.serial.clone(), None),
            TxnOp::get(keys.leader.clone(), None),
        ]);
        let mut client = self.shared.client.clone();
        let response = request("txn", client.txn(txn)).await?;
        if response.succeeded() {
            return Ok(Ok(response.header().map_or(0, |header| header.revision())));
        }
        let mut found = response.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .map(|kv| (kv.mod_revision(), kv.create_revision())),
            _ => None,
        });
        let serial = found.next().flatten().map_or(0, |(modified, _)| modified);
        let leader = found.next().flatten().map_or(0, |(_, created)| created);
        if let Some(fence) = fence
            && leader != fence.token
        {
            fence.guard.lose();
            return Err(StoreError::Fenced);
        }
        Ok(Err(serial))
    }
}

impl Engine for EtcdEngine {
    const NAME: &'static str = BACKEND;
    const BLOCKING: bool = true;

    fn read<R>(&self, f: impl FnOnce(&dyn ReadTx) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let cache = self.shared.cache.read().unwrap_or_else(PoisonError::into_inner);
        f(&cache.tables)
    }

    /// The copy is held exclusively while a commit's install, the watch (other replicas' changes)
    /// or a reload updates it.
    fn try_read<R, F>(&self, f: F) -> Result<Result<R, StoreError>, F>
    where
        F: FnOnce(&dyn ReadTx) -> Result<R, StoreError>,
    {
        match try_read_lock(&self.shared.cache) {
            Some(cache) => Ok(f(&cache.tables)),
            None => Err(f),
        }
    }

    fn write<R>(
        &self,
        fence: Option<&Fence>,
        mut f: impl FnMut(&mut dyn WriteTx) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let until = Instant::now() + CONFLICT_PATIENCE;
        loop {
            let (outcome, writes, serial_rev) = {
                let cache = self.shared.cache.read().unwrap_or_else(PoisonError::into_inner);
                let mut tx = Overlay::new(&cache.tables);
                let outcome = f(&mut tx);
                (outcome, tx.into_writes(), cache.serial_rev)
            };
            let result = match outcome {
                Ok(result) => result,
                // A refusal decided on a copy that is behind etcd may be wrong: decide again on a
                // current one.
                Err(error) if error.is_about_the_writes() => {
                    let current = self.runtime.block_on(self.serial_revision())?;
                    if current > serial_rev {
                        self.runtime.block_on(self.catch_up(current, until))?;
                        continue;
                    }
                    return Err(error);
                }
                Err(error) => return Err(error),
            };
            if writes.is_empty() {
                return Ok(result);
            }
            match self.runtime.block_on(self.commit(&writes, serial_rev, fence))? {
                Ok(revision) => {
                    {
                        let mut cache = self.shared.cache.write().unwrap_or_else(PoisonError::into_inner);
                        // Every write transaction puts the serial key: a copy at or past this
                        // revision has this commit already, and maybe later ones over it.
                        if cache.serial_rev < revision {
                            for (table, key, value) in writes {
                                cache.tables.set(table, key, value);
                            }
                            cache.serial_rev = revision;
                        }
                    }
                    self.shared.advance(revision);
                    return Ok(result);
                }
                Err(newer) => self.runtime.block_on(self.catch_up(newer, until))?,
            }
        }
    }
}

/// A write transaction over the copy: reads see the copy with the transaction's own writes over it;
/// the writes are kept aside until the commit.
struct Overlay<'a> {
    base: &'a Tables,
    writes: [BTreeMap<Vec<u8>, Option<Vec<u8>>>; Table::ALL.len()],
}

impl<'a> Overlay<'a> {
    fn new(base: &'a Tables) -> Overlay<'a> {
        Overlay {
            base,
            writes: Default::default(),
        }
    }

    fn into_writes(self) -> Vec<Entry> {
        let mut writes = Vec::new();
        for (table, entries) in Table::ALL.into_iter().zip(self.writes) {
            writes.extend(entries.into_iter().map(|(key, value)| (table, key, value)));
        }
        writes
    }
}

impl ReadTx for Overlay<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes[table.slot()].get(key) {
            Some(value) => Ok(value.clone()),
            None => self.base.get(table, key),
        }
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
        let base: &Map = self.base.map(table);
        let base = base.range::<[u8], _>((start, end));
        let own = self.writes[table.slot()].range::<[u8], _>((start, end));
        let reverse = direction == Direction::Reverse;
        type Entries<'e, V> = Box<dyn Iterator<Item = (&'e Vec<u8>, V)> + 'e>;
        let (mut base, mut own): (Entries<'_, &Vec<u8>>, Entries<'_, &Option<Vec<u8>>>) = if reverse {
            (Box::new(base.rev()), Box::new(own.rev()))
        } else {
            (Box::new(base), Box::new(own))
        };
        let (mut next_base, mut next_own) = (base.next(), own.next());
        loop {
            let order = match (&next_base, &next_own) {
                (None, None) => return Ok(()),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((b, _)), Some((o, _))) => {
                    let order = b.cmp(o);
                    if reverse { order.reverse() } else { order }
                }
            };
            let entry = match order {
                std::cmp::Ordering::Less => {
                    let (key, value) = next_base.take().expect("compared");
                    next_base = base.next();
                    Some((key, value))
                }
                std::cmp::Ordering::Greater | std::cmp::Ordering::Equal => {
                    if order == std::cmp::Ordering::Equal {
                        next_base = base.next();
                    }
                    let (key, value) = next_own.take().expect("compared");
                    next_own = own.next();
                    value.as_ref().map(|value| (key, value))
                }
            };
            if let Some((key, value)) = entry
                && !visit(key, value)?
            {
                return Ok(());
            }
        }
    }
}

impl WriteTx for Overlay<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.writes[table.slot()].insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        if self.base.map(table).contains_key(key) {
            self.writes[table.slot()].insert(key.to_vec(), None);
        } else {
            // Written by this transaction only: nothing to delete in etcd.
            self.writes[table.slot()].remove(key);
        }
        Ok(())
    }
}

/// The store on etcd. Cheap to clone; clones share the connection and the copy.
#[derive(Clone)]
pub struct EtcdStore {
    kv: KvStore<EtcdEngine>,
    fence: Option<Fence>,
    _heads: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field(
                "prefix",
                &String::from_utf8_lossy(&self.kv.engine().shared.keys.prefix),
            )
            .field("fenced", &self.fence.is_some())
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects and loads the prefix's keyspace; from then on the copy follows etcd.
    pub async fn connect(config: &EtcdConfig, options: StoreOptions) -> Result<EtcdStore, StoreError> {
        let engine = EtcdEngine::connect(config).await?;
        let mut applied = engine.shared.applied.subscribe();
        let kv = KvStore::open(engine, options)?;
        // Other replicas' commits move the head that streams wait on.
        let heads = {
            let kv = kv.clone();
            tokio::spawn(async move {
                while applied.changed().await.is_ok() {
                    if let Err(error) = kv.refresh_head().await {
                        tracing::warn!(%error, "reading the change log's head failed");
                    }
                }
            })
        };
        Ok(EtcdStore {
            kv,
            fence: None,
            _heads: Arc::new(AbortOnDrop(heads)),
        })
    }

    /// The same store, every write of which is conditional on `fence`'s term.
    pub fn fenced(&self, fence: Fence) -> EtcdStore {
        EtcdStore {
            fence: Some(fence),
            ..self.clone()
        }
    }

    /// Leadership among the replicas that share this store's prefix; `clock` dates a term's start.
    pub fn leadership(&self, replica_id: String, lease_ttl: Duration, clock: WallClock) -> EtcdLeadership {
        EtcdLeadership::new(self.clone(), replica_id, lease_ttl, clock)
    }

    /// Applies a batch in as few transactions as etcd's limits allow. A batch of ECS writes and
    /// parked messages is split when it does not fit one: each part keeps the version rule on its
    /// own, so parts commit in order and the batch is idempotent when re-applied. So is a batch of
    /// removals only (each is checked on its own; a part that conflicts stops the rest, and the
    /// parts before it stay applied). A batch that puts a scheduler document is one transaction or
    /// refused ([`StoreError::TooLarge`]).
    async fn apply_within_limits(
        &self,
        writes: Vec<PreparedWrite>,
    ) -> Result<Vec<crate::Outcome>, StoreError> {
        let ecs = writes
            .iter()
            .all(|prepared| !matches!(prepared.write, Write::Put { .. } | Write::Remove { .. }));
        let removals = writes
            .iter()
            .all(|prepared| matches!(prepared.write, Write::Remove { .. }));
        let splittable = ecs || removals;
        if !splittable {
            return self.kv.apply_prepared_fenced(writes, self.fence.clone()).await;
        }
        let mut outcomes = Vec::with_capacity(writes.len());
        let mut pending: Vec<Vec<PreparedWrite>> = writes
            .chunks(CHUNK_WRITES)
            .rev()
            .map(<[PreparedWrite]>::to_vec)
            .collect();
        while let Some(chunk) = pending.pop() {
            let halves = (chunk.len() > 1).then(|| chunk.clone());
            match self.kv.apply_prepared_fenced(chunk, self.fence.clone()).await {
                Ok(done) => outcomes.extend(done),
                Err(StoreError::TooLarge { .. }) if halves.is_some() => {
                    let mut chunk = halves.expect("checked");
                    let second = chunk.split_off(chunk.len() / 2);
                    pending.push(second);
                    pending.push(chunk);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(outcomes)
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<crate::Outcome>, StoreError> {
        // Compressed on the blocking pool: a reconciler's batch holds thousands of bodies.
        let prepared = self.kv.prepare(writes).await?;
        self.apply_within_limits(prepared).await
    }

    /// Takes the ingest's compression as it is (the trait's default would compress each body again).
    async fn apply_prepared(&self, writes: Vec<PreparedWrite>) -> Result<Vec<crate::Outcome>, StoreError> {
        self.apply_within_limits(writes).await
    }

    async fn get(&self, key: &crate::Key) -> Result<Option<crate::Record>, StoreError> {
        self.kv.get(key).await
    }

    async fn list(
        &self,
        kind: crate::Kind,
        filter: &crate::Filter,
        page: crate::PageRequest,
    ) -> Result<crate::Page<crate::Record>, StoreError> {
        self.kv.list(kind, filter, page).await
    }

    async fn list_spliced(
        &self,
        kind: crate::Kind,
        filter: &crate::Filter,
        page: crate::PageRequest,
        splice: crate::Splice,
        out: Vec<u8>,
    ) -> Result<crate::Spliced, StoreError> {
        self.kv.list_spliced(kind, filter, page, splice, out).await
    }

    async fn ids(
        &self,
        kind: crate::Kind,
        cluster: &blox_model::ClusterName,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.kv.ids(kind, cluster).await
    }

    async fn clusters(&self, kind: crate::Kind) -> Result<Vec<blox_model::ClusterName>, StoreError> {
        self.kv.clusters(kind).await
    }

    async fn changes(&self, after: u64, limit: usize) -> Result<Vec<crate::Change>, StoreError> {
        self.kv.changes(after, limit).await
    }

    async fn log_bounds(&self) -> Result<crate::LogBounds, StoreError> {
        self.kv.log_bounds().await
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.kv.subscribe()
    }

    async fn dead_letters(
        &self,
        page: crate::PageRequest,
    ) -> Result<crate::Page<crate::DeadLetter>, StoreError> {
        self.kv.dead_letters(page).await
    }

    async fn remove_dead_letter(&self, id: u64) -> Result<bool, StoreError> {
        self.kv.remove_dead_letter(id, self.fence.clone()).await
    }

    async fn count(&self, kind: crate::Kind) -> Result<u64, StoreError> {
        self.kv.count(kind).await
    }
}

/// Leader election on etcd: one key under the prefix, created only when absent and attached to a
/// lease that the leader renews at a third of its TTL. The key's creation revision is the term's
/// fencing token.
pub struct EtcdLeadership {
    store: EtcdStore,
    id: String,
    ttl: Duration,
    clock: WallClock,
    leader: watch::Sender<Option<LeaderInfo>>,
    _observer: AbortOnDrop,
}

/// The leader key's value: `id`, `since_ms`, one per line.
fn encode_leader(info: &LeaderInfo) -> Vec<u8> {
    format!("{}\n{}", info.id, info.since_ms).into_bytes()
}

fn decode_leader(value: &[u8]) -> Option<LeaderInfo> {
    let text = std::str::from_utf8(value).ok()?;
    let (id, since) = text.rsplit_once('\n')?;
    Some(LeaderInfo {
        id: id.to_owned(),
        since_ms: since.parse().ok()?,
    })
}

/// The wall clock, in ms since the Unix epoch, given by the caller (the store reads no wall clock).
pub type WallClock = fn() -> u64;

/// How often the leader compacts etcd's history, and how much it keeps: the revisions of the last
/// interval (a watch that falls further behind reloads the keyspace).
const COMPACTION_INTERVAL: Duration = Duration::from_secs(300);

impl EtcdLeadership {
    fn new(store: EtcdStore, id: String, ttl: Duration, clock: WallClock) -> EtcdLeadership {
        let (leader, _) = watch::channel(None);
        let observer = AbortOnDrop(tokio::spawn(observe_leader(
            store.kv.engine().shared.clone(),
            leader.clone(),
        )));
        EtcdLeadership {
            store,
            id,
            ttl: ttl.max(Duration::from_secs(1)),
            clock,
            leader,
            _observer: observer,
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.store.kv.engine().shared
    }

    /// One attempt: the term when the key was absent, else the revision at which it was present.
    async fn try_acquire(&self) -> Result<Result<Term, i64>, StoreError> {
        let shared = self.shared();
        let mut client = shared.client.clone();
        let ttl_secs = self.ttl.as_secs().max(1) as i64;
        let asked = Instant::now();
        let lease = request("lease_grant", client.lease_grant(ttl_secs, None)).await?;
        let info = LeaderInfo {
            id: self.id.clone(),
            since_ms: (self.clock)(),
        };
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                shared.keys.leader.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(
                shared.keys.leader.clone(),
                encode_leader(&info),
                Some(PutOptions::new().with_lease(lease.id())),
            )])
            .or_else(vec![TxnOp::get(shared.keys.leader.clone(), None)]);
        let response = match request("txn", client.txn(txn)).await {
            Ok(response) => response,
            Err(error) => {
                let _ = client.lease_revoke(lease.id()).await;
                return Err(error);
            }
        };
        let revision = response.header().map_or(0, |header| header.revision());
        if !response.succeeded() {
            let _ = request("lease_revoke", client.lease_revoke(lease.id())).await;
            return Ok(Err(revision));
        }
        let guard = LeaderGuard::until(asked + Duration::from_secs(lease.ttl().max(1) as u64));
        tokio::spawn(keep_leading(
            client,
            lease.id(),
            self.ttl,
            guard.clone(),
            shared.clone(),
        ));
        // The new leader plans from its copy: it must hold everything the former leader wrote
        // (all of it before this revision) before the term is handed out.
        let mut applied = shared.applied.subscribe();
        if tokio::time::timeout(REQUEST_TIMEOUT, applied.wait_for(|applied| *applied >= revision))
            .await
            .is_err()
        {
            guard.lose();
            return Err(timed_out("catch_up"));
        }
        self.leader.send_replace(Some(info.clone()));
        let fence = Fence {
            token: revision,
            guard: guard.clone(),
        };
        Ok(Ok(Term {
            store: Arc::new(self.store.fenced(fence)),
            guard,
            info,
        }))
    }
}

#[async_trait]
impl Leadership for EtcdLeadership {
    fn replica_id(&self) -> &str {
        &self.id
    }

    fn lease_ttl(&self) -> Duration {
        self.ttl
    }

    async fn acquire(&self) -> Result<Term, StoreError> {
        loop {
            let present_at = match self.try_acquire().await? {
                Ok(term) => return Ok(term),
                Err(revision) => revision,
            };
            // Wait for the key to go (its lease expired or was revoked), or a TTL at most.
            let mut client = self.shared().client.clone();
            let options = WatchOptions::new().with_start_revision(present_at + 1);
            let Ok(mut stream) = client
                .watch(self.shared().keys.leader.clone(), Some(options))
                .await
            else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let gone = async {
                while let Ok(Some(response)) = stream.message().await {
                    if response.canceled()
                        || response
                            .events()
                            .iter()
                            .any(|event| event.event_type() == EventType::Delete)
                    {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(self.ttl, gone).await;
        }
    }

    async fn resign(&self, term: &Term) {
        term.guard.lose();
        let shared = self.shared();
        let mut client = shared.client.clone();
        // Deleting the key only if it is still this term's lets the next leader start at once.
        let txn = Txn::new()
            .when(vec![Compare::value(
                shared.keys.leader.clone(),
                CompareOp::Equal,
                encode_leader(&term.info),
            )])
            .and_then(vec![TxnOp::delete(shared.keys.leader.clone(), None)]);
        if let Err(error) = request("txn", client.txn(txn)).await {
            tracing::warn!(%error, "resigning leadership failed; the lease will expire");
        }
    }

    fn leader(&self) -> watch::Receiver<Option<LeaderInfo>> {
        self.leader.subscribe()
    }
}

/// Renews the term's lease at a third of its TTL; ends the term when a renewal fails or its
/// deadline passes; while the term holds, compacts etcd's history now and then.
async fn keep_leading(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    guard: LeaderGuard,
    shared: Arc<Shared>,
) {
    let every = ttl / 3;
    let renew = async {
        let Ok((mut keeper, mut answers)) = client.lease_keep_alive(lease).await else {
            return;
        };
        let mut compacted_to = 0;
        let mut next_compaction = Instant::now() + COMPACTION_INTERVAL;
        let mut compact_below = *shared.applied.borrow();
        loop {
            tokio::time::sleep(every).await;
            let asked = Instant::now();
            if keeper.keep_alive().await.is_err() {
                return;
            }
            match tokio::time::timeout(every, answers.message()).await {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                    guard.extend(asked + Duration::from_secs(answer.ttl() as u64));
                }
                _ => return,
            }
            if Instant::now() >= next_compaction && guard.holds() {
                if compact_below > compacted_to {
                    // Apart from the renewals: a slow compaction must not let the lease lapse.
                    let shared = shared.clone();
                    tokio::spawn(async move { compact_history(&shared, compact_below).await });
                    compacted_to = compact_below;
                }
                compact_below = *shared.applied.borrow();
                next_compaction = Instant::now() + COMPACTION_INTERVAL;
            }
        }
    };
    tokio::select! {
        () = renew => {
            tracing::warn!(lease, "the leadership lease could not be renewed: this replica stops leading");
            guard.lose();
        }
        () = guard.lost() => {}
    }
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, client.lease_revoke(lease)).await;
}

/// Discards etcd's history before `revision` (the change log blox serves is in its own keys, not in
/// etcd's history: this only bounds etcd's size).
async fn compact_history(shared: &Shared, revision: i64) {
    let mut client = shared.client.clone();
    match request("compact", client.compact(revision, None)).await {
        Ok(_) => tracing::info!(revision, "compacted etcd's history"),
        Err(error) => tracing::warn!(%error, revision, "compacting etcd's history failed"),
    }
}

/// Follows the leader key for every replica's `GET /v1/leader`.
async fn observe_leader(shared: Arc<Shared>, leader: watch::Sender<Option<LeaderInfo>>) {
    let mut client = shared.client.clone();
    loop {
        let current = match client.get(shared.keys.leader.clone(), None).await {
            Ok(current) => current,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        leader.send_replace(current.kvs().first().and_then(|kv| decode_leader(kv.value())));
        let from = current.header().map_or(0, |header| header.revision()) + 1;
        let options = WatchOptions::new().with_start_revision(from);
        if let Ok(mut stream) = client.watch(shared.keys.leader.clone(), Some(options)).await {
            while let Ok(Some(response)) = stream.message().await {
                if response.canceled() {
                    break;
                }
                for event in response.events() {
                    leader.send_replace(match event.event_type() {
                        EventType::Put => event.kv().and_then(|kv| decode_leader(kv.value())),
                        EventType::Delete => None,
                    });
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_prefix_ends() {
        let keys = Keys::new("/blox/");
        let key = keys.data_key(Table::Log, b"\x00\x01");
        assert_eq!(keys.table_entry(&key), Some((Table::Log, &b"\x00\x01"[..])));
        assert_eq!(keys.table_entry(&keys.serial), None);
        assert_eq!(prefix_end(b"/blox/"), b"/blox0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        let info = LeaderInfo {
            id: "host:2000".to_owned(),
            since_ms: 42,
        };
        assert_eq!(decode_leader(&encode_leader(&info)), Some(info));
    }

    fn check_overlay(base: &[(&str, &str)], writes: &[(&str, Option<&str>)], expected: &[&str]) {
        let mut tables = Tables::default();
        for (key, value) in base {
            tables.set(
                Table::Index,
                key.as_bytes().to_vec(),
                Some(value.as_bytes().to_vec()),
            );
        }
        let mut overlay = Overlay::new(&tables);
        for (key, value) in writes {
            match value {
                Some(value) => overlay
                    .put(Table::Index, key.as_bytes(), value.as_bytes())
                    .unwrap(),
                None => overlay.delete(Table::Index, key.as_bytes()).unwrap(),
            }
        }
        for direction in [Direction::Forward, Direction::Reverse] {
            let mut seen = Vec::new();
            overlay
                .range(
                    Table::Index,
                    Bound::Unbounded,
                    Bound::Unbounded,
                    direction,
                    &mut |key, value| {
                        seen.push(format!(
                            "{}={}",
                            String::from_utf8_lossy(key),
                            String::from_utf8_lossy(value)
                        ));
                        Ok(true)
                    },
                )
                .unwrap();
            if direction == Direction::Reverse {
                seen.reverse();
            }
            assert_eq!(seen, expected, "{direction:?}");
        }
    }

    proptest::proptest! {
        /// Any copy, any writes set aside, any range in either direction: the overlay reads what
        /// the copy with the writes applied would.
        #[test]
        fn the_overlay_reads_like_the_copy_with_its_writes_applied(
            base in proptest::collection::btree_map(0u8..16, 0u8..4, 0..12),
            writes in proptest::collection::vec((0u8..16, proptest::option::of(0u8..4)), 0..16),
            start in proptest::option::of((0u8..17, proptest::bool::ANY)),
            end in proptest::option::of((0u8..17, proptest::bool::ANY)),
            reverse in proptest::bool::ANY,
        ) {
            let mut tables = Tables::default();
            for (key, value) in &base {
                tables.set(Table::Log, vec![*key], Some(vec![*value]));
            }
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> =
                base.iter().map(|(k, v)| (vec![*k], vec![*v])).collect();
            let mut overlay = Overlay::new(&tables);
            for (key, value) in &writes {
                match value {
                    Some(value) => {
                        overlay.put(Table::Log, &[*key], &[*value]).unwrap();
                        model.insert(vec![*key], vec![*value]);
                    }
                    None => {
                        overlay.delete(Table::Log, &[*key]).unwrap();
                        model.remove(&vec![*key]);
                    }
                }
            }
            for key in 0u8..16 {
                proptest::prop_assert_eq!(overlay.get(Table::Log, &[key]).unwrap(), model.get(&vec![key]).cloned());
            }
            let (start_key, end_key) = (start.map(|(k, _)| vec![k]), end.map(|(k, _)| vec![k]));
            fn bound(key: &Option<Vec<u8>>, bounds: Option<(u8, bool)>) -> Bound<&[u8]> {
                match (key, bounds) {
                    (Some(key), Some((_, true))) => Bound::Included(key.as_slice()),
                    (Some(key), Some((_, false))) => Bound::Excluded(key.as_slice()),
                    _ => Bound::Unbounded,
                }
            }
            let (lower, upper) = (bound(&start_key, start), bound(&end_key, end));
            let direction = if reverse { Direction::Reverse } else { Direction::Forward };
            let mut seen = Vec::new();
            overlay
                .range(Table::Log, lower, upper, direction, &mut |k, v| {
                    seen.push((k.to_vec(), v.to_vec()));
                    Ok(true)
                })
                .unwrap();
            let mut expected: Vec<(Vec<u8>, Vec<u8>)> = if is_empty_range(lower, upper) {
                Vec::new()
            } else {
                model
                    .range::<[u8], _>((lower, upper))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            };
            if reverse {
                expected.reverse();
            }
            proptest::prop_assert_eq!(seen, expected);
            // What the commit sends is exactly the difference.
            let mut applied = tables.map(Table::Log).clone();
            for (_, key, value) in overlay.into_writes() {
                match value {
                    Some(value) => applied.insert(key, value),
                    None => applied.remove(&key),
                };
            }
            proptest::prop_assert_eq!(applied, model);
        }
    }

    #[test]
    fn the_overlay_reads_its_own_writes_over_the_copy() {
        check_overlay(&[("a", "1"), ("c", "3")], &[], &["a=1", "c=3"]);
        check_overlay(
            &[("a", "1"), ("c", "3")],
            &[("b", Some("2"))],
            &["a=1", "b=2", "c=3"],
        );
        check_overlay(&[("a", "1"), ("c", "3")], &[("a", None)], &["c=3"]);
        check_overlay(
            &[("a", "1"), ("c", "3")],
            &[("c", Some("x")), ("d", Some("4"))],
            &["a=1", "c=x", "d=4"],
        );
        check_overlay(&[], &[("b", Some("2")), ("b", None)], &[]);
        check_overlay(&[("a", "1")], &[("a", None), ("a", Some("y"))], &["a=y"]);
    }
}
