//! What only a shared backend can show, on a real etcd: replicas see each other's writes, race each
//! other by compare-and-swap, split batches to etcd's limits, and a former leader writes nothing.

use std::time::Duration;

use blox_store::conformance::{deployment, task};
use blox_store::leader::Leadership;
use blox_store::{EtcdConfig, EtcdStore, Expect, Kind, Outcome, Store, StoreError, StoreOptions, Write};
use blox_testkit::{Etcd, EtcdOptions};

const DEADLINE: Duration = Duration::from_secs(20);

async fn replica(etcd: &Etcd, max_txn_ops: Option<usize>) -> EtcdStore {
    let mut config = EtcdConfig::new(vec![etcd.endpoint()]);
    config.prefix = "/test/".to_owned();
    if let Some(ops) = max_txn_ops {
        config.max_txn_ops = ops;
    }
    EtcdStore::connect(&config, StoreOptions::default())
        .await
        .expect("connects to etcd")
}

/// Waits until `store`'s copy holds the change `seq`.
async fn caught_up(store: &EtcdStore, seq: u64) {
    let mut head = store.subscribe();
    tokio::time::timeout(DEADLINE, head.wait_for(|head| *head >= seq))
        .await
        .expect("the replica catches up in time")
        .expect("the store is open");
}

fn written(outcome: &Outcome) -> u64 {
    match outcome {
        Outcome::Written { seq } => *seq,
        other => panic!("expected a write, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_split_to_etcds_limits_and_cas_batches_do_not() {
    let etcd = Etcd::start_with(EtcdOptions {
        max_txn_ops: Some(16),
        ..EtcdOptions::default()
    })
    .await
    .expect("etcd starts");
    let store = replica(&etcd, Some(16)).await;
    let writes = (0..100)
        .map(|i| Write::Upsert(task("c", &format!("t{i:03}"), 1, "RUNNING")))
        .collect();
    let outcomes = store.apply(writes).await.expect("an ECS batch is split to fit");
    let seqs: Vec<u64> = outcomes.iter().map(written).collect();
    assert!(
        seqs.windows(2).all(|pair| pair[0] < pair[1]),
        "in batch order: {seqs:?}"
    );
    assert_eq!(store.count(Kind::Task).await.unwrap(), 100);

    let head = store.log_bounds().await.unwrap().head;
    let puts = (0..20)
        .map(|i| Write::Put {
            doc: deployment("c", &format!("d{i}"), "env", "IN_PROGRESS"),
            expect: Expect::Absent,
        })
        .collect();
    match store.apply(puts).await {
        Err(error @ StoreError::TooLarge { .. }) => assert!(error.is_about_the_writes()),
        other => panic!("a compare-and-swap batch is one transaction or refused, got {other:?}"),
    }
    assert_eq!(
        store.log_bounds().await.unwrap().head,
        head,
        "nothing of it applied"
    );
    assert_eq!(store.count(Kind::Deployment).await.unwrap(), 0);

    // A batch of removals only (the scheduler's clean-up) is split like an ECS batch.
    let mut removals = Vec::new();
    for i in 0..20 {
        let doc = deployment("c", &format!("d{i}"), "env", "IN_PROGRESS");
        let key = doc.key.clone();
        let outcome = store
            .apply(vec![Write::Put {
                doc,
                expect: Expect::Absent,
            }])
            .await
            .unwrap();
        removals.push(Write::Remove {
            key,
            expect: written(&outcome[0]),
        });
    }
    let outcomes = store.apply(removals).await.expect("removals are split to fit");
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Deleted { .. })),
        "{outcomes:?}"
    );
    assert_eq!(store.count(Kind::Deployment).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_see_each_others_writes_and_race_by_compare_and_swap() {
    let etcd = Etcd::start().await.expect("etcd starts");
    let (a, b) = (replica(&etcd, None).await, replica(&etcd, None).await);
    let doc = deployment("c", "d1", "env", "IN_PROGRESS");
    let first = written(
        &a.apply(vec![Write::Put {
            doc: doc.clone(),
            expect: Expect::Absent,
        }])
        .await
        .unwrap()[0],
    );
    // Right away, before b's copy may have it: b's decision is taken again on a current copy.
    let second = b
        .apply(vec![Write::Put {
            doc: doc.clone(),
            expect: Expect::Seq(first),
        }])
        .await
        .expect("a compare-and-swap on what another replica wrote succeeds");
    let second = written(&second[0]);
    assert!(second > first);
    caught_up(&a, second).await;
    assert_eq!(a.get(&doc.key).await.unwrap().unwrap().seq, second);

    // Both replicas expect the same seq at once: exactly one wins.
    let (ra, rb) = tokio::join!(
        a.apply(vec![Write::Put {
            doc: doc.clone(),
            expect: Expect::Seq(second),
        }]),
        b.apply(vec![Write::Put {
            doc: doc.clone(),
            expect: Expect::Seq(second),
        }]),
    );
    let wins = [&ra, &rb].iter().filter(|result| result.is_ok()).count();
    assert_eq!(wins, 1, "{ra:?} {rb:?}");
    assert!(
        [&ra, &rb]
            .iter()
            .any(|result| matches!(result, Err(StoreError::Conflict { .. })))
    );

    // b's change log holds a's changes, in order, with nothing repeated.
    let head = a.log_bounds().await.unwrap().head;
    caught_up(&b, head).await;
    let seqs: Vec<u64> = b.changes(0, 100).await.unwrap().iter().map(|c| c.seq).collect();
    assert_eq!(
        seqs,
        a.changes(0, 100)
            .await
            .unwrap()
            .iter()
            .map(|c| c.seq)
            .collect::<Vec<_>>()
    );
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_former_leader_writes_nothing() {
    let etcd = Etcd::start().await.expect("etcd starts");
    let (a, b) = (replica(&etcd, None).await, replica(&etcd, None).await);
    let clock = || 1_000;
    let (la, lb) = (
        a.leadership("a".to_owned(), Duration::from_secs(2), clock),
        b.leadership("b".to_owned(), Duration::from_secs(2), clock),
    );
    let term_a = la.acquire().await.expect("a leads");
    assert!(term_a.guard.holds());
    term_a
        .store
        .apply(vec![Write::Upsert(task("c", "t1", 1, "RUNNING"))])
        .await
        .expect("the leader writes");
    let mut leader_b = lb.leader();
    tokio::time::timeout(
        DEADLINE,
        leader_b.wait_for(|leader| leader.as_ref().is_some_and(|l| l.id == "a")),
    )
    .await
    .expect("b learns that a leads")
    .unwrap();
    let b_leads = tokio::spawn(async move { (lb.acquire().await, lb) });

    // The leadership key goes behind a's back (as when its lease expires while it is paused): b
    // takes over, and a's next write is refused by etcd, in the same transaction.
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    client.delete("/test/leader", None).await.unwrap();
    let (term_b, _lb) = tokio::time::timeout(DEADLINE, b_leads)
        .await
        .expect("b leads in time")
        .unwrap();
    let term_b = term_b.expect("b leads");
    let head = a.log_bounds().await.unwrap().head;
    let refused = term_a
        .store
        .apply(vec![Write::Upsert(task("c", "t2", 1, "RUNNING"))])
        .await;
    assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
    assert!(!term_a.guard.holds(), "a knows its term ended");
    term_b
        .store
        .apply(vec![Write::Upsert(task("c", "t3", 1, "RUNNING"))])
        .await
        .expect("the new leader writes");
    let after = term_b.store.log_bounds().await.unwrap().head;
    caught_up(&a, after).await;
    let ids: Vec<String> = a
        .ids(Kind::Task, &blox_store::conformance::cluster("c"))
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(
        !ids.iter().any(|id| id.ends_with("t2")),
        "the fenced write is nowhere: {ids:?}"
    );
    assert!(after > head);
    // API writes (unfenced) go on from any replica.
    a.apply(vec![Write::Upsert(task("c", "t4", 1, "RUNNING"))])
        .await
        .expect("a follower's own writes are not fenced");
}

/// TLS with a client certificate, then user/password auth: the store connects through both.
#[tokio::test(flavor = "multi_thread")]
async fn connects_over_tls_with_a_client_certificate_and_with_a_password() {
    let dir = tempfile::tempdir().unwrap();
    // One self-signed certificate is etcd's, its CA and the client's (its own trust anchor).
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("a certificate");
    let (cert, key) = (certified.cert.pem(), certified.signing_key.serialize_pem());
    let (cert_path, key_path) = (dir.path().join("etcd.pem"), dir.path().join("etcd.key"));
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    let path = |p: &std::path::Path| p.display().to_string();
    let https = "https://127.0.0.1:0".to_owned();
    let etcd = Etcd::start_with(EtcdOptions {
        extra_args: vec![
            "--listen-client-urls".into(),
            https.clone(),
            "--advertise-client-urls".into(),
            https,
            "--cert-file".into(),
            path(&cert_path),
            "--key-file".into(),
            path(&key_path),
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            path(&cert_path),
        ],
        ..EtcdOptions::default()
    })
    .await
    .expect("etcd starts with TLS");
    let endpoint = etcd.endpoint().replacen("http://", "https://", 1);
    let mut config = EtcdConfig::new(vec![endpoint.clone()]);
    config.tls = Some(blox_store::EtcdTls {
        ca_pem: Some(cert.clone().into_bytes()),
        identity_pem: Some((cert.clone().into_bytes(), key.clone().into_bytes())),
    });
    let store = EtcdStore::connect(&config, StoreOptions::default())
        .await
        .expect("connects over TLS with a client certificate");
    store
        .apply(vec![Write::Upsert(task("c", "t1", 1, "RUNNING"))])
        .await
        .expect("writes over TLS");
    drop(store);

    // Auth on: a root user with a password.
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(cert.clone()))
        .identity(etcd_client::Identity::from_pem(cert.clone(), key.clone()));
    let mut admin = etcd_client::Client::connect(
        [endpoint.clone()],
        Some(etcd_client::ConnectOptions::new().with_tls(tls)),
    )
    .await
    .unwrap();
    admin.user_add("root", "s3cret-password", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();
    let denied = EtcdStore::connect(&config, StoreOptions::default()).await;
    assert!(denied.is_err(), "without the password, auth refuses");
    config.user = Some(("root".to_owned(), "s3cret-password".to_owned()));
    let store = EtcdStore::connect(&config, StoreOptions::default())
        .await
        .expect("connects with the password");
    assert_eq!(
        store.count(Kind::Task).await.unwrap(),
        1,
        "the copy holds what was written"
    );
    store
        .apply(vec![Write::Upsert(task("c", "t2", 1, "RUNNING"))])
        .await
        .expect("writes with the password");
}
