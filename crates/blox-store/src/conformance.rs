//! The behaviour every [`Store`] backend must have, as one public async function per case.
//!
//! Each case takes an async factory that makes a fresh, empty store from [`StoreOptions`] (connecting
//! to it if need be), together with a guard kept alive as long as the store (a temporary directory, a
//! key prefix to clean up, or `()`). A case may call it several times; every call must give a store of
//! its own, empty. The [`conformance_tests!`](crate::conformance_tests) macro expands to one
//! `#[tokio::test]` per case, so that a failure names its case:
//!
//! ```ignore
//! blox_store::conformance_tests!(async |options| (blox_store::MemStore::new(options), ()));
//! ```
//!
//! **Positions: compare, never compute.** The suite asserts the contract, not one backend's
//! numbering. Every sequence number (and dead-letter id) it uses is one the store gave it: an
//! [`Outcome`], a [`Record::seq`], [`LogBounds`], a [`Change::seq`]. Positions are only compared:
//! sequence numbers strictly increase across commits and, within a batch, in batch order; a backend
//! may leave gaps between them (numbers derived from a distributed store's revisions), so no position
//! is derived from another by arithmetic (no `seq + 1` for "the next change", no `head - 2`). The only
//! literal positions are those the contract fixes: 0 is before every change (the head of an empty
//! log, a reader starting from the beginning); `u64::MAX` and `head + 1` are merely ahead of the head.
//! Retention is a count of changes: the log keeps exactly the N most recent ones.
//!
//! Each case works on one store handle: behaviour across replicas (two handles on one etcd prefix) is
//! not part of this suite.

use blox_model::ClusterName;

use crate::{
    Change, Cursor, DeadLetter, Document, Expect, Filter, Key, Kind, LogBounds, Outcome, Page, PageRequest,
    PreparedWrite, Record, Splice, Store, StoreError, StoreOptions, Write,
};

/// Expands to one `#[tokio::test]` per conformance case, each calling `$make` (an expression of a type
/// `AsyncFn(StoreOptions) -> (impl Store, Guard)`, typically an `async |options| ...` closure) for its
/// fresh stores. The calling crate needs tokio with the `macros` and `rt` features.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            upsert_inserts,
            upsert_replaces_older,
            version_rules,
            duplicates_within_a_batch,
            sequence_strictly_increasing,
            get_distinguishes_kinds_and_missing,
            list_filters,
            list_pagination,
            list_foreign_cursors,
            list_spliced_matches_list,
            prepared_writes_store_what_writes_store,
            index_follows_changes,
            delete_when_unchanged,
            delete_kept_when_changed_after,
            tombstone_blocks_stale_allows_newer,
            observed_entity_returns_after_deletion,
            observe_corrects_a_version_ahead_of_ecs,
            tombstone_trimmed_with_its_deletion,
            tombstone_kept_for_its_retention,
            tombstones_expire_oldest_first,
            changes_paginate,
            changes_compacted_and_future,
            retention_trims_exactly,
            subscribe_sees_head,
            subscribe_after_commit_is_at_least_its_seq,
            dead_letters_park_page_remove,
            dead_letter_retention,
            count_tracks_entities,
            clusters_distinct_in_order,
            ids_of_cluster,
            nul_rejected,
            batch_is_atomic,
            outcomes_in_batch_order,
            empty_batch,
            cas_writes,
            cas_conflict_applies_nothing,
            cas_last_write_conflict_applies_nothing,
            cas_writes_see_their_batch,
            remove_then_put_absent_in_later_batches,
            wrong_write_refused,
            revisions_are_immutable,
            scheduler_documents_listed,
            scheduler_changes_in_order,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                $crate::conformance::$case($make).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

pub fn cluster(name: &str) -> ClusterName {
    ClusterName::new(name).expect("test cluster names are valid")
}

/// A document with every field given.
pub fn doc(
    kind: Kind,
    cluster_name: &str,
    id: &str,
    version: u64,
    status: &str,
    started_by: Option<&str>,
    body: &str,
) -> Document {
    Document {
        key: Key {
            kind,
            cluster: cluster(cluster_name),
            id: id.to_owned(),
        },
        version,
        status: status.to_owned(),
        started_by: started_by.map(str::to_owned),
        body: body.as_bytes().to_vec(),
    }
}

/// A task whose body tells its version and status apart.
pub fn task(cluster_name: &str, id: &str, version: u64, status: &str) -> Document {
    doc(
        Kind::Task,
        cluster_name,
        id,
        version,
        status,
        None,
        &format!("{id}@{version}:{status}"),
    )
}

pub fn task_key(cluster_name: &str, id: &str) -> Key {
    Key::task(cluster(cluster_name), id)
}

pub fn letter(reason: &str) -> DeadLetter {
    DeadLetter {
        id: 0,
        message_id: Some(format!("msg-{reason}")),
        received_at: "2024-05-01T12:00:00Z".to_owned(),
        reason: reason.to_owned(),
        body: format!("{{\"reason\":\"{reason}\"}}"),
    }
}

fn up(doc: &Document) -> Write {
    Write::Upsert(doc.clone())
}

async fn apply(store: &impl Store, writes: Vec<Write>) -> Vec<Outcome> {
    store.apply(writes).await.expect("apply")
}

async fn one(store: &impl Store, write: Write) -> Outcome {
    let outcomes = apply(store, vec![write]).await;
    assert_eq!(outcomes.len(), 1);
    outcomes[0]
}

async fn get(store: &impl Store, key: &Key) -> Option<Record> {
    store.get(key).await.expect("get")
}

async fn head(store: &impl Store) -> u64 {
    store.log_bounds().await.expect("log_bounds").head
}

/// A delete of whatever the key's last change, with no time (its tombstone goes with its change).
fn delete_any(key: Key) -> Write {
    Write::Delete {
        key,
        unchanged_since: u64::MAX,
        at_ms: 0,
    }
}

fn written(outcome: Outcome) -> u64 {
    match outcome {
        Outcome::Written { seq } => seq,
        other => panic!("expected Written, got {other:?}"),
    }
}

fn deleted(outcome: Outcome) -> u64 {
    match outcome {
        Outcome::Deleted { seq } => seq,
        other => panic!("expected Deleted, got {other:?}"),
    }
}

/// The sequence numbers of the changes a batch logged (its `Written` and `Deleted` outcomes), in batch
/// order, checked to be strictly increasing and after `head_before` (the head before the batch).
fn logged(head_before: u64, outcomes: &[Outcome]) -> Vec<u64> {
    let seqs: Vec<u64> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            Outcome::Written { seq } | Outcome::Deleted { seq } => Some(*seq),
            _ => None,
        })
        .collect();
    let mut previous = head_before;
    for &seq in &seqs {
        assert!(
            seq > previous,
            "seqs strictly increase, after the head before the batch ({head_before}): {outcomes:?}"
        );
        previous = seq;
    }
    seqs
}

/// Applies a batch and checks the changes it logged follow the head before it, in batch order, and
/// that the head is then the last of them (unchanged when it logged none).
async fn commit(store: &impl Store, writes: Vec<Write>) -> Vec<Outcome> {
    let head_before = head(store).await;
    let outcomes = apply(store, writes).await;
    let seqs = logged(head_before, &outcomes);
    assert_eq!(
        head(store).await,
        seqs.last().copied().unwrap_or(head_before),
        "the head is the seq of the last change committed: {outcomes:?}"
    );
    outcomes
}

/// Applies one write that must insert or replace; returns its seq (after the previous head, and the
/// new head).
async fn write_one(store: &impl Store, write: Write) -> u64 {
    let outcomes = commit(store, vec![write]).await;
    written(outcomes[0])
}

/// Applies one write that must delete; returns the deletion's seq (after the previous head, and the
/// new head).
async fn delete_one(store: &impl Store, write: Write) -> u64 {
    let outcomes = commit(store, vec![write]).await;
    deleted(outcomes[0])
}

fn seqs(changes: &[Change]) -> Vec<u64> {
    changes.iter().map(|c| c.seq).collect()
}

/// Checks that the change log retains exactly the changes `retained` (their seqs as the store gave
/// them, oldest first) and that `trimmed`, the newest change no longer retained (`None`: none was
/// trimmed), is gone: the head is the last retained change, `trimmed <= oldest_resumable <` the oldest
/// retained (`oldest_resumable` is 0 while nothing was trimmed), reading from it returns exactly
/// `retained`, and reading from the beginning is `Compacted` once something was trimmed.
async fn assert_log(store: &impl Store, retained: &[u64], trimmed: Option<u64>, case: &str) -> LogBounds {
    let bounds = store.log_bounds().await.expect("log_bounds");
    assert_eq!(
        bounds.head,
        retained.last().copied().unwrap_or(0),
        "{case}: the head is the last change ({bounds:?})"
    );
    if let Some(&oldest) = retained.first() {
        assert!(
            bounds.oldest_resumable < oldest,
            "{case}: the oldest retained change ({oldest}) is after the oldest resumable position ({bounds:?})"
        );
    }
    match trimmed {
        None => assert_eq!(
            bounds.oldest_resumable, 0,
            "{case}: nothing trimmed, a reader resumes from the beginning ({bounds:?})"
        ),
        Some(trimmed) => {
            assert!(
                trimmed <= bounds.oldest_resumable,
                "{case}: the trimmed change {trimmed} is not after the oldest resumable position ({bounds:?})"
            );
            match store.changes(0, 1).await {
                Err(StoreError::Compacted {
                    requested: 0,
                    oldest_resumable,
                }) => assert_eq!(oldest_resumable, bounds.oldest_resumable, "{case}"),
                other => panic!("{case}: from the beginning, expected Compacted, got {other:?}"),
            }
        }
    }
    let read = store
        .changes(bounds.oldest_resumable, usize::MAX)
        .await
        .unwrap_or_else(|e| panic!("{case}: changes from {bounds:?}: {e}"));
    assert_eq!(seqs(&read), retained, "{case}: retained changes");
    bounds
}

async fn list_all(store: &impl Store, kind: Kind, filter: &Filter) -> Vec<Record> {
    let page = store
        .list(kind, filter, PageRequest::default())
        .await
        .expect("list");
    assert_eq!(
        page.next, None,
        "an unlimited listing has no next page ({filter:?})"
    );
    page.items
}

/// Follows `next` with pages of `limit`, checking every page but the last is full.
async fn list_paged(store: &impl Store, kind: Kind, filter: &Filter, limit: usize) -> Vec<Record> {
    let mut items = Vec::new();
    let mut after = None;
    for _ in 0..1000 {
        let page = store
            .list(
                kind,
                filter,
                PageRequest {
                    after,
                    limit: Some(limit),
                },
            )
            .await
            .expect("list");
        assert!(
            page.items.len() <= limit,
            "{filter:?} limit {limit}: page too long"
        );
        let full = page.items.len() == limit;
        items.extend(page.items);
        match page.next {
            Some(next) => {
                assert!(full, "{filter:?} limit {limit}: next given on a short page");
                after = Some(next);
            }
            None => return items,
        }
    }
    panic!("{filter:?} limit {limit}: pagination does not end");
}

fn filter(cluster_name: Option<&str>, status: Option<&str>, started_by: Option<&str>) -> Filter {
    Filter {
        cluster: cluster_name.map(cluster),
        status: status.map(str::to_owned),
        started_by: started_by.map(str::to_owned),
    }
}

fn matches(doc: &Document, kind: Kind, filter: &Filter) -> bool {
    doc.key.kind == kind
        && filter.cluster.as_ref().is_none_or(|c| *c == doc.key.cluster)
        && filter.status.as_ref().is_none_or(|s| *s == doc.status)
        && filter
            .started_by
            .as_ref()
            .is_none_or(|s| Some(s) == doc.started_by.as_ref())
}

/// Entities across clusters whose names prefix one another (`c1`, `c10`), statuses that prefix one
/// another (`RUN`, `RUNNING`), likewise `startedBy` values, and both kinds.
fn fixture() -> Vec<Document> {
    let t = |c: &str, id: &str, status: &str, sb: Option<&str>| {
        doc(
            Kind::Task,
            c,
            id,
            1,
            status,
            sb,
            &format!("{{\"{c}/{id}\":\"{status}\"}}"),
        )
    };
    vec![
        t("c1", "t1", "RUNNING", Some("svc-a")),
        t("c1", "t2", "RUNNING", Some("svc-b")),
        t("c1", "t3", "STOPPED", Some("svc-a")),
        t("c1", "t4", "PENDING", None),
        t("c1", "t8", "RUN", Some("svc")),
        t("c10", "t7", "RUNNING", Some("svc-a")),
        t("c2", "t1", "RUNNING", Some("svc-a")),
        t("c2", "t5", "STOPPED", None),
        t("c2", "t6", "RUNNING", Some("svc-a")),
        t("c2", "t9", "RUNNING", Some("svc-a")),
        t("c2", "t0", "RUNNING", Some("svc-a")),
        doc(Kind::Instance, "c1", "i1", 1, "ACTIVE", None, "i1"),
        doc(Kind::Instance, "c2", "i2", 1, "DRAINING", None, "i2"),
        doc(Kind::Instance, "c2", "i3", 1, "ACTIVE", None, "i3"),
    ]
}

/// Writes the fixture (in an order unlike key order) and returns the expected records.
async fn load_fixture(store: &impl Store) -> Vec<Record> {
    let docs = fixture();
    let outcomes = apply(store, docs.iter().rev().map(up).collect()).await;
    docs.into_iter()
        .rev()
        .zip(outcomes)
        .map(|(doc, outcome)| Record {
            seq: written(outcome),
            doc,
        })
        .collect()
}

fn expected(records: &[Record], kind: Kind, filter: &Filter) -> Vec<Record> {
    let mut out: Vec<Record> = records
        .iter()
        .filter(|r| matches(&r.doc, kind, filter))
        .cloned()
        .collect();
    out.sort_by(|a, b| (&a.doc.key.cluster, &a.doc.key.id).cmp(&(&b.doc.key.cluster, &b.doc.key.id)));
    out
}

/// Every filter combination over the fixture's values, plus values that match nothing.
fn filters() -> Vec<Filter> {
    let clusters = [None, Some("c1"), Some("c10"), Some("c2"), Some("c3")];
    let statuses = [
        None,
        Some("RUNNING"),
        Some("RUN"),
        Some("STOPPED"),
        Some("ACTIVE"),
        Some("NOPE"),
    ];
    let started_bys = [None, Some("svc-a"), Some("svc"), Some("svc-b"), Some("nobody")];
    let mut out = Vec::new();
    for c in clusters {
        for s in statuses {
            for b in started_bys {
                out.push(filter(c, s, b));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------------
// Upserts and the version rule
// ---------------------------------------------------------------------------------------------------

pub async fn upsert_inserts<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    assert_eq!(head(&store).await, 0, "an empty log's head is 0");
    let d = doc(Kind::Task, "c1", "t1", 3, "PENDING", Some("svc"), "{}");
    let seq = write_one(&store, up(&d)).await;
    assert_eq!(get(&store, &d.key).await, Some(Record { seq, doc: d.clone() }));
    assert_eq!(store.count(Kind::Task).await.unwrap(), 1);
    assert_eq!(
        store.changes(0, 10).await.unwrap(),
        [Change {
            seq,
            deleted: false,
            doc: d
        }]
    );
}

pub async fn upsert_replaces_older<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let v1 = task("c1", "t1", 1, "PENDING");
    let v2 = doc(Kind::Task, "c1", "t1", 2, "RUNNING", Some("svc"), "v2");
    let first = write_one(&store, up(&v1)).await;
    let second = write_one(&store, up(&v2)).await;
    assert!(second > first);
    assert_eq!(get(&store, &v1.key).await, Some(Record { seq: second, doc: v2 }));
    assert_eq!(store.count(Kind::Task).await.unwrap(), 1);
}

/// (stored (version, status, body), incoming (version, status, body), whether the incoming applies)
type VersionCase = (
    Option<(u64, &'static str, &'static str)>,
    (u64, &'static str, &'static str),
    bool,
);

pub async fn version_rules<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let cases: [VersionCase; 12] = [
        (None, (0, "RUNNING", "a"), true),
        (None, (5, "RUNNING", "a"), true),
        (Some((3, "RUNNING", "a")), (4, "RUNNING", "b"), true),
        (Some((3, "RUNNING", "a")), (3, "RUNNING", "b"), false),
        (Some((3, "RUNNING", "a")), (3, "RUNNING", "a"), false),
        (Some((3, "RUNNING", "a")), (2, "STOPPED", "b"), false),
        // Unversioned never replaces versioned.
        (Some((3, "RUNNING", "a")), (0, "STOPPED", "b"), false),
        (Some((0, "RUNNING", "a")), (1, "RUNNING", "a"), true),
        // Unversioned replaces unversioned when anything differs.
        (Some((0, "RUNNING", "a")), (0, "RUNNING", "b"), true),
        (Some((0, "RUNNING", "a")), (0, "STOPPED", "a"), true),
        (Some((0, "RUNNING", "a")), (0, "RUNNING", "a"), false),
        (Some((7, "RUNNING", "a")), (u64::MAX, "STOPPED", "b"), true),
    ];
    for (stored, (version, status, body), applies) in cases {
        let (store, _guard) = make(StoreOptions::default()).await;
        let mut expected = None;
        if let Some((v, s, b)) = stored {
            let d = doc(Kind::Task, "c", "t", v, s, None, b);
            let seq = write_one(&store, up(&d)).await;
            expected = Some(Record { seq, doc: d });
        }
        let head_before = head(&store).await;
        let incoming = doc(Kind::Task, "c", "t", version, status, None, body);
        let case = format!("stored {stored:?}, incoming {version} {status} {body}");
        let outcome = one(&store, up(&incoming)).await;
        if applies {
            let Outcome::Written { seq } = outcome else {
                panic!("{case}: expected Written, got {outcome:?}")
            };
            assert!(seq > head_before, "{case}: {seq} after {head_before}");
            assert_eq!(head(&store).await, seq, "{case}");
            expected = Some(Record { seq, doc: incoming });
        } else {
            assert_eq!(outcome, Outcome::Stale, "{case}");
            assert_eq!(
                head(&store).await,
                head_before,
                "{case}: a stale write changes nothing"
            );
        }
        assert_eq!(get(&store, &task_key("c", "t")).await, expected, "{case}");
    }
}

pub async fn duplicates_within_a_batch<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let v1 = task("c", "t", 1, "PENDING");
    let v2 = task("c", "t", 2, "RUNNING");
    let outcomes = commit(&store, vec![up(&v1), up(&v1), up(&v2), up(&v1), up(&v2)]).await;
    let [
        Outcome::Written { seq: first },
        Outcome::Stale,
        Outcome::Written { seq: second },
        Outcome::Stale,
        Outcome::Stale,
    ] = outcomes[..]
    else {
        panic!("expected Written, Stale, Written, Stale, Stale: {outcomes:?}")
    };
    assert_eq!(
        get(&store, &v1.key).await,
        Some(Record {
            seq: second,
            doc: v2.clone()
        })
    );
    assert_eq!(
        store.changes(0, 100).await.unwrap(),
        [
            Change {
                seq: first,
                deleted: false,
                doc: v1
            },
            Change {
                seq: second,
                deleted: false,
                doc: v2
            }
        ]
    );
}

pub async fn sequence_strictly_increasing<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let mut all = Vec::new();
    for batch in 0..5u64 {
        let mut writes = vec![Write::Park(letter("x"))];
        for i in 0..=batch {
            writes.push(up(&task("c", &format!("t{i}"), batch + 1, "RUNNING")));
        }
        if batch == 3 {
            writes.push(Write::Delete {
                key: task_key("c", "t0"),
                unchanged_since: u64::MAX,
                at_ms: 0,
            });
        }
        let n = writes.len();
        // Strictly increasing within the batch, in batch order, and after the batch before.
        let outcomes = commit(&store, writes).await;
        assert!(matches!(outcomes[0], Outcome::Parked { .. }), "{outcomes:?}");
        let batch_seqs = logged(all.last().copied().unwrap_or(0), &outcomes);
        assert_eq!(
            batch_seqs.len(),
            n - 1,
            "every write but the park logged: {outcomes:?}"
        );
        all.extend(batch_seqs);
    }
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "one strictly increasing sequence across batches and write kinds: {all:?}"
    );
    assert_eq!(head(&store).await, *all.last().unwrap());
    assert_eq!(seqs(&store.changes(0, 1000).await.unwrap()), all);
}

pub async fn get_distinguishes_kinds_and_missing<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let t = task("c", "same", 1, "RUNNING");
    let i = doc(Kind::Instance, "c", "same", 1, "ACTIVE", None, "i");
    apply(&store, vec![up(&t), up(&i)]).await;
    assert_eq!(get(&store, &t.key).await.map(|r| r.doc), Some(t));
    assert_eq!(get(&store, &i.key).await.map(|r| r.doc), Some(i));
    assert_eq!(get(&store, &task_key("c", "other")).await, None);
    assert_eq!(get(&store, &task_key("c2", "same")).await, None);
    assert_eq!(get(&store, &task_key("c", "sam")).await, None);
    assert_eq!(store.count(Kind::Task).await.unwrap(), 1);
    assert_eq!(store.count(Kind::Instance).await.unwrap(), 1);
}

// ---------------------------------------------------------------------------------------------------
// Listings
// ---------------------------------------------------------------------------------------------------

pub async fn list_filters<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let records = load_fixture(&store).await;
    for kind in [Kind::Task, Kind::Instance] {
        for filter in filters() {
            let got = list_all(&store, kind, &filter).await;
            assert_eq!(got, expected(&records, kind, &filter), "{kind:?} {filter:?}");
        }
    }
}

pub async fn list_pagination<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let records = load_fixture(&store).await;
    let mut longest = 0;
    for kind in [Kind::Task, Kind::Instance] {
        for filter in filters() {
            let all = list_all(&store, kind, &filter).await;
            longest = longest.max(all.len());
            for limit in [1, 2, 3, all.len().max(1), all.len() + 1] {
                assert_eq!(
                    list_paged(&store, kind, &filter, limit).await,
                    all,
                    "{kind:?} {filter:?} limit {limit}"
                );
            }
            // A page exactly as long as what is left has no next page.
            let exact = store
                .list(
                    kind,
                    &filter,
                    PageRequest {
                        after: None,
                        limit: Some(all.len()),
                    },
                )
                .await
                .unwrap();
            assert_eq!(
                exact,
                Page {
                    items: all.clone(),
                    next: None
                },
                "{kind:?} {filter:?}"
            );
            // A zero limit returns nothing, and its cursor resumes at the start.
            let zero = store
                .list(
                    kind,
                    &filter,
                    PageRequest {
                        after: None,
                        limit: Some(0),
                    },
                )
                .await
                .unwrap();
            assert!(zero.items.is_empty());
            assert_eq!(zero.next.is_some(), !all.is_empty(), "{kind:?} {filter:?}");
            if let Some(next) = zero.next {
                let rest = store
                    .list(
                        kind,
                        &filter,
                        PageRequest {
                            after: Some(next),
                            limit: None,
                        },
                    )
                    .await
                    .unwrap();
                assert_eq!(rest.items, all);
            }
        }
    }
    assert!(
        longest >= 7,
        "the fixture has listings of at least 7 ({longest}); {} records",
        records.len()
    );
}

/// Writes prepared by the caller ([`Store::apply_prepared`]: bodies compressed ahead) store what the
/// same writes store through [`Store::apply`]: the same records and changes, and an unprepared write
/// of the same document is identical to the prepared one's (stale, nothing written).
pub async fn prepared_writes_store_what_writes_store<S: Store, G>(
    make: impl AsyncFn(StoreOptions) -> (S, G),
) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let docs: Vec<Document> = [("short", 0), ("long", 2_000), ("longer", 30_000)]
        .into_iter()
        .map(|(id, pad)| {
            let mut doc = task("c1", id, 1, "RUNNING");
            doc.body = format!(r#"{{"id":"{id}","pad":"{}"}}"#, "ab".repeat(pad)).into_bytes();
            doc
        })
        .collect();
    let scheduler = doc(
        Kind::Environment,
        "c1",
        "env",
        0,
        "active",
        None,
        &"{\"x\":1}".repeat(200),
    );
    let mut writes: Vec<PreparedWrite> = docs.iter().map(|doc| PreparedWrite::new(up(doc))).collect();
    writes.push(PreparedWrite::new(put(&scheduler, Expect::Absent)));
    let outcomes = store.apply_prepared(writes).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, Outcome::Written { .. })),
        "{outcomes:?}"
    );
    for doc in docs.iter().chain([&scheduler]) {
        let stored = store.get(&doc.key).await.unwrap().expect("stored");
        assert_eq!(&stored.doc, doc);
    }
    let changes = store.changes(0, 10).await.unwrap();
    let bodies: Vec<&[u8]> = changes.iter().map(|change| change.doc.body.as_slice()).collect();
    let expected: Vec<&[u8]> = docs
        .iter()
        .chain([&scheduler])
        .map(|doc| doc.body.as_slice())
        .collect();
    assert_eq!(bodies, expected);
    assert_eq!(
        apply(&store, docs.iter().map(up).collect()).await,
        vec![Outcome::Stale; docs.len()]
    );
}

/// `list_spliced` writes what `list` returns, page by page, bodies byte for byte (long ones are
/// stored compressed), and pages the same way.
pub async fn list_spliced_matches_list<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    load_fixture(&store).await;
    let long = |id: &str, n: usize| {
        let mut doc = task("c1", id, 1, "RUNNING");
        doc.body = format!(r#"{{"id":"{id}","pad":"{}"}}"#, "ab".repeat(n)).into_bytes();
        doc
    };
    apply(
        &store,
        vec![up(&long("t-long", 2_000)), up(&long("t-longer", 30_000))],
    )
    .await;
    let splice = Splice {
        before: b"<",
        middle: b"|",
        after: b">",
        separator: b",",
        lead: false,
    };
    for kind in [Kind::Task, Kind::Instance] {
        for filter in &filters() {
            for limit in [None, Some(1), Some(2), Some(100)] {
                let mut after = None;
                for page_number in 0.. {
                    let request = PageRequest {
                        after: after.clone(),
                        limit,
                    };
                    let listed = store.list(kind, filter, request.clone()).await.unwrap();
                    let splice = Splice {
                        lead: page_number > 0,
                        ..splice
                    };
                    let mut expected = b"start".to_vec();
                    for (i, record) in listed.items.iter().enumerate() {
                        splice
                            .write(&mut expected, i, record.seq, |out| {
                                out.extend_from_slice(&record.doc.body);
                                Ok(())
                            })
                            .unwrap();
                    }
                    let spliced = store
                        .list_spliced(kind, filter, request, splice, b"start".to_vec())
                        .await
                        .unwrap();
                    let what = format!("{kind:?} {filter:?} limit {limit:?} page {page_number}");
                    assert_eq!(
                        String::from_utf8_lossy(&spliced.out),
                        String::from_utf8_lossy(&expected),
                        "{what}"
                    );
                    assert_eq!(spliced.count, listed.items.len(), "{what}");
                    assert_eq!(spliced.next, listed.next, "{what}");
                    match listed.next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
            }
        }
    }
}

pub async fn list_foreign_cursors<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    load_fixture(&store).await;
    let mut cursors: Vec<Cursor> = [
        &b""[..],
        b"\0",
        b"\x01",
        b"\x02",
        b"\x01\x01",
        b"\x01\x02svc-a\0",
        b"\x01c1\0",
        b"\x01c1\0t2",
        b"\x01\x01RUNNING\0c2\0",
        b"\x03",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        b"not a cursor at all",
    ]
    .iter()
    .map(|bytes| Cursor(bytes.to_vec()))
    .collect();
    // Genuine cursors of every listing, tried with every other listing.
    let filters = filters();
    for kind in [Kind::Task, Kind::Instance] {
        for filter in &filters {
            let page = store
                .list(
                    kind,
                    filter,
                    PageRequest {
                        after: None,
                        limit: Some(2),
                    },
                )
                .await
                .unwrap();
            cursors.extend(page.next);
        }
    }
    for kind in [Kind::Task, Kind::Instance] {
        for filter in &filters {
            let all = list_all(&store, kind, filter).await;
            for cursor in &cursors {
                let page = store
                    .list(
                        kind,
                        filter,
                        PageRequest {
                            after: Some(cursor.clone()),
                            limit: None,
                        },
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{kind:?} {filter:?} after {cursor:?}: {e}"));
                // Whatever the cursor, the page resumes somewhere in the listing.
                assert!(
                    all.ends_with(&page.items),
                    "{kind:?} {filter:?} after {cursor:?}: not a suffix"
                );
            }
            let from_start = store
                .list(
                    kind,
                    filter,
                    PageRequest {
                        after: Some(Cursor(Vec::new())),
                        limit: None,
                    },
                )
                .await
                .unwrap();
            assert_eq!(from_start.items, all, "a cursor before the listing starts it");
            let past_end = store
                .list(
                    kind,
                    filter,
                    PageRequest {
                        after: Some(Cursor(vec![0xff; 4])),
                        limit: Some(1),
                    },
                )
                .await
                .unwrap();
            assert_eq!(
                past_end,
                Page {
                    items: Vec::new(),
                    next: None
                },
                "a cursor after the listing ends it"
            );
        }
    }
    // Dead letters too.
    apply(&store, vec![Write::Park(letter("a")), Write::Park(letter("b"))]).await;
    for cursor in &cursors {
        let page = store
            .dead_letters(PageRequest {
                after: Some(cursor.clone()),
                limit: Some(1),
            })
            .await
            .unwrap();
        assert!(page.items.len() <= 1);
    }
}

pub async fn index_follows_changes<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let ids = |records: Vec<Record>| {
        records
            .into_iter()
            .map(|r| (r.doc.version, r.doc.key.id))
            .collect::<Vec<_>>()
    };
    let steps: [(u64, &str, Option<&str>); 6] = [
        (1, "PENDING", Some("a")),
        (2, "RUNNING", Some("b")),
        (3, "RUNNING", None),
        (4, "RUNNING", Some("b")),
        (5, "RUNNING", Some("b")),
        (6, "STOPPED", Some("b")),
    ];
    apply(
        &store,
        vec![up(&doc(Kind::Task, "c", "other", 1, "RUNNING", Some("b"), "o"))],
    )
    .await;
    for (version, status, started_by) in steps {
        let d = doc(
            Kind::Task,
            "c",
            "t",
            version,
            status,
            started_by,
            &format!("v{version}"),
        );
        one(&store, up(&d)).await;
        for candidate in ["PENDING", "RUNNING", "STOPPED"] {
            let mut want = Vec::new();
            if candidate == status {
                want.push((version, "t".to_owned()));
            }
            if candidate == "RUNNING" {
                want.insert(0, (1, "other".to_owned()));
            }
            let got = ids(list_all(&store, Kind::Task, &filter(None, Some(candidate), None)).await);
            assert_eq!(got, want, "status {candidate} after v{version}");
        }
        for candidate in ["a", "b"] {
            let mut want = Vec::new();
            if candidate == "b" {
                want.push((1, "other".to_owned()));
            }
            if Some(candidate) == started_by {
                want.push((version, "t".to_owned()));
            }
            let got = ids(list_all(&store, Kind::Task, &filter(Some("c"), None, Some(candidate))).await);
            assert_eq!(got, want, "startedBy {candidate} after v{version}");
        }
    }
    one(
        &store,
        Write::Delete {
            key: task_key("c", "t"),
            unchanged_since: u64::MAX,
            at_ms: 0,
        },
    )
    .await;
    assert_eq!(
        ids(list_all(&store, Kind::Task, &filter(None, Some("STOPPED"), None)).await),
        []
    );
    assert_eq!(
        ids(list_all(&store, Kind::Task, &filter(None, None, Some("b"))).await),
        [(1, "other".to_owned())]
    );
}

// ---------------------------------------------------------------------------------------------------
// Deletes and tombstones
// ---------------------------------------------------------------------------------------------------

pub async fn delete_when_unchanged<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let d = doc(Kind::Task, "c", "t", 4, "RUNNING", Some("svc"), "body");
    let key = d.key.clone();
    let created = write_one(&store, up(&d)).await;
    // Changed after position 0 (before every change): kept.
    assert_eq!(
        one(
            &store,
            Write::Delete {
                key: key.clone(),
                unchanged_since: 0,
                at_ms: 0,
            }
        )
        .await,
        Outcome::Kept
    );
    assert!(get(&store, &key).await.is_some());
    assert_eq!(head(&store).await, created, "a kept delete logs nothing");
    // Unchanged since its own last change: deleted.
    let deletion = delete_one(
        &store,
        Write::Delete {
            key: key.clone(),
            unchanged_since: created,
            at_ms: 0,
        },
    )
    .await;
    assert_eq!(get(&store, &key).await, None);
    assert_eq!(store.count(Kind::Task).await.unwrap(), 0);
    assert_eq!(store.ids(Kind::Task, &cluster("c")).await.unwrap(), []);
    let changes = store.changes(created, 10).await.unwrap();
    assert_eq!(
        changes,
        [crate::Change {
            seq: deletion,
            deleted: true,
            doc: d
        }],
        "a deletion logs the entity as it was"
    );
    // Nothing left to delete.
    assert_eq!(one(&store, delete_any(key.clone())).await, Outcome::Kept);
    assert_eq!(
        one(
            &store,
            Write::Delete {
                key: task_key("c", "never"),
                unchanged_since: deletion,
                at_ms: 0,
            }
        )
        .await,
        Outcome::Kept
    );
    assert_eq!(head(&store).await, deletion);
}

pub async fn delete_kept_when_changed_after<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    one(&store, up(&task("c", "t", 1, "PENDING"))).await;
    let position = head(&store).await;
    let newer = task("c", "t", 2, "RUNNING");
    let changed = write_one(&store, up(&newer)).await;
    let delete = Write::Delete {
        key: newer.key.clone(),
        unchanged_since: position,
        at_ms: 0,
    };
    assert_eq!(one(&store, delete).await, Outcome::Kept);
    assert_eq!(
        get(&store, &newer.key).await,
        Some(Record {
            seq: changed,
            doc: newer.clone()
        })
    );
    assert_eq!(head(&store).await, changed, "a kept delete logs nothing");
    let delete = Write::Delete {
        key: newer.key.clone(),
        unchanged_since: changed,
        at_ms: 0,
    };
    delete_one(&store, delete).await;
    assert_eq!(get(&store, &newer.key).await, None);
}

/// A Describe at the deletion's version brings the entity back (ECS lists it again); an older one
/// does not; events at that version stay blocked.
pub async fn observed_entity_returns_after_deletion<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let key = task_key("c", "t");
    one(&store, up(&task("c", "t", 5, "RUNNING"))).await;
    let deletion = delete_one(&store, delete_any(key.clone())).await;
    assert_eq!(
        one(&store, up(&task("c", "t", 5, "RUNNING"))).await,
        Outcome::Stale
    );
    assert_eq!(
        one(&store, Write::observe(task("c", "t", 4, "RUNNING"))).await,
        Outcome::Stale
    );
    assert_eq!(get(&store, &key).await, None);
    assert_eq!(head(&store).await, deletion, "stale writes log nothing");
    let again = task("c", "t", 5, "RUNNING");
    let back = write_one(&store, Write::observe(again.clone())).await;
    assert_eq!(
        get(&store, &key).await,
        Some(Record {
            seq: back,
            doc: again.clone()
        })
    );
    // Once present, Observe follows the ordinary version rule.
    assert_eq!(one(&store, Write::observe(again)).await, Outcome::Stale);
    assert_eq!(
        one(&store, Write::observe(task("c", "t", 4, "STOPPED"))).await,
        Outcome::Stale
    );
    assert_eq!(head(&store).await, back, "stale writes log nothing");
    let newer = task("c", "t", 6, "STOPPED");
    let seq = write_one(&store, Write::observe(newer.clone())).await;
    assert_eq!(get(&store, &key).await, Some(Record { seq, doc: newer }));
    assert_eq!(store.count(Kind::Task).await.unwrap(), 1);
}

pub async fn tombstone_blocks_stale_allows_newer<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let key = task_key("c", "t");
    one(&store, up(&task("c", "t", 5, "RUNNING"))).await;
    let deletion = delete_one(&store, delete_any(key.clone())).await;
    for stale in [
        task("c", "t", 5, "RUNNING"),
        task("c", "t", 5, "STOPPED"),
        task("c", "t", 4, "RUNNING"),
        task("c", "t", 0, "RUNNING"),
    ] {
        assert_eq!(one(&store, up(&stale)).await, Outcome::Stale, "{stale:?}");
        assert_eq!(get(&store, &key).await, None);
    }
    assert_eq!(store.count(Kind::Task).await.unwrap(), 0);
    assert_eq!(head(&store).await, deletion, "stale writes log nothing");
    let newer = task("c", "t", 6, "STOPPED");
    let seq = write_one(&store, up(&newer)).await;
    assert_eq!(get(&store, &key).await, Some(Record { seq, doc: newer }));
    assert_eq!(store.count(Kind::Task).await.unwrap(), 1);

    // An unversioned entity's tombstone has version 0: an unversioned description is newer information.
    let unversioned = task("c", "u", 0, "RUNNING");
    one(&store, up(&unversioned)).await;
    one(&store, delete_any(unversioned.key.clone())).await;
    write_one(&store, up(&unversioned)).await;
}

pub async fn tombstone_trimmed_with_its_deletion<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions {
        change_log_retention: 3,
        ..StoreOptions::default()
    })
    .await;
    let a = task("c", "a", 5, "RUNNING");
    let created = write_one(&store, up(&a)).await;
    let delete_a = delete_any(a.key.clone());
    let deletion = delete_one(&store, delete_a.clone()).await;
    let x = write_one(&store, up(&task("c", "x", 1, "RUNNING"))).await;
    let y = write_one(&store, up(&task("c", "y", 1, "RUNNING"))).await;
    // The log holds the deletion, x and y: the deletion is retained, so is its tombstone.
    assert_log(&store, &[deletion, x, y], Some(created), "deletion retained").await;
    assert_eq!(one(&store, up(&a)).await, Outcome::Stale);
    let z = write_one(&store, up(&task("c", "z", 1, "RUNNING"))).await;
    // The deletion is trimmed: the tombstone goes with it, and nothing blocks the old version.
    assert_log(&store, &[x, y, z], Some(deletion), "deletion trimmed").await;
    write_one(&store, up(&a)).await;

    // A later deletion's tombstone survives the trimming of an earlier deletion of the same entity.
    let b1 = task("c", "b", 1, "RUNNING");
    let b2 = task("c", "b", 2, "RUNNING");
    let delete_b = delete_any(b1.key.clone());
    let outcomes = commit(&store, vec![up(&b1), delete_b.clone(), up(&b2)]).await;
    let [
        Outcome::Written { .. },
        Outcome::Deleted { seq: first_deletion },
        Outcome::Written { seq: rewritten },
    ] = outcomes[..]
    else {
        panic!("expected Written, Deleted, Written: {outcomes:?}")
    };
    let second_deletion = delete_one(&store, delete_b).await;
    // The first deletion of b is trimmed, the second is not.
    let w = write_one(&store, up(&task("c", "w", 1, "RUNNING"))).await;
    assert_log(
        &store,
        &[rewritten, second_deletion, w],
        Some(first_deletion),
        "first deletion of b trimmed",
    )
    .await;
    assert_eq!(one(&store, up(&b2)).await, Outcome::Stale);
    assert_eq!(get(&store, &b2.key).await, None);
}

/// A version ahead of what ECS describes, stored before the caller looked at ECS, is bogus (ECS's
/// per-resource version only grows): an `Observe` replaces it. One stored after (`unchanged_since`),
/// is a newer event the description raced, and stays; an event (`Upsert`) never corrects; an
/// unversioned description proves nothing about versions.
pub async fn observe_corrects_a_version_ahead_of_ecs<S: Store, G>(
    make: impl AsyncFn(StoreOptions) -> (S, G),
) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let observe = |doc: &Document, unchanged_since: u64| Write::Observe {
        doc: doc.clone(),
        unchanged_since,
    };
    let key = task_key("c", "t");
    // An event with a version near u64::MAX pins the entity against events and describes as usual...
    let bogus = task("c", "t", u64::MAX - 1, "RUNNING");
    let pinned = write_one(&store, up(&bogus)).await;
    let described = task("c", "t", 5, "STOPPED");
    assert_eq!(one(&store, up(&described)).await, Outcome::Stale);
    assert_eq!(
        one(&store, Write::observe(described.clone())).await,
        Outcome::Stale
    );
    // ...and a description racing it (the entity changed after `unchanged_since`) does not correct it.
    assert_eq!(one(&store, observe(&described, 0)).await, Outcome::Stale);
    assert_eq!(get(&store, &key).await.unwrap().doc, bogus);
    assert_eq!(head(&store).await, pinned, "stale writes log nothing");
    // Stored at or before `unchanged_since`: ECS's answer replaces it.
    let corrected = write_one(&store, observe(&described, pinned)).await;
    assert_eq!(
        get(&store, &key).await,
        Some(Record {
            seq: corrected,
            doc: described.clone()
        })
    );
    // From there, events at real versions apply again, and a description that raced one (asked for
    // before it was stored) does not take the entity back.
    let next = task("c", "t", 6, "STOPPED");
    write_one(&store, up(&next)).await;
    assert_eq!(one(&store, observe(&described, corrected)).await, Outcome::Stale);
    assert_eq!(get(&store, &key).await.unwrap().doc, next);
    // Equal versions are not "ahead" (an event and a describe of one version may differ in body).
    let same_version = task("c", "t", 6, "RUNNING");
    assert_eq!(
        one(&store, observe(&same_version, u64::MAX)).await,
        Outcome::Stale
    );
    // An unversioned description (version 0) corrects nothing.
    assert_eq!(
        one(&store, observe(&task("c", "t", 0, "RUNNING"), u64::MAX)).await,
        Outcome::Stale
    );
    assert_eq!(get(&store, &key).await.unwrap().doc, next);

    // A tombstone carrying a bogus version blocks the entity's return only until the deletion is
    // not after `unchanged_since`.
    let gone = task("c", "g", u64::MAX, "RUNNING");
    let created = write_one(&store, up(&gone)).await;
    let deletion = delete_one(
        &store,
        Write::Delete {
            key: gone.key.clone(),
            unchanged_since: created,
            at_ms: 0,
        },
    )
    .await;
    let back = task("c", "g", 3, "RUNNING");
    assert_eq!(one(&store, up(&back)).await, Outcome::Stale);
    // Asked before the deletion (the head then was `created`): the deletion is after it.
    assert_eq!(one(&store, observe(&back, created)).await, Outcome::Stale);
    assert_eq!(get(&store, &gone.key).await, None);
    write_one(&store, observe(&back, deletion)).await;
    assert_eq!(get(&store, &gone.key).await.unwrap().doc, back);
    assert_eq!(store.count(Kind::Task).await.unwrap(), 2);
}

/// A tombstone is kept at least `tombstone_retention` after its deletion's time (the store's clock is
/// the latest deletion time it was given), even when a burst of changes trimmed the deletion from the
/// change log; and as long as the deletion is in the log, whatever its age.
pub async fn tombstone_kept_for_its_retention<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions {
        change_log_retention: 3,
        tombstone_retention: std::time::Duration::from_millis(1_000),
        ..StoreOptions::default()
    })
    .await;
    let delete_at = |key: &Key, at_ms: u64| Write::Delete {
        key: key.clone(),
        unchanged_since: u64::MAX,
        at_ms,
    };
    let a = task("c", "a", 5, "RUNNING");
    one(&store, up(&a)).await;
    let deletion = delete_one(&store, delete_at(&a.key, 10_000)).await;
    // A burst of changes trims the deletion from the log: the tombstone stays.
    let mut burst = Vec::new();
    for n in 0..5 {
        burst.push(write_one(&store, up(&task("c", &format!("x{n}"), 1, "RUNNING"))).await);
    }
    assert!(deletion < burst[1]);
    assert_log(&store, &burst[2..], Some(burst[1]), "after the burst").await;
    assert_eq!(one(&store, up(&a)).await, Outcome::Stale);
    // Another deletion 999 ms later: the tombstone is younger than its retention, and stays.
    let b = task("c", "b", 1, "RUNNING");
    one(&store, up(&b)).await;
    one(&store, delete_at(&b.key, 10_999)).await;
    assert_eq!(one(&store, up(&a)).await, Outcome::Stale);
    // A deletion time 1000 ms after a's: a's tombstone has had its retention and goes. (A deletion
    // that finds nothing to delete still tells the time.)
    one(&store, delete_at(&task_key("c", "nothing"), 11_000)).await;
    write_one(&store, up(&a)).await;

    // A deletion still in the log keeps its tombstone, however old.
    let (store, _guard) = make(StoreOptions {
        change_log_retention: 100,
        tombstone_retention: std::time::Duration::from_millis(1_000),
        ..StoreOptions::default()
    })
    .await;
    one(&store, up(&a)).await;
    one(&store, delete_at(&a.key, 1)).await;
    one(&store, delete_at(&task_key("c", "nothing"), 1_000_000)).await;
    assert_eq!(one(&store, up(&a)).await, Outcome::Stale);
    // Without a time (0), a tombstone goes with its deletion's change, as before.
    let (store, _guard) = make(StoreOptions {
        change_log_retention: 2,
        tombstone_retention: std::time::Duration::from_secs(3_600),
        ..StoreOptions::default()
    })
    .await;
    one(&store, up(&a)).await;
    one(&store, delete_at(&a.key, 0)).await;
    one(&store, up(&task("c", "y", 1, "RUNNING"))).await;
    assert_eq!(one(&store, up(&a)).await, Outcome::Stale);
    one(&store, up(&task("c", "z", 1, "RUNNING"))).await;
    write_one(&store, up(&a)).await;
}

/// Many tombstones past their retention go at once, oldest first; a tombstone removed by the entity's
/// return takes its time entry along (the entity's next tombstone is timed on its own); and a time
/// going back (a deletion given an earlier time) does not move the store's clock back.
pub async fn tombstones_expire_oldest_first<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions {
        change_log_retention: 1,
        tombstone_retention: std::time::Duration::from_millis(100),
        ..StoreOptions::default()
    })
    .await;
    let delete_at = |key: &Key, at_ms: u64| Write::Delete {
        key: key.clone(),
        unchanged_since: u64::MAX,
        at_ms,
    };
    let docs: Vec<Document> = (0..20)
        .map(|n| task("c", &format!("t{n:02}"), 7, "RUNNING"))
        .collect();
    apply(&store, docs.iter().map(up).collect()).await;
    // Deleted at 1000, 1010, ..., 1190; t05 comes back at once (a newer version), to be deleted
    // again at 1300.
    let t05 = task("c", "t05", 8, "RUNNING");
    for (n, doc) in docs.iter().enumerate() {
        one(&store, delete_at(&doc.key, 1_000 + 10 * n as u64)).await;
        if n == 5 {
            assert!(matches!(one(&store, up(&t05)).await, Outcome::Written { .. }));
        }
    }
    one(&store, delete_at(&t05.key, 1_300)).await;
    // The clock is at 1300: everything deleted up to 1200 has had its retention; t05's tombstone
    // (of 1300) has not.
    for (n, doc) in docs.iter().enumerate() {
        if n == 5 {
            assert_eq!(one(&store, up(&t05)).await, Outcome::Stale, "t05");
        } else {
            let outcome = one(&store, up(doc)).await;
            assert!(matches!(outcome, Outcome::Written { .. }), "t{n:02}: {outcome:?}");
        }
    }
    // An earlier time does not move the clock back.
    let again = task("c", "again", 1, "RUNNING");
    one(&store, up(&again)).await;
    one(&store, delete_at(&again.key, 1_290)).await;
    one(&store, up(&task("c", "other", 1, "RUNNING"))).await;
    one(&store, delete_at(&task_key("c", "nothing"), 5)).await;
    assert_eq!(one(&store, up(&again)).await, Outcome::Stale);
    one(&store, delete_at(&task_key("c", "nothing"), 1_390)).await;
    assert!(matches!(one(&store, up(&again)).await, Outcome::Written { .. }));
    assert_eq!(store.count(Kind::Task).await.unwrap(), 21);
}

// ---------------------------------------------------------------------------------------------------
// The change log
// ---------------------------------------------------------------------------------------------------

pub async fn changes_paginate<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let docs = [
        task("c", "a", 1, "PENDING"),
        doc(Kind::Instance, "c", "i", 0, "ACTIVE", None, "i"),
        doc(Kind::Task, "c2", "b", 1, "RUNNING", Some("svc"), "b"),
        task("c", "a", 2, "RUNNING"),
    ];
    let mut outcomes = commit(&store, docs[..2].iter().map(up).collect()).await;
    outcomes.extend(commit(&store, docs[2..].iter().map(up).collect()).await);
    let deletion = delete_one(&store, delete_any(docs[2].key.clone())).await;
    let mut want: Vec<crate::Change> = docs
        .iter()
        .zip(outcomes)
        .map(|(d, outcome)| crate::Change {
            seq: written(outcome),
            deleted: false,
            doc: d.clone(),
        })
        .collect();
    want.push(crate::Change {
        seq: deletion,
        deleted: true,
        doc: docs[2].clone(),
    });

    assert_eq!(store.changes(0, 100).await.unwrap(), want);
    for limit in 1..=6 {
        let mut got = Vec::new();
        let mut after = 0;
        loop {
            let page = store.changes(after, limit).await.unwrap();
            assert!(page.len() <= limit);
            let Some(last) = page.last() else { break };
            after = last.seq;
            got.extend(page);
        }
        assert_eq!(got, want, "limit {limit}");
    }
    // From any change's position: exactly the changes after it.
    for (i, change) in want.iter().enumerate() {
        assert_eq!(
            store.changes(change.seq, 100).await.unwrap(),
            want[i + 1..],
            "after {}",
            change.seq
        );
    }
    assert_eq!(store.changes(want[2].seq, 1).await.unwrap(), want[3..4]);
    assert_eq!(store.changes(deletion, 10).await.unwrap(), []);
    assert_eq!(store.changes(0, 0).await.unwrap(), []);
}

pub async fn changes_compacted_and_future<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions {
        change_log_retention: 3,
        ..StoreOptions::default()
    })
    .await;
    assert_eq!(
        store.log_bounds().await.unwrap(),
        LogBounds {
            oldest_resumable: 0,
            head: 0
        }
    );
    assert_eq!(store.changes(0, 10).await.unwrap(), []);
    assert!(matches!(
        store.changes(1, 10).await,
        Err(StoreError::Future {
            requested: 1,
            head: 0
        })
    ));

    let mut written = Vec::new();
    for v in 1..=5 {
        written.push(write_one(&store, up(&task("c", "t", v, "RUNNING"))).await);
    }
    let bounds = assert_log(
        &store,
        &written[2..],
        Some(written[1]),
        "five changes, three kept",
    )
    .await;
    let head = bounds.head;
    // A limit of 0 reads nothing but still checks the position (the API validates resume points so).
    assert!(matches!(
        store.changes(written[0], 0).await,
        Err(StoreError::Compacted { .. })
    ));
    assert!(matches!(
        store.changes(head + 1, 0).await,
        Err(StoreError::Future { .. })
    ));
    assert_eq!(store.changes(written[2], 0).await.unwrap(), []);
    assert_eq!(store.changes(bounds.oldest_resumable, 0).await.unwrap(), []);
    // Positions before the oldest resumable one: the beginning, and a trimmed change's.
    for after in [0, written[0]] {
        match store.changes(after, 10).await {
            Err(StoreError::Compacted {
                requested,
                oldest_resumable,
            }) => {
                assert_eq!(requested, after);
                assert_eq!(oldest_resumable, bounds.oldest_resumable);
            }
            other => panic!("after {after}: expected Compacted, got {other:?}"),
        }
    }
    assert_eq!(
        seqs(&store.changes(bounds.oldest_resumable, 10).await.unwrap()),
        written[2..]
    );
    assert_eq!(seqs(&store.changes(written[2], 10).await.unwrap()), written[3..]);
    assert_eq!(seqs(&store.changes(written[3], 10).await.unwrap()), written[4..]);
    assert_eq!(seqs(&store.changes(head, 10).await.unwrap()), Vec::<u64>::new());
    // Any position after the head is ahead of the log.
    match store.changes(head + 1, 10).await {
        Err(StoreError::Future {
            requested,
            head: reported,
        }) => assert_eq!((requested, reported), (head + 1, head)),
        other => panic!("expected Future, got {other:?}"),
    }
    assert!(matches!(
        store.changes(u64::MAX, 10).await,
        Err(StoreError::Future { .. })
    ));
}

pub async fn retention_trims_exactly<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    for retention in [1u64, 2, 5] {
        for total in [0, 1, retention - 1, retention, retention + 1, 3 * retention + 1] {
            for batch in [1, 2, 7] {
                let case = format!("retention {retention}, {total} changes in batches of {batch}");
                let (store, _guard) = make(StoreOptions {
                    change_log_retention: retention,
                    ..StoreOptions::default()
                })
                .await;
                let mut seqs = Vec::new();
                while (seqs.len() as u64) < total {
                    let n = batch.min(total - seqs.len() as u64);
                    let writes = (0..n)
                        .map(|i| up(&task("c", &format!("t{}", seqs.len() as u64 + i), 1, "RUNNING")))
                        .collect();
                    let outcomes = commit(&store, writes).await;
                    seqs.extend(outcomes.into_iter().map(written));
                }
                // Exactly the `retention` most recent changes are kept.
                let kept = seqs.len().saturating_sub(retention as usize);
                let trimmed = kept.checked_sub(1).map(|newest| seqs[newest]);
                assert_log(&store, &seqs[kept..], trimmed, &case).await;
                // Entities are not trimmed with the log.
                assert_eq!(store.count(Kind::Task).await.unwrap(), total, "{case}");
            }
        }
    }
}

pub async fn subscribe_sees_head<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let mut rx = store.subscribe();
    assert_eq!(*rx.borrow_and_update(), 0);
    let outcomes = commit(
        &store,
        vec![
            up(&task("c", "a", 1, "RUNNING")),
            up(&task("c", "b", 1, "RUNNING")),
        ],
    )
    .await;
    let last = written(outcomes[1]);
    // The head is published before `apply` returns.
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), last);
    // Batches that change nothing in the log publish nothing.
    apply(
        &store,
        vec![up(&task("c", "a", 1, "RUNNING")), Write::Park(letter("p"))],
    )
    .await;
    assert!(!rx.has_changed().unwrap());
    let deletion = delete_one(
        &store,
        Write::Delete {
            key: task_key("c", "b"),
            unchanged_since: u64::MAX,
            at_ms: 0,
        },
    )
    .await;
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), deletion);
    // A late subscriber starts at the current head; `changed` resolves once a commit follows.
    let mut late = store.subscribe();
    assert_eq!(*late.borrow_and_update(), deletion);
    let seq = write_one(&store, up(&task("c", "a", 2, "RUNNING"))).await;
    late.changed().await.unwrap();
    assert_eq!(*late.borrow(), seq);
}
/// Once a commit has returned, a subscription (a new one, or one taken before) shows a head at least
/// the commit's last seq, whatever its writes; a commit that logs nothing does not move it back.
pub async fn subscribe_after_commit_is_at_least_its_seq<S: Store, G>(
    make: impl AsyncFn(StoreOptions) -> (S, G),
) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let early = store.subscribe();
    let check = |seq: u64, when: &str| {
        let fresh = *store.subscribe().borrow();
        assert!(
            fresh >= seq,
            "{when}: a new subscription shows {fresh}, before {seq}"
        );
        let seen = *early.borrow();
        assert!(
            seen >= seq,
            "{when}: an earlier subscription shows {seen}, before {seq}"
        );
    };
    let d = |status: &str| deployment("c", "d", "web", status);
    let outcomes = commit(
        &store,
        vec![
            up(&task("c", "t", 1, "RUNNING")),
            Write::Park(letter("p")),
            put(&d("PENDING"), Expect::Absent),
        ],
    )
    .await;
    let pending = written(outcomes[2]);
    check(pending, "upsert and put");
    let seq = delete_one(
        &store,
        Write::Delete {
            key: task_key("c", "t"),
            unchanged_since: u64::MAX,
            at_ms: 0,
        },
    )
    .await;
    check(seq, "delete");
    let running = write_one(&store, put(&d("RUNNING"), Expect::Seq(pending))).await;
    check(running, "put");
    let seq = write_one(&store, Write::observe(task("c", "t", 2, "RUNNING"))).await;
    check(seq, "observe");
    let removal = delete_one(
        &store,
        Write::Remove {
            key: d("").key,
            expect: running,
        },
    )
    .await;
    check(removal, "remove");
    // A batch that logs nothing.
    apply(
        &store,
        vec![up(&task("c", "t", 1, "RUNNING")), Write::Park(letter("q"))],
    )
    .await;
    check(removal, "nothing logged");
}

// ---------------------------------------------------------------------------------------------------
// Dead letters
// ---------------------------------------------------------------------------------------------------

pub async fn dead_letters_park_page_remove<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let mut given = letter("r0");
    given.id = 999;
    given.message_id = None;
    let mut writes = vec![Write::Park(given.clone())];
    writes.extend((1..5).map(|i| Write::Park(letter(&format!("r{i}")))));
    let outcomes = apply(&store, writes).await;
    let ids: Vec<u64> = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Parked { id } => *id,
            other => panic!("expected Parked, got {other:?}"),
        })
        .collect();
    // The store assigns ids, strictly increasing in batch order: the given ids (999, then 0s) are
    // ignored.
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");

    let all = store.dead_letters(PageRequest::default()).await.unwrap();
    assert_eq!(all.next, None);
    let listed: Vec<u64> = all.items.iter().map(|d| d.id).collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    assert_eq!(all.items[4], DeadLetter { id: ids[0], ..given });
    assert_eq!(
        all.items[0],
        DeadLetter {
            id: ids[4],
            ..letter("r4")
        }
    );

    for limit in [1, 2, 3, 5, 6] {
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .dead_letters(PageRequest {
                    after,
                    limit: Some(limit),
                })
                .await
                .unwrap();
            assert!(page.items.len() <= limit);
            got.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
            assert!(got.len() <= 5, "paging does not end");
        }
        assert_eq!(got, all.items, "limit {limit}");
    }

    assert!(store.remove_dead_letter(ids[2]).await.unwrap());
    assert!(!store.remove_dead_letter(ids[2]).await.unwrap());
    let never = (0..).find(|id| !ids.contains(id)).expect("an id never assigned");
    assert!(!store.remove_dead_letter(never).await.unwrap());
    let listed: Vec<u64> = store
        .dead_letters(PageRequest::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(listed, [ids[4], ids[3], ids[1], ids[0]]);
    // Removal does not make ids reusable; parking changes nothing in the change log.
    let Outcome::Parked { id } = one(&store, Write::Park(letter("again"))).await else {
        panic!("not parked")
    };
    assert!(id > ids[4]);
    assert_eq!(head(&store).await, 0);
}

pub async fn dead_letter_retention<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions {
        dead_letter_retention: 3,
        ..StoreOptions::default()
    })
    .await;
    let park = |n: usize, from: usize| {
        (from..from + n)
            .map(|i| Write::Park(letter(&format!("r{i}"))))
            .collect()
    };
    apply(&store, park(2, 0)).await;
    apply(&store, park(3, 2)).await;
    let reasons = |page: Page<DeadLetter>| page.items.into_iter().map(|d| d.reason).collect::<Vec<_>>();
    assert_eq!(
        reasons(store.dead_letters(PageRequest::default()).await.unwrap()),
        ["r4", "r3", "r2"]
    );
    // Removing one makes room for one more.
    let newest = store
        .dead_letters(PageRequest {
            after: None,
            limit: Some(1),
        })
        .await
        .unwrap();
    assert!(store.remove_dead_letter(newest.items[0].id).await.unwrap());
    apply(&store, park(1, 5)).await;
    assert_eq!(
        reasons(store.dead_letters(PageRequest::default()).await.unwrap()),
        ["r5", "r3", "r2"]
    );
    apply(&store, park(5, 6)).await;
    assert_eq!(
        reasons(store.dead_letters(PageRequest::default()).await.unwrap()),
        ["r10", "r9", "r8"]
    );
}

// ---------------------------------------------------------------------------------------------------
// Counts, clusters, ids
// ---------------------------------------------------------------------------------------------------

pub async fn count_tracks_entities<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let counts = async |store: &S| {
        (
            store.count(Kind::Task).await.unwrap(),
            store.count(Kind::Instance).await.unwrap(),
        )
    };
    assert_eq!(counts(&store).await, (0, 0));
    load_fixture(&store).await;
    assert_eq!(counts(&store).await, (11, 3));
    // Replacements and stale writes do not count.
    apply(
        &store,
        vec![
            up(&task("c1", "t1", 9, "STOPPED")),
            up(&task("c1", "t2", 0, "STOPPED")),
        ],
    )
    .await;
    assert_eq!(counts(&store).await, (11, 3));
    let delete = |kind, c: &str, id: &str| Write::Delete {
        key: Key {
            kind,
            cluster: cluster(c),
            id: id.to_owned(),
        },
        unchanged_since: u64::MAX,
        at_ms: 0,
    };
    apply(
        &store,
        vec![
            delete(Kind::Task, "c1", "t1"),
            delete(Kind::Task, "c1", "t1"),
            delete(Kind::Instance, "c2", "i2"),
        ],
    )
    .await;
    assert_eq!(counts(&store).await, (10, 2));
    // Re-inserting over a tombstone counts again.
    one(&store, up(&task("c1", "t1", 10, "RUNNING"))).await;
    assert_eq!(counts(&store).await, (11, 2));
}

pub async fn clusters_distinct_in_order<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    assert_eq!(store.clusters(Kind::Task).await.unwrap(), []);
    load_fixture(&store).await;
    one(
        &store,
        up(&doc(Kind::Instance, "c3", "i9", 1, "ACTIVE", None, "")),
    )
    .await;
    assert_eq!(
        store.clusters(Kind::Task).await.unwrap(),
        [cluster("c1"), cluster("c10"), cluster("c2")]
    );
    assert_eq!(
        store.clusters(Kind::Instance).await.unwrap(),
        [cluster("c1"), cluster("c2"), cluster("c3")]
    );
    one(
        &store,
        Write::Delete {
            key: task_key("c10", "t7"),
            unchanged_since: u64::MAX,
            at_ms: 0,
        },
    )
    .await;
    assert_eq!(
        store.clusters(Kind::Task).await.unwrap(),
        [cluster("c1"), cluster("c2")]
    );
}

pub async fn ids_of_cluster<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let records = load_fixture(&store).await;
    for kind in [Kind::Task, Kind::Instance] {
        for c in ["c1", "c10", "c2", "c3"] {
            let want: Vec<(String, u64)> = expected(&records, kind, &filter(Some(c), None, None))
                .into_iter()
                .map(|r| (r.doc.key.id, r.seq))
                .collect();
            assert_eq!(store.ids(kind, &cluster(c)).await.unwrap(), want, "{kind:?} {c}");
        }
    }
    let Outcome::Written { seq } = one(&store, up(&task("c1", "t3", 2, "RUNNING"))).await else {
        panic!()
    };
    let ids = store.ids(Kind::Task, &cluster("c1")).await.unwrap();
    assert!(
        ids.contains(&("t3".to_owned(), seq)),
        "ids carry the last change's seq: {ids:?}"
    );
}

// ---------------------------------------------------------------------------------------------------
// Invalid values and atomicity
// ---------------------------------------------------------------------------------------------------

pub async fn nul_rejected<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let invalid: [(&str, Write); 6] = [
        ("id", up(&task("c", "a\0b", 1, "RUNNING"))),
        ("status", up(&task("c", "t", 1, "RUN\0NING"))),
        (
            "started_by",
            up(&doc(Kind::Task, "c", "t", 1, "RUNNING", Some("svc\0"), "{}")),
        ),
        (
            "id",
            Write::Delete {
                key: task_key("c", "\0"),
                unchanged_since: u64::MAX,
                at_ms: 0,
            },
        ),
        (
            "started_by",
            put(&deployment("c", "d", "env\0", "PENDING"), Expect::Absent),
        ),
        (
            "id",
            // Refused for its key, whatever it expects.
            Write::Remove {
                key: Key::environment(cluster("c"), "e\0"),
                expect: 1,
            },
        ),
    ];
    for (field, write) in invalid {
        let (store, _guard) = make(StoreOptions::default()).await;
        let mut rx = store.subscribe();
        rx.borrow_and_update();
        let batch = vec![
            up(&task("c", "ok", 1, "RUNNING")),
            Write::Park(letter("p")),
            write.clone(),
        ];
        match store.apply(batch).await {
            Err(StoreError::InvalidValue { field: got }) => assert_eq!(got, field, "{write:?}"),
            other => panic!("{write:?}: expected InvalidValue, got {other:?}"),
        }
        assert_eq!(get(&store, &task_key("c", "ok")).await, None, "{write:?}");
        assert_eq!(
            store.log_bounds().await.unwrap(),
            LogBounds {
                oldest_resumable: 0,
                head: 0
            }
        );
        assert_eq!(store.count(Kind::Task).await.unwrap(), 0);
        assert_eq!(
            store.dead_letters(PageRequest::default()).await.unwrap().items,
            []
        );
        assert!(!rx.has_changed().unwrap());
        // The next batch starts from where the failed one did: its change is the log's first.
        let ok = task("c", "ok", 1, "RUNNING");
        let seq = write_one(&store, up(&ok)).await;
        assert_eq!(
            store.changes(0, 10).await.unwrap(),
            [Change {
                seq,
                deleted: false,
                doc: ok
            }],
            "{write:?}"
        );
    }
    // Reads with such values find nothing rather than fail.
    let (store, _guard) = make(StoreOptions::default()).await;
    load_fixture(&store).await;
    assert_eq!(get(&store, &task_key("c1", "t1\0")).await, None);
    for f in [
        filter(None, Some("RUNNING\0"), None),
        filter(None, None, Some("svc-a\0c1")),
        filter(Some("c1"), Some("\0"), Some("\0")),
    ] {
        assert_eq!(list_all(&store, Kind::Task, &f).await, [], "{f:?}");
    }
}

pub async fn batch_is_atomic<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions {
        change_log_retention: 2,
        dead_letter_retention: 1,
        ..StoreOptions::default()
    })
    .await;
    let a1 = doc(Kind::Task, "c", "a", 1, "PENDING", Some("x"), "a1");
    let b1 = task("c", "b", 1, "RUNNING");
    let d1 = task("c", "d", 1, "RUNNING");
    apply(
        &store,
        vec![up(&a1), up(&b1), up(&d1), Write::Park(letter("kept"))],
    )
    .await;
    one(&store, delete_any(d1.key.clone())).await;

    let snapshot = async |store: &S| {
        let mut tasks = Vec::new();
        for f in filters().into_iter().chain([
            filter(None, Some("PENDING"), None),
            filter(None, None, Some("x")),
            filter(None, None, Some("y")),
        ]) {
            tasks.push(list_all(store, Kind::Task, &f).await);
        }
        (
            tasks,
            store.log_bounds().await.unwrap(),
            store
                .changes(store.log_bounds().await.unwrap().oldest_resumable, 100)
                .await
                .unwrap(),
            store.dead_letters(PageRequest::default()).await.unwrap(),
            store.count(Kind::Task).await.unwrap(),
            store.clusters(Kind::Task).await.unwrap(),
        )
    };
    let before = snapshot(&store).await;
    let batch = vec![
        up(&doc(Kind::Task, "c", "a", 2, "STOPPED", Some("y"), "a2")),
        delete_any(b1.key.clone()),
        up(&task("c2", "new", 1, "RUNNING")),
        Write::Park(letter("lost")),
        Write::Park(letter("lost too")),
        // Would be applied over the tombstone of d.
        up(&task("c", "d", 2, "RUNNING")),
        up(&task("c", "bad\0", 1, "RUNNING")),
    ];
    assert!(matches!(
        store.apply(batch).await,
        Err(StoreError::InvalidValue { field: "id" })
    ));
    assert_eq!(
        snapshot(&store).await,
        before,
        "nothing of a failed batch is visible"
    );
    // The tombstone of d still blocks its old version.
    assert_eq!(one(&store, up(&d1)).await, Outcome::Stale);
}

pub async fn outcomes_in_batch_order<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let x1 = task("c", "x", 1, "RUNNING");
    let x2 = task("c", "x", 2, "STOPPED");
    let x3 = task("c", "x", 3, "RUNNING");
    let outcomes = commit(
        &store,
        vec![
            up(&x2),
            Write::Park(letter("p")),
            up(&x1),
            // Before the batch (position 0): x changed after it, within the batch.
            Write::Delete {
                key: x1.key.clone(),
                unchanged_since: 0,
                at_ms: 0,
            },
            delete_any(x1.key.clone()),
            up(&x2),
            up(&x3),
            Write::Delete {
                key: task_key("c", "nothing"),
                unchanged_since: u64::MAX,
                at_ms: 0,
            },
        ],
    )
    .await;
    let [first, parked, stale, kept, deleted, tombstoned, written, missing] = outcomes[..] else {
        panic!("one outcome per write: {outcomes:?}")
    };
    let Outcome::Written { seq: first } = first else {
        panic!("expected Written, got {first:?}")
    };
    assert!(matches!(parked, Outcome::Parked { .. }));
    assert_eq!(stale, Outcome::Stale);
    assert_eq!(kept, Outcome::Kept, "changed (in the batch) after 0");
    let Outcome::Deleted { seq: deletion } = deleted else {
        panic!("a write sees earlier writes of its batch: expected Deleted, got {deleted:?}")
    };
    assert_eq!(tombstoned, Outcome::Stale);
    let Outcome::Written { seq: last } = written else {
        panic!("expected Written, got {written:?}")
    };
    assert_eq!(missing, Outcome::Kept);
    // `commit` checked first < deletion < last; the log has them in that order.
    assert_eq!(
        store.changes(0, 10).await.unwrap(),
        [
            Change {
                seq: first,
                deleted: false,
                doc: x2.clone()
            },
            Change {
                seq: deletion,
                deleted: true,
                doc: x2
            },
            Change {
                seq: last,
                deleted: false,
                doc: x3.clone()
            },
        ]
    );
    assert_eq!(get(&store, &x1.key).await, Some(Record { seq: last, doc: x3 }));
}

pub async fn empty_batch<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    assert_eq!(apply(&store, Vec::new()).await, []);
    assert_eq!(head(&store).await, 0);
    let seq = write_one(&store, up(&task("c", "a", 1, "RUNNING"))).await;
    let mut rx = store.subscribe();
    rx.borrow_and_update();
    assert_eq!(apply(&store, Vec::new()).await, []);
    assert_eq!(head(&store).await, seq);
    assert!(!rx.has_changed().unwrap());
}

// ---------------------------------------------------------------------------------------------------
// Scheduler documents: compare-and-swap
// ---------------------------------------------------------------------------------------------------

/// An environment (version 0: scheduler documents have none).
pub fn environment(cluster_name: &str, name: &str, status: &str) -> Document {
    Document {
        key: Key::environment(cluster(cluster_name), name),
        version: 0,
        status: status.to_owned(),
        started_by: None,
        body: format!("{{\"environment\":\"{name}\",\"status\":\"{status}\"}}").into_bytes(),
    }
}

/// A revision of an environment, indexed by it as deployments are.
pub fn revision(cluster_name: &str, environment: &str, revision: u64) -> Document {
    Document {
        key: Key::revision(cluster(cluster_name), environment, revision),
        version: 0,
        status: String::new(),
        started_by: Some(environment.to_owned()),
        body: format!("{{\"environment\":\"{environment}\",\"revision\":{revision}}}").into_bytes(),
    }
}

/// A deployment, indexed by its environment (`started_by`) and status.
pub fn deployment(cluster_name: &str, id: &str, environment: &str, status: &str) -> Document {
    Document {
        key: Key::deployment(cluster(cluster_name), id),
        version: 0,
        status: status.to_owned(),
        started_by: Some(environment.to_owned()),
        body: format!("{{\"id\":\"{id}\",\"environment\":\"{environment}\",\"status\":\"{status}\"}}")
            .into_bytes(),
    }
}

pub fn put(doc: &Document, expect: Expect) -> Write {
    Write::Put {
        doc: doc.clone(),
        expect,
    }
}

/// Applies a batch that must fail with a conflict; returns (key, expected, found).
async fn conflict(store: &impl Store, writes: Vec<Write>) -> (Key, Expect, Option<u64>) {
    match store.apply(writes.clone()).await {
        Err(StoreError::Conflict { key, expected, found }) => (key, expected, found),
        other => panic!("{writes:?}: expected Conflict, got {other:?}"),
    }
}

/// Where a [`cas_writes`] case starts. Every state ends with another document written after the
/// key's changes (see [`At::Foreign`]).
#[derive(Debug, Clone, Copy)]
enum CasState {
    /// Never written.
    Empty,
    /// Put absent, then put again `n - 1` times, each expecting the seq the previous put got.
    Live(usize),
    /// Put absent, then removed.
    Removed,
}

/// A sequence number a [`cas_writes`] case expects, as its store gave it.
#[derive(Debug, Clone, Copy)]
enum At {
    /// The seq of the key's last change: the live record's, or a removed document's removal.
    Last,
    /// The seq of the key's change before its last one.
    Before,
    /// The seq of another document's change, after the key's last: one the key never had.
    Foreign,
}

/// One compare-and-swap write of a [`cas_writes`] case.
#[derive(Debug, Clone, Copy)]
enum Cas {
    PutAbsent,
    Put(At),
    Remove(At),
}

/// What it must do. A conflict reports the live record's seq (`None` without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CasResult {
    Written,
    Deleted,
    Conflict,
}

pub async fn cas_writes<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    use CasResult::{Conflict, Deleted, Written};
    use CasState::{Empty, Live, Removed};
    let cases: [(CasState, Cas, CasResult); 17] = [
        (Empty, Cas::PutAbsent, Written),
        (Live(1), Cas::PutAbsent, Conflict),
        (Live(1), Cas::Put(At::Last), Written),
        (Live(3), Cas::Put(At::Last), Written),
        (Live(3), Cas::Put(At::Before), Conflict),
        // A seq ahead of the live record's.
        (Live(1), Cas::Put(At::Foreign), Conflict),
        (Empty, Cas::Put(At::Foreign), Conflict),
        (Live(1), Cas::Remove(At::Last), Deleted),
        (Live(2), Cas::Remove(At::Last), Deleted),
        (Live(2), Cas::Remove(At::Before), Conflict),
        (Live(2), Cas::Remove(At::Foreign), Conflict),
        (Empty, Cas::Remove(At::Foreign), Conflict),
        // A removed document is absent: no tombstone stands in the way of a new one, and neither
        // the seq it had nor its removal's is live.
        (Removed, Cas::PutAbsent, Written),
        (Removed, Cas::Put(At::Before), Conflict),
        (Removed, Cas::Put(At::Last), Conflict),
        (Removed, Cas::Remove(At::Before), Conflict),
        (Removed, Cas::Remove(At::Last), Conflict),
    ];
    for (state, cas, want) in cases {
        let case = format!("{state:?} then {cas:?}");
        let (store, _guard) = make(StoreOptions::default()).await;
        let d = |n: usize| deployment("c", "d-1", "web", &format!("STATUS{n}"));
        let key = d(0).key;
        // The seqs of the key's changes, oldest first, and its live record.
        let mut history = Vec::new();
        let mut live = None;
        match state {
            Empty => {}
            Live(n) => {
                for i in 1..=n {
                    let expect = history.last().map_or(Expect::Absent, |&seq| Expect::Seq(seq));
                    history.push(write_one(&store, put(&d(i), expect)).await);
                }
                live = Some(Record {
                    seq: *history.last().unwrap(),
                    doc: d(n),
                });
            }
            Removed => {
                let seq = write_one(&store, put(&d(1), Expect::Absent)).await;
                history.push(seq);
                let remove = Write::Remove {
                    key: key.clone(),
                    expect: seq,
                };
                history.push(delete_one(&store, remove).await);
            }
        }
        let foreign = write_one(
            &store,
            put(&deployment("c", "d-other", "web", "PENDING"), Expect::Absent),
        )
        .await;
        let at = |at: At| match at {
            At::Last => *history.last().expect("the key has changes"),
            At::Before => history[history.len().checked_sub(2).expect("the key has two changes")],
            At::Foreign => foreign,
        };
        let head_before = head(&store).await;
        let count_before = store.count(Kind::Deployment).await.unwrap();
        let incoming = d(100);
        let (write, wanted) = match cas {
            Cas::PutAbsent => (put(&incoming, Expect::Absent), Expect::Absent),
            Cas::Put(expect) => (put(&incoming, Expect::Seq(at(expect))), Expect::Seq(at(expect))),
            Cas::Remove(expect) => (
                Write::Remove {
                    key: key.clone(),
                    expect: at(expect),
                },
                Expect::Seq(at(expect)),
            ),
        };
        let outcome = match store.apply(vec![write.clone()]).await {
            Ok(outcomes) => {
                assert_eq!(outcomes.len(), 1, "{case}");
                Some(outcomes[0])
            }
            Err(StoreError::Conflict {
                key: conflicting,
                expected,
                found,
            }) => {
                assert_eq!(want, Conflict, "{case}: got a conflict, found {found:?}");
                assert_eq!(conflicting, key, "{case}");
                assert_eq!(expected, wanted, "{case}");
                assert_eq!(
                    found,
                    live.as_ref().map(|r| r.seq),
                    "{case}: the conflict reports the live record's seq"
                );
                None
            }
            Err(other) => panic!("{case}: {other}"),
        };
        let (record, count, head_after) = match (want, outcome) {
            (Written, Some(Outcome::Written { seq })) => {
                assert!(seq > head_before, "{case}: {seq} after {head_before}");
                (
                    Some(Record { seq, doc: incoming }),
                    count_before + u64::from(live.is_none()),
                    seq,
                )
            }
            (Deleted, Some(Outcome::Deleted { seq })) => {
                assert!(seq > head_before, "{case}: {seq} after {head_before}");
                // A removal is logged like any deletion: the document as it was.
                let logged = store.changes(head_before, 10).await.unwrap();
                let live = live.clone().expect("removed a live document");
                assert_eq!(
                    logged,
                    [Change {
                        seq,
                        deleted: true,
                        doc: live.doc
                    }],
                    "{case}"
                );
                (None, count_before - 1, seq)
            }
            (Conflict, None) => (live.clone(), count_before, head_before),
            (want, got) => panic!("{case}: expected {want:?}, got {got:?}"),
        };
        assert_eq!(get(&store, &key).await, record, "{case}");
        assert_eq!(store.count(Kind::Deployment).await.unwrap(), count, "{case}");
        assert_eq!(head(&store).await, head_after, "{case}");
    }
}

pub async fn cas_conflict_applies_nothing<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let e = environment("c", "web", "ACTIVE");
    let d1 = deployment("c", "d-1", "web", "PENDING");
    let t = task("c", "t", 1, "RUNNING");
    let outcomes = commit(
        &store,
        vec![
            put(&e, Expect::Absent),
            put(&d1, Expect::Absent),
            up(&t),
            Write::Park(letter("kept")),
        ],
    )
    .await;
    let [e_seq, d1_seq, t_seq] = [0, 1, 2].map(|i| written(outcomes[i]));
    let snapshot = async |store: &S| {
        let mut lists = Vec::new();
        for kind in Kind::ALL {
            lists.push(list_all(store, kind, &Filter::default()).await);
            lists.push(list_all(store, kind, &filter(None, None, Some("web"))).await);
            lists.push(list_all(store, kind, &filter(None, Some("RUNNING"), None)).await);
            lists.push(list_all(store, kind, &filter(None, Some("PENDING"), None)).await);
        }
        let mut counts = Vec::new();
        for kind in Kind::ALL {
            counts.push(store.count(kind).await.unwrap());
        }
        (
            lists,
            counts,
            store.log_bounds().await.unwrap(),
            store.changes(0, 100).await.unwrap(),
            store.dead_letters(PageRequest::default()).await.unwrap(),
        )
    };
    let before = snapshot(&store).await;
    let head_before = before.2.head;
    assert_eq!(head_before, t_seq);
    let mut rx = store.subscribe();
    rx.borrow_and_update();
    // Each batch would change every table before its conflicting write (last, first or in between).
    let d2 = deployment("c", "d-2", "web", "PENDING");
    let e2 = environment("c", "api", "ACTIVE");
    // A seq d-1 never had.
    let stale_put = put(&deployment("c", "d-1", "web", "RUNNING"), Expect::Seq(e_seq));
    let batches = [
        vec![
            put(&d2, Expect::Absent),
            put(&deployment("c", "d-1", "web", "RUNNING"), Expect::Seq(d1_seq)),
            up(&task("c", "t", 2, "STOPPED")),
            Write::Remove {
                key: e.key.clone(),
                expect: e_seq,
            },
            Write::Park(letter("lost")),
            stale_put.clone(),
        ],
        vec![
            put(&e, Expect::Absent),
            put(&d2, Expect::Absent),
            Write::Park(letter("lost")),
        ],
        vec![
            up(&task("c", "t2", 1, "RUNNING")),
            Write::Remove {
                key: d1.key.clone(),
                expect: t_seq,
            },
            put(&e2, Expect::Absent),
        ],
        vec![put(&e2, Expect::Absent), put(&e2, Expect::Absent)],
    ];
    /// What a conflict reports as found.
    #[derive(Debug)]
    enum Found {
        /// A committed record's seq.
        Committed(u64),
        /// The seq a write earlier in the batch got: after the head before the batch.
        InTheBatch,
    }
    let wants = [
        // d-1 was rewritten earlier in the batch, and that is undone with the rest.
        (d1.key.clone(), Expect::Seq(e_seq), Found::InTheBatch),
        (e.key.clone(), Expect::Absent, Found::Committed(e_seq)),
        (d1.key.clone(), Expect::Seq(t_seq), Found::Committed(d1_seq)),
        // The second sees the first, which is undone with it.
        (e2.key.clone(), Expect::Absent, Found::InTheBatch),
    ];
    for (batch, (key, expected, found)) in batches.into_iter().zip(wants) {
        let case = format!("{batch:?}");
        let got = conflict(&store, batch).await;
        assert_eq!((&got.0, got.1), (&key, expected), "{case}");
        match found {
            Found::Committed(seq) => assert_eq!(got.2, Some(seq), "{case}"),
            Found::InTheBatch => assert!(
                got.2.is_some_and(|seq| seq > head_before),
                "{case}: found {:?}, expected a seq of the batch (after {head_before})",
                got.2
            ),
        }
        assert_eq!(
            snapshot(&store).await,
            before,
            "{case}: nothing of the batch is visible"
        );
        assert!(!rx.has_changed().unwrap(), "{case}: no head is published");
    }
    // Nothing of the failed batches is in the log: the next change directly follows the head.
    let seq = write_one(&store, put(&d2, Expect::Absent)).await;
    assert_eq!(
        store.changes(head_before, 10).await.unwrap(),
        [Change {
            seq,
            deleted: false,
            doc: d2
        }]
    );
    assert!(rx.has_changed().unwrap());
    assert_eq!(conflict(&store, vec![stale_put]).await.2, Some(d1_seq));
    // d-1 is still at the seq it had.
    write_one(
        &store,
        put(&deployment("c", "d-1", "web", "RUNNING"), Expect::Seq(d1_seq)),
    )
    .await;
}
/// A compare-and-swap batch over several keys whose last write conflicts applies nothing: no change
/// is logged, the head stays, and the keys the batch wrote before the conflict keep their records.
pub async fn cas_last_write_conflict_applies_nothing<S: Store, G>(
    make: impl AsyncFn(StoreOptions) -> (S, G),
) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let a = deployment("c", "d-a", "web", "PENDING");
    let b = deployment("c", "d-b", "web", "PENDING");
    let e = environment("c", "web", "ACTIVE");
    let outcomes = commit(
        &store,
        vec![
            put(&a, Expect::Absent),
            put(&b, Expect::Absent),
            put(&e, Expect::Absent),
        ],
    )
    .await;
    let [a_seq, b_seq, e_seq] = [0, 1, 2].map(|i| written(outcomes[i]));
    let head_before = head(&store).await;
    let mut rx = store.subscribe();
    rx.borrow_and_update();
    let a2 = deployment("c", "d-a", "web", "RUNNING");
    let c = deployment("c", "d-c", "web", "PENDING");
    let e2 = environment("c", "web", "DELETING");
    let batch = vec![
        put(&a2, Expect::Seq(a_seq)),
        Write::Remove {
            key: b.key.clone(),
            expect: b_seq,
        },
        put(&c, Expect::Absent),
        // a's seq, not e's.
        put(&e2, Expect::Seq(a_seq)),
    ];
    assert_eq!(
        conflict(&store, batch.clone()).await,
        (e.key.clone(), Expect::Seq(a_seq), Some(e_seq))
    );
    assert_eq!(head(&store).await, head_before, "the head is unchanged");
    assert_eq!(
        store.changes(head_before, 10).await.unwrap(),
        [],
        "no change is logged"
    );
    assert!(!rx.has_changed().unwrap(), "no head is published");
    assert_eq!(
        get(&store, &a.key).await,
        Some(Record {
            seq: a_seq,
            doc: a.clone()
        }),
        "the first key is unchanged"
    );
    assert_eq!(
        get(&store, &b.key).await,
        Some(Record {
            seq: b_seq,
            doc: b.clone()
        })
    );
    assert_eq!(get(&store, &c.key).await, None);
    assert_eq!(get(&store, &e.key).await, Some(Record { seq: e_seq, doc: e }));
    assert_eq!(store.count(Kind::Deployment).await.unwrap(), 2);
    // Without the conflicting write, the same writes apply: their expectations still hold.
    let outcomes = commit(&store, batch[..3].to_vec()).await;
    let [
        Outcome::Written { seq: a2_seq },
        Outcome::Deleted { seq: b_removal },
        Outcome::Written { seq: c_seq },
    ] = outcomes[..]
    else {
        panic!("expected Written, Deleted, Written: {outcomes:?}")
    };
    assert_eq!(
        store.changes(head_before, 10).await.unwrap(),
        [
            Change {
                seq: a2_seq,
                deleted: false,
                doc: a2
            },
            Change {
                seq: b_removal,
                deleted: true,
                doc: b
            },
            Change {
                seq: c_seq,
                deleted: false,
                doc: c
            },
        ]
    );
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), c_seq);
}

/// A write sees the earlier writes of its batch, compare-and-swap included.
pub async fn cas_writes_see_their_batch<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let d = |status: &str| deployment("c", "d", "web", status);
    let pending = write_one(&store, put(&d("PENDING"), Expect::Absent)).await;
    // A removal earlier in the batch makes the key absent for a later put.
    let outcomes = commit(
        &store,
        vec![
            Write::Remove {
                key: d("").key,
                expect: pending,
            },
            Write::Park(letter("p")),
            put(&d("RESTARTED"), Expect::Absent),
            up(&task("c", "d", 1, "RUNNING")),
        ],
    )
    .await;
    let [
        Outcome::Deleted { seq: removal },
        Outcome::Parked { .. },
        Outcome::Written { seq: restarted },
        Outcome::Written { seq: task_seq },
    ] = outcomes[..]
    else {
        panic!("expected Deleted, Parked, Written, Written: {outcomes:?}")
    };
    assert_eq!(
        get(&store, &d("").key).await,
        Some(Record {
            seq: restarted,
            doc: d("RESTARTED")
        })
    );
    // Same cluster and id, other kind: a separate entity.
    assert_eq!(
        get(&store, &task_key("c", "d")).await.map(|r| r.seq),
        Some(task_seq)
    );
    assert_eq!(store.count(Kind::Deployment).await.unwrap(), 1);
    assert_eq!(
        seqs(&store.changes(pending, 10).await.unwrap()),
        [removal, restarted, task_seq]
    );
    // A put earlier in the batch moves the key's seq: a later write expecting the seq read before
    // the batch conflicts with the one the put got, and nothing applies. (A caller cannot know a seq
    // its batch assigns, so no write of a batch expects one.)
    let head_before = head(&store).await;
    for later in [
        put(&d("AGAIN"), Expect::Seq(restarted)),
        Write::Remove {
            key: d("").key,
            expect: restarted,
        },
        put(&d("AGAIN"), Expect::Absent),
    ] {
        let case = format!("{later:?}");
        let (key, _, found) = conflict(&store, vec![put(&d("RUNNING"), Expect::Seq(restarted)), later]).await;
        assert_eq!(key, d("").key, "{case}");
        assert!(
            found.is_some_and(|seq| seq > head_before),
            "{case}: found {found:?}, expected the seq of the put before it (after {head_before})"
        );
        assert_eq!(head(&store).await, head_before, "{case}");
    }
    assert_eq!(get(&store, &d("").key).await.map(|r| r.seq), Some(restarted));
    // A put absent earlier in the batch makes the key present for a later one.
    let other = deployment("c", "e", "web", "PENDING");
    let (key, expected, found) = conflict(
        &store,
        vec![put(&other, Expect::Absent), put(&other, Expect::Absent)],
    )
    .await;
    assert_eq!((key, expected), (other.key.clone(), Expect::Absent));
    assert!(found.is_some_and(|seq| seq > head_before), "found {found:?}");
    assert_eq!(head(&store).await, head_before);
    assert_eq!(get(&store, &other.key).await, None);
}
/// A removed scheduler document is put again, expecting it absent, in a later batch; the log has the
/// put, the removal and the new put, in order, each with the document as it was or became.
pub async fn remove_then_put_absent_in_later_batches<S: Store, G>(
    make: impl AsyncFn(StoreOptions) -> (S, G),
) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let pairs = [
        (
            deployment("c", "d", "web", "PENDING"),
            deployment("c", "d", "web", "RESTARTED"),
        ),
        (
            environment("c", "web", "ACTIVE"),
            environment("c", "web", "DELETING"),
        ),
        (revision("c", "web", 1), revision("c", "web", 1)),
    ];
    for (first, second) in pairs {
        let kind = first.key.kind;
        let start = head(&store).await;
        let put_seq = write_one(&store, put(&first, Expect::Absent)).await;
        let removal = delete_one(
            &store,
            Write::Remove {
                key: first.key.clone(),
                expect: put_seq,
            },
        )
        .await;
        assert_eq!(get(&store, &first.key).await, None, "{kind}");
        assert_eq!(store.count(kind).await.unwrap(), 0, "{kind}");
        let again = write_one(&store, put(&second, Expect::Absent)).await;
        assert_eq!(
            get(&store, &second.key).await,
            Some(Record {
                seq: again,
                doc: second.clone()
            }),
            "{kind}"
        );
        assert_eq!(store.count(kind).await.unwrap(), 1, "{kind}");
        assert_eq!(
            store.changes(start, 10).await.unwrap(),
            [
                Change {
                    seq: put_seq,
                    deleted: false,
                    doc: first.clone()
                },
                Change {
                    seq: removal,
                    deleted: true,
                    doc: first.clone()
                },
                Change {
                    seq: again,
                    deleted: false,
                    doc: second.clone()
                },
            ],
            "{kind}"
        );
        // And once more: removed expecting the new put's seq, put again.
        let removal = delete_one(
            &store,
            Write::Remove {
                key: second.key.clone(),
                expect: again,
            },
        )
        .await;
        let last = write_one(&store, put(&first, Expect::Absent)).await;
        assert_eq!(
            store.changes(again, 10).await.unwrap(),
            [
                Change {
                    seq: removal,
                    deleted: true,
                    doc: second
                },
                Change {
                    seq: last,
                    deleted: false,
                    doc: first
                },
            ],
            "{kind}"
        );
    }
}

/// A revision is written once (`Expect::Absent`) and removed, never replaced; a batch trying to
/// replace one is refused whole.
pub async fn revisions_are_immutable<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let r = revision("c", "web", 1);
    let seq = write_one(&store, put(&r, Expect::Absent)).await;
    assert_eq!(get(&store, &r.key).await.expect("written").seq, seq);
    // A seq the revision never had.
    let other = write_one(
        &store,
        put(&deployment("c", "d", "web", "PENDING"), Expect::Absent),
    )
    .await;
    let head_before = head(&store).await;
    let changed = Document {
        status: "CHANGED".into(),
        ..r.clone()
    };
    let e = environment("c", "web", "ACTIVE");
    for expect in [Expect::Seq(seq), Expect::Seq(other)] {
        match store
            .apply(vec![put(&e, Expect::Absent), put(&changed, expect)])
            .await
        {
            Err(error @ StoreError::ImmutableRevision { .. }) => {
                assert!(error.to_string().contains("new revision"), "{error}")
            }
            other => panic!("{expect:?}: expected ImmutableRevision, got {other:?}"),
        }
        assert_eq!(head(&store).await, head_before);
        assert_eq!(get(&store, &e.key).await, None, "nothing of the batch applied");
        assert_eq!(get(&store, &r.key).await.map(|x| x.doc), Some(r.clone()));
    }
    // Removing one is how an environment's deletion ends.
    delete_one(
        &store,
        Write::Remove {
            key: r.key.clone(),
            expect: seq,
        },
    )
    .await;
    assert_eq!(get(&store, &r.key).await, None);
}

pub async fn wrong_write_refused<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let e = environment("c", "web", "ACTIVE");
    let r = revision("c", "web", 1);
    let d = deployment("c", "d", "web", "PENDING");
    let t = task("c", "t", 1, "RUNNING");
    let i = doc(Kind::Instance, "c", "i", 1, "ACTIVE", None, "i");
    let intent = doc(Kind::Intent, "c", "d/i", 0, "PENDING", Some("d"), "{}");
    let failure = doc(Kind::Failure, "c", "d/i", 0, "FAILED", Some("d"), "{}");
    // The refused writes, given the seqs of the task and the instance (so that a Put or Remove of
    // them would otherwise match).
    let refused = |t_seq: u64, i_seq: u64| -> [(Write, &'static str, Kind); 11] {
        [
            (up(&d), "Upsert", Kind::Deployment),
            (up(&intent), "Upsert", Kind::Intent),
            (Write::observe(failure.clone()), "Observe", Kind::Failure),
            (up(&e), "Upsert", Kind::Environment),
            (Write::observe(r.clone()), "Observe", Kind::Revision),
            (delete_any(e.key.clone()), "Delete", Kind::Environment),
            (delete_any(d.key.clone()), "Delete", Kind::Deployment),
            (put(&t, Expect::Absent), "Put", Kind::Task),
            (put(&i, Expect::Seq(i_seq)), "Put", Kind::Instance),
            (
                Write::Remove {
                    key: t.key.clone(),
                    expect: t_seq,
                },
                "Remove",
                Kind::Task,
            ),
            (
                Write::Remove {
                    key: i.key.clone(),
                    expect: i_seq,
                },
                "Remove",
                Kind::Instance,
            ),
        ]
    };
    for n in 0..refused(0, 0).len() {
        let (store, _guard) = make(StoreOptions::default()).await;
        // Present, so that a Delete or Remove would have something to act on.
        let outcomes = commit(
            &store,
            vec![up(&t), up(&i), put(&d, Expect::Absent), put(&e, Expect::Absent)],
        )
        .await;
        let (write, name, kind) = refused(written(outcomes[0]), written(outcomes[1]))[n].clone();
        let head_before = head(&store).await;
        let batch = vec![
            put(&r, Expect::Absent),
            up(&task("c", "t", 2, "STOPPED")),
            Write::Park(letter("p")),
            write.clone(),
        ];
        match store.apply(batch).await {
            Err(
                error @ StoreError::WrongWrite {
                    write: got,
                    kind: got_kind,
                },
            ) => {
                assert_eq!((got, got_kind), (name, kind), "{write:?}");
                let message = error.to_string();
                assert!(
                    message.contains(name) && message.contains(kind.name()),
                    "{message}"
                );
            }
            other => panic!("{write:?}: expected WrongWrite, got {other:?}"),
        }
        assert_eq!(head(&store).await, head_before, "{write:?}");
        assert_eq!(get(&store, &r.key).await, None, "{write:?}");
        assert_eq!(get(&store, &t.key).await.map(|r| r.doc), Some(t.clone()));
        assert_eq!(
            store.dead_letters(PageRequest::default()).await.unwrap().items,
            []
        );
        for kind in Kind::ALL {
            let want = u64::from(matches!(
                kind,
                Kind::Task | Kind::Instance | Kind::Environment | Kind::Deployment
            ));
            assert_eq!(store.count(kind).await.unwrap(), want, "{write:?} {kind}");
        }
    }
}

/// Listings, indexes, ids, clusters and counts work for scheduler documents as for ECS entities, and
/// kinds stay apart.
pub async fn scheduler_documents_listed<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    // Environment names that prefix one another (`web`, `web2`), likewise statuses (`RUN`, `RUNNING`).
    let docs = [
        environment("c1", "web", "ACTIVE"),
        environment("c1", "web2", "ACTIVE"),
        environment("c2", "api", "DELETING"),
        revision("c1", "web", 2),
        revision("c1", "web", 10),
        revision("c1", "web2", 1),
        revision("c2", "api", 1),
        deployment("c1", "d-1", "web", "RUNNING"),
        deployment("c1", "d-2", "web", "PENDING"),
        deployment("c1", "d-3", "web2", "RUNNING"),
        deployment("c1", "d-4", "web", "RUN"),
        deployment("c10", "d-5", "web", "RUNNING"),
        deployment("c2", "d-6", "api", "COMPLETED"),
        deployment("c2", "d-7", "web", "RUNNING"),
        // An ECS task with a deployment's cluster, id, status and startedBy.
        doc(Kind::Task, "c1", "d-1", 1, "RUNNING", Some("web"), "task"),
    ];
    let outcomes = apply(
        &store,
        docs.iter()
            .rev()
            .map(|d| {
                if d.key.kind.is_ecs() {
                    up(d)
                } else {
                    put(d, Expect::Absent)
                }
            })
            .collect(),
    )
    .await;
    let mut records: Vec<Record> = docs
        .iter()
        .rev()
        .zip(outcomes)
        .map(|(doc, outcome)| Record {
            seq: written(outcome),
            doc: doc.clone(),
        })
        .collect();
    assert_eq!(
        Key::revision(cluster("c1"), "web", 7).id,
        "web/0000000007",
        "revision ids sort by number"
    );

    let clusters = [None, Some("c1"), Some("c10"), Some("c2"), Some("c3")];
    let statuses = [
        None,
        Some("RUNNING"),
        Some("RUN"),
        Some("PENDING"),
        Some("ACTIVE"),
        Some("NOPE"),
    ];
    let environments = [None, Some("web"), Some("web2"), Some("api"), Some("we")];
    let check = async |store: &S, records: &[Record], when: &str| {
        for kind in Kind::ALL {
            for c in clusters {
                for s in statuses {
                    for env in environments {
                        let f = filter(c, s, env);
                        let want = expected(records, kind, &f);
                        assert_eq!(list_all(store, kind, &f).await, want, "{when}: {kind} {f:?}");
                        assert_eq!(list_paged(store, kind, &f, 2).await, want, "{when}: {kind} {f:?}");
                    }
                }
                if let Some(c) = c {
                    let want: Vec<(String, u64)> = expected(records, kind, &filter(Some(c), None, None))
                        .into_iter()
                        .map(|r| (r.doc.key.id, r.seq))
                        .collect();
                    assert_eq!(
                        store.ids(kind, &cluster(c)).await.unwrap(),
                        want,
                        "{when}: {kind} {c}"
                    );
                }
            }
            let mut want_clusters: Vec<ClusterName> = expected(records, kind, &Filter::default())
                .into_iter()
                .map(|r| r.doc.key.cluster)
                .collect();
            want_clusters.dedup();
            assert_eq!(
                store.clusters(kind).await.unwrap(),
                want_clusters,
                "{when}: {kind}"
            );
            let count = records.iter().filter(|r| r.doc.key.kind == kind).count() as u64;
            assert_eq!(store.count(kind).await.unwrap(), count, "{when}: {kind}");
        }
    };
    check(&store, &records, "loaded").await;
    // The environment's deployments, by index.
    let web: Vec<String> = list_all(&store, Kind::Deployment, &filter(Some("c1"), None, Some("web")))
        .await
        .into_iter()
        .map(|r| r.doc.key.id)
        .collect();
    assert_eq!(web, ["d-1", "d-2", "d-4"]);
    let revisions: Vec<String> = list_all(&store, Kind::Revision, &filter(Some("c1"), None, Some("web")))
        .await
        .into_iter()
        .map(|r| r.doc.key.id)
        .collect();
    assert_eq!(revisions, ["web/0000000002", "web/0000000010"]);

    // A status change moves the index entry; a removal drops it.
    let position = |records: &[Record], id: &str, kind: Kind| {
        records
            .iter()
            .position(|r| r.doc.key.kind == kind && r.doc.key.id == id)
            .expect("in the fixture")
    };
    let d2 = position(&records, "d-2", Kind::Deployment);
    let running = deployment("c1", "d-2", "web", "RUNNING");
    let seq = written(one(&store, put(&running, Expect::Seq(records[d2].seq))).await);
    records[d2] = Record { seq, doc: running };
    let d5 = position(&records, "d-5", Kind::Deployment);
    one(
        &store,
        Write::Remove {
            key: records[d5].doc.key.clone(),
            expect: records[d5].seq,
        },
    )
    .await;
    records.remove(d5);
    let api = position(&records, "api", Kind::Environment);
    one(
        &store,
        Write::Remove {
            key: records[api].doc.key.clone(),
            expect: records[api].seq,
        },
    )
    .await;
    records.remove(api);
    check(&store, &records, "after a put and removes").await;
}

pub async fn scheduler_changes_in_order<S: Store, G>(make: impl AsyncFn(StoreOptions) -> (S, G)) {
    let (store, _guard) = make(StoreOptions::default()).await;
    let mut rx = store.subscribe();
    rx.borrow_and_update();
    let e = environment("c", "web", "ACTIVE");
    let r = revision("c", "web", 1);
    let d = |status: &str| deployment("c", "d", "web", status);
    let t = task("c", "t", 1, "RUNNING");
    let outcomes = commit(&store, vec![put(&e, Expect::Absent), put(&r, Expect::Absent)]).await;
    let [e_seq, r_seq] = [0, 1].map(|i| written(outcomes[i]));
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), r_seq);
    let outcomes = commit(&store, vec![put(&d("PENDING"), Expect::Absent), up(&t)]).await;
    let [pending, t_seq] = [0, 1].map(|i| written(outcomes[i]));
    let running = write_one(&store, put(&d("RUNNING"), Expect::Seq(pending))).await;
    let removal = delete_one(
        &store,
        Write::Remove {
            key: d("").key,
            expect: running,
        },
    )
    .await;
    let again = write_one(&store, put(&d("PENDING"), Expect::Absent)).await;
    let e_removal = delete_one(
        &store,
        Write::Remove {
            key: e.key.clone(),
            expect: e_seq,
        },
    )
    .await;
    assert_eq!(*rx.borrow_and_update(), e_removal);
    let change = |seq, deleted, doc: &Document| Change {
        seq,
        deleted,
        doc: doc.clone(),
    };
    let want = [
        change(e_seq, false, &e),
        change(r_seq, false, &r),
        change(pending, false, &d("PENDING")),
        change(t_seq, false, &t),
        change(running, false, &d("RUNNING")),
        change(removal, true, &d("RUNNING")),
        change(again, false, &d("PENDING")),
        change(e_removal, true, &e),
    ];
    assert_eq!(store.changes(0, 100).await.unwrap(), want);
    // From the beginning and from every change's position, the (up to) two changes after it.
    let positions = std::iter::once(0).chain(want.iter().map(|c| c.seq));
    for (i, after) in positions.enumerate() {
        assert_eq!(
            store.changes(after, 2).await.unwrap(),
            want[i..(i + 2).min(want.len())],
            "after {after}"
        );
    }
}
