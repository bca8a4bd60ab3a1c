//! The conformance suite against every backend (memory, redb, etcd), plus what only a durable backend can show.

use blox_store::conformance::{deployment, environment, letter, put, task};
use blox_store::{
    Expect, Filter, Kind, LogBounds, MemStore, Outcome, PageRequest, Record, RedbStore, Store, StoreError,
    StoreOptions, Write,
};

mod mem {
    blox_store::conformance_tests!(async |options| (blox_store::MemStore::new(options), ()));
}

mod etcd {
    // Each store gets an etcd of its own (started in about 0.1 s), killed when the case ends.
    blox_store::conformance_tests!(async |options| {
        let etcd = blox_testkit::Etcd::start()
            .await
            .expect("etcd starts (apt-get install etcd-server)");
        let config = blox_store::EtcdConfig::new(vec![etcd.endpoint()]);
        let store = blox_store::EtcdStore::connect(&config, options)
            .await
            .expect("connects to etcd");
        (store, etcd)
    });
}

mod redb {
    blox_store::conformance_tests!(async |options| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = blox_store::RedbStore::open(&dir.path().join("blox.redb"), options).expect("open");
        (store, dir)
    });
}

mod log {
    blox_store::conformance_tests!(async |options| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = blox_store::LogStore::open(&dir.path().join("store"), options).expect("open");
        (store, dir)
    });
}

/// When the test's deletion happened, in ms since the epoch.
const DELETED_AT: u64 = 1_000;

#[tokio::test]
async fn redb_reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    // A parent directory that does not exist yet is created.
    let path = dir.path().join("nested").join("blox.redb");
    let options = StoreOptions {
        change_log_retention: 3,
        dead_letter_retention: 10,
        tombstone_retention: std::time::Duration::from_secs(3_600),
    };
    let a = task("c", "a", 1, "RUNNING");
    let (records, changes, letters) = {
        let store = RedbStore::open(&path, options).unwrap();
        let outcomes = store
            .apply(vec![
                Write::Upsert(a.clone()),
                Write::Upsert(task("c", "b", 1, "RUNNING")),
                Write::Upsert(task("c2", "c", 1, "STOPPED")),
                Write::Park(letter("one")),
                Write::Park(letter("two")),
            ])
            .await
            .unwrap();
        assert_eq!(outcomes[4], Outcome::Parked { id: 2 });
        store
            .apply(vec![Write::Delete {
                key: a.key.clone(),
                unchanged_since: 1,
                at_ms: DELETED_AT,
            }])
            .await
            .unwrap();
        let records = store
            .list(Kind::Task, &Default::default(), PageRequest::default())
            .await
            .unwrap();
        let changes = store.changes(1, 100).await.unwrap();
        let letters = store.dead_letters(PageRequest::default()).await.unwrap();
        (records, changes, letters)
    };

    let store = RedbStore::open(&path, options).unwrap();
    assert_eq!(*store.subscribe().borrow(), 4, "the head is read back on open");
    assert_eq!(
        store.log_bounds().await.unwrap(),
        LogBounds {
            oldest_resumable: 1,
            head: 4
        }
    );
    assert_eq!(
        store
            .list(Kind::Task, &Default::default(), PageRequest::default())
            .await
            .unwrap(),
        records
    );
    assert_eq!(store.changes(1, 100).await.unwrap(), changes);
    assert_eq!(store.dead_letters(PageRequest::default()).await.unwrap(), letters);
    assert_eq!(store.count(Kind::Task).await.unwrap(), 2);
    assert_eq!(store.clusters(Kind::Task).await.unwrap().len(), 2);
    // The tombstone survived: the deleted version stays deleted.
    assert_eq!(
        store.apply(vec![Write::Upsert(a.clone())]).await.unwrap(),
        [Outcome::Stale]
    );
    // Sequence numbers and dead-letter ids continue.
    let outcomes = store
        .apply(vec![
            Write::Upsert(task("c", "d", 1, "RUNNING")),
            Write::Park(letter("three")),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes, [Outcome::Written { seq: 5 }, Outcome::Parked { id: 3 }]);

    // Scheduler documents, their sequence numbers, indexes and counts survive too.
    let web = environment("c", "web", "ACTIVE");
    let d1 = deployment("c", "d-1", "web", "RUNNING");
    let d2 = deployment("c", "d-2", "web", "PENDING");
    let outcomes = store
        .apply(vec![
            put(&web, Expect::Absent),
            put(&d1, Expect::Absent),
            put(&d2, Expect::Absent),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes[2], Outcome::Written { seq: 8 });
    store
        .apply(vec![Write::Remove {
            key: d2.key.clone(),
            expect: 8,
        }])
        .await
        .unwrap();
    drop(store);

    let store = RedbStore::open(&path, options).unwrap();
    assert_eq!(store.log_bounds().await.unwrap().head, 9);
    assert_eq!(
        store.get(&d1.key).await.unwrap(),
        Some(Record {
            seq: 7,
            doc: d1.clone()
        })
    );
    assert_eq!(store.get(&d2.key).await.unwrap(), None);
    let by_environment = Filter {
        started_by: Some("web".into()),
        ..Filter::default()
    };
    let listed = store
        .list(Kind::Deployment, &by_environment, PageRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.items, [Record { seq: 7, doc: d1 }]);
    assert_eq!(store.count(Kind::Deployment).await.unwrap(), 1);
    assert_eq!(store.count(Kind::Environment).await.unwrap(), 1);
    assert!(matches!(
        store.apply(vec![put(&web, Expect::Absent)]).await,
        Err(StoreError::Conflict { found: Some(6), .. })
    ));
    let outcomes = store
        .apply(vec![
            put(&web, Expect::Seq(6)),
            put(&d2, Expect::Absent),
            Write::Upsert(task("c", "e", 1, "RUNNING")),
        ])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            Outcome::Written { seq: 10 },
            Outcome::Written { seq: 11 },
            Outcome::Written { seq: 12 }
        ]
    );
    drop(store);

    // The tombstone of `a` outlived its deletion's change (long trimmed) by its time, which survives
    // a reopen: it goes once a deletion an hour later is given.
    let store = RedbStore::open(&path, options).unwrap();
    let delete_nothing_at = |at_ms| Write::Delete {
        key: task("c", "nothing", 1, "RUNNING").key,
        unchanged_since: u64::MAX,
        at_ms,
    };
    store
        .apply(vec![delete_nothing_at(DELETED_AT + 3_599_999)])
        .await
        .unwrap();
    assert_eq!(
        store.apply(vec![Write::Upsert(a.clone())]).await.unwrap(),
        [Outcome::Stale]
    );
    drop(store);
    let store = RedbStore::open(&path, options).unwrap();
    store
        .apply(vec![delete_nothing_at(DELETED_AT + 3_600_000)])
        .await
        .unwrap();
    assert_eq!(
        store.apply(vec![Write::Upsert(a)]).await.unwrap(),
        [Outcome::Written { seq: 13 }]
    );
}

#[tokio::test]
async fn redb_file_is_exclusive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blox.redb");
    let _store = RedbStore::open(&path, StoreOptions::default()).unwrap();
    let error = RedbStore::open(&path, StoreOptions::default()).unwrap_err();
    assert!(error.to_string().contains("redb"), "{error}");
}

#[tokio::test]
async fn stores_are_shareable() {
    // What the server does: one store behind an `Arc<dyn Store>`, used from several tasks.
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(MemStore::new(StoreOptions::default()));
    let mut handles = Vec::new();
    for i in 0..4 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            store
                .apply(vec![Write::Upsert(task("c", &format!("t{i}"), 1, "RUNNING"))])
                .await
                .unwrap()
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    assert_eq!(store.log_bounds().await.unwrap().head, 4);
}
