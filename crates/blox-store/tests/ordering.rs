//! Events in any order, duplicated, in any batches: the store ends in the state of applying them in
//! version order. This is what lets blox consume an unordered, at-least-once queue.

use std::collections::BTreeMap;

use blox_store::conformance::doc;
use blox_store::{Document, Filter, Kind, MemStore, PageRequest, RedbStore, Store, StoreOptions, Write};
use proptest::prelude::*;

const STATUSES: [&str; 4] = ["PROVISIONING", "PENDING", "RUNNING", "STOPPED"];

/// Every version of a handful of tasks: task `i` has versions `1..=n_i`, each with its own status.
fn histories() -> impl Strategy<Value = Vec<Document>> {
    prop::collection::vec(
        prop::collection::vec((0..STATUSES.len(), any::<bool>()), 1..6),
        1..5,
    )
    .prop_map(|tasks| {
        let mut docs = Vec::new();
        for (i, versions) in tasks.into_iter().enumerate() {
            for (v, (status, service)) in versions.into_iter().enumerate() {
                let version = v as u64 + 1;
                let status = STATUSES[status];
                let cluster = if i % 2 == 0 { "even" } else { "odd" };
                let started_by = service.then_some("svc");
                let body = format!("{{\"task\":{i},\"version\":{version},\"lastStatus\":\"{status}\"}}");
                docs.push(doc(
                    Kind::Task,
                    cluster,
                    &format!("t{i}"),
                    version,
                    status,
                    started_by,
                    &body,
                ));
            }
        }
        docs
    })
}

/// The histories, each write once plus random duplicates, shuffled, and cut into batches.
fn scenario() -> impl Strategy<Value = (Vec<Document>, Vec<Vec<Document>>)> {
    histories()
        .prop_flat_map(|docs| {
            let n = docs.len();
            (Just(docs), prop::collection::vec(0..n, 0..n * 2))
        })
        .prop_flat_map(|(docs, duplicates)| {
            let mut writes = docs.clone();
            writes.extend(duplicates.into_iter().map(|i| docs[i].clone()));
            let n = writes.len();
            (
                Just(docs),
                Just(writes).prop_shuffle(),
                prop::collection::vec(1..=n, 1..=n),
            )
        })
        .prop_map(|(docs, writes, cuts)| {
            let mut batches = Vec::new();
            let mut rest = writes.as_slice();
            for cut in cuts {
                if rest.is_empty() {
                    break;
                }
                let (batch, tail) = rest.split_at(cut.min(rest.len()));
                batches.push(batch.to_vec());
                rest = tail;
            }
            if !rest.is_empty() {
                batches.push(rest.to_vec());
            }
            (docs, batches)
        })
}

async fn check(store: impl Store, docs: Vec<Document>, batches: Vec<Vec<Document>>) {
    for batch in batches {
        store
            .apply(batch.into_iter().map(Write::Upsert).collect())
            .await
            .unwrap();
    }
    // In version order, each task's last version wins.
    let mut sorted = docs.clone();
    sorted.sort_by_key(|d| d.version);
    let mut want: BTreeMap<(String, String), Document> = BTreeMap::new();
    for d in sorted {
        want.insert((d.key.cluster.to_string(), d.key.id.clone()), d);
    }
    for d in want.values() {
        let got = store.get(&d.key).await.unwrap().expect("every task is stored");
        assert_eq!(got.doc, *d);
    }
    // One change per version: duplicates and out-of-order versions change nothing.
    let bounds = store.log_bounds().await.unwrap();
    assert!(bounds.head <= docs.len() as u64);
    assert_eq!(store.count(Kind::Task).await.unwrap(), want.len() as u64);
    // The indexes agree with the entities.
    for status in STATUSES {
        let filter = Filter {
            status: Some(status.to_owned()),
            ..Filter::default()
        };
        let listed = store
            .list(Kind::Task, &filter, PageRequest::default())
            .await
            .unwrap()
            .items;
        let expected: Vec<&Document> = want.values().filter(|d| d.status == status).collect();
        assert_eq!(
            listed.iter().map(|r| &r.doc).collect::<Vec<_>>(),
            expected,
            "status {status}"
        );
    }
    let filter = Filter {
        started_by: Some("svc".to_owned()),
        ..Filter::default()
    };
    let listed = store
        .list(Kind::Task, &filter, PageRequest::default())
        .await
        .unwrap()
        .items;
    let expected: Vec<&Document> = want.values().filter(|d| d.started_by.is_some()).collect();
    assert_eq!(listed.iter().map(|r| &r.doc).collect::<Vec<_>>(), expected);
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

proptest! {
    #[test]
    fn any_order_any_duplicates_mem((docs, batches) in scenario()) {
        block_on(check(MemStore::new(StoreOptions::default()), docs, batches));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_order_any_duplicates_redb((docs, batches) in scenario()) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("blox.redb"), StoreOptions::default()).unwrap();
        block_on(check(store, docs, batches));
    }
}
