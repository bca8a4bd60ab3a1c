//! Ingestion and reconciliation against in-process fakes of the queue and of ECS (the wire-level
//! versions of these tests, against moto, live in the `blox` crate).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use blox_aws::{
    EcsError, EcsErrorKind, EcsReader, EventSource, ListPage, Listing, Message, QueueDepth, SourceError,
};
use blox_model::{ClusterName, ContainerInstance, Task};
use blox_server::ingest::Mirrored;
use blox_server::{IngestOptions, Ingestor, ReadinessState, ReconcileOptions, Reconciler};
use blox_store::{
    Change, DeadLetter, Filter, Key, Kind, LogBounds, MemStore, Outcome, Page, PageRequest, Record, Store,
    StoreError, StoreOptions, Write,
};
use blox_testkit::{entities, instance_event, task_event, wait_until};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use blox_testkit::entities::ACCOUNT;

fn task(cluster: &str, id: &str, status: &str, version: u64) -> Task {
    Task {
        last_status: status.into(),
        version,
        ..entities::task(cluster, id)
    }
}

fn instance(cluster: &str, id: &str, status: &str, version: u64) -> ContainerInstance {
    ContainerInstance {
        status: status.into(),
        version,
        ..entities::instance(cluster, id)
    }
}

fn name(cluster: &str) -> ClusterName {
    ClusterName::new(cluster).unwrap()
}

/// A queue in memory that remembers what was deleted.
#[derive(Default)]
struct FakeQueue {
    waiting: Mutex<VecDeque<Message>>,
    deleted: Mutex<Vec<String>>,
}

impl FakeQueue {
    fn push(&self, bodies: impl IntoIterator<Item = String>) {
        let mut waiting = self.waiting.lock().unwrap();
        for body in bodies {
            let n = waiting.len() + self.deleted.lock().unwrap().len();
            waiting.push_back(Message {
                id: format!("m{n}"),
                receipt: format!("r{n}-{}", body.len()),
                body,
                sent_at_ms: Some(0),
            });
        }
    }

    fn deleted(&self) -> usize {
        self.deleted.lock().unwrap().len()
    }
}

#[async_trait]
impl EventSource for FakeQueue {
    async fn receive(&self, max: usize) -> Result<Vec<Message>, SourceError> {
        let batch: Vec<Message> = {
            let mut waiting = self.waiting.lock().unwrap();
            let n = waiting.len().min(max);
            waiting.drain(..n).collect()
        };
        if batch.is_empty() {
            // A long poll that finds nothing.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(batch)
    }

    async fn delete(&self, receipts: &[String]) -> Result<Vec<String>, SourceError> {
        self.deleted.lock().unwrap().extend(receipts.iter().cloned());
        Ok(Vec::new())
    }

    async fn depth(&self) -> Result<QueueDepth, SourceError> {
        Ok(QueueDepth {
            visible: self.waiting.lock().unwrap().len() as u64,
            in_flight: 0,
        })
    }
}

fn ingestor(store: Arc<dyn Store>, queue: Arc<FakeQueue>, clusters: Option<Vec<&str>>) -> Ingestor {
    let options = IngestOptions {
        clusters: clusters.map(|c| c.into_iter().map(name).collect()),
        ..IngestOptions::default()
    };
    Ingestor::new(store, queue, options)
}

fn message(body: String) -> Message {
    Message {
        id: "m".into(),
        receipt: format!("r-{}", body.len()),
        body,
        sent_at_ms: None,
    }
}

#[tokio::test]
async fn a_batch_is_applied_and_then_deleted() {
    let store = Arc::new(MemStore::new(StoreOptions::default()));
    let queue = Arc::new(FakeQueue::default());
    let ingest = ingestor(store.clone(), queue.clone(), None);
    let report = ingest
        .commit(vec![
            message(task_event(&task("prod", "t1", "PENDING", 1), 1)),
            message(task_event(&task("prod", "t1", "RUNNING", 2), 2)),
            message(task_event(&task("prod", "t1", "PENDING", 1), 1)), // late duplicate
            message(instance_event(&instance("prod", "i1", "ACTIVE", 7), 7)),
        ])
        .await
        .unwrap();
    assert_eq!(
        (report.applied, report.stale, report.parked, report.dropped),
        (3, 1, 0, 0)
    );
    assert_eq!(queue.deleted(), 4);
    let stored = store
        .get(&Key::task(name("prod"), task("prod", "t1", "", 0).task_arn))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((stored.doc.version, stored.doc.status.as_str()), (2, "RUNNING"));
}

#[tokio::test]
async fn malformed_messages_are_parked_and_deleted_other_types_dropped() {
    let store = Arc::new(MemStore::new(StoreOptions::default()));
    let queue = Arc::new(FakeQueue::default());
    let ingest = ingestor(store.clone(), queue.clone(), Some(vec!["prod"]));
    let mut no_version: serde_json::Value =
        serde_json::from_str(&task_event(&task("prod", "t2", "RUNNING", 1), 1)).unwrap();
    no_version["detail"].as_object_mut().unwrap().remove("version");
    let report = ingest
        .commit(vec![
            message("this is not json".into()),
            message(no_version.to_string()),
            message(r#"{"detail-type":"ECS Service Action","source":"aws.ecs","detail":{}}"#.into()),
            message(task_event(&task("other", "t3", "RUNNING", 1), 1)), // not in --clusters
            message(task_event(&task("prod", "t4", "RUNNING", 1), 1)),
        ])
        .await
        .unwrap();
    assert_eq!((report.applied, report.parked, report.dropped), (1, 2, 2));
    assert_eq!(queue.deleted(), 5, "every message leaves the queue");
    let parked = store.dead_letters(PageRequest::default()).await.unwrap().items;
    assert_eq!(parked.len(), 2);
    assert!(
        parked[0].reason.contains("detail.version is missing"),
        "{}",
        parked[0].reason
    );
    assert_eq!(parked[0].body, no_version.to_string());
    assert!(
        parked[1].reason.contains("not a JSON EventBridge envelope"),
        "{}",
        parked[1].reason
    );
    assert_eq!(store.count(Kind::Task).await.unwrap(), 1);
}

/// A store in memory that refuses, as an error about the writes, any batch holding a task whose
/// status is `refuse_status` (as the store refuses a NUL it cannot encode, which parsing now catches
/// first), and fails as a backend from its `backend_fails_from`-th apply on (0: at once).
struct FaultyStore {
    inner: MemStore,
    refuse_status: Option<&'static str>,
    backend_fails_from: Option<usize>,
    applies: AtomicUsize,
}

impl FaultyStore {
    fn new(refuse_status: Option<&'static str>, backend_fails_from: Option<usize>) -> FaultyStore {
        FaultyStore {
            inner: MemStore::new(StoreOptions::default()),
            refuse_status,
            backend_fails_from,
            applies: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<Outcome>, StoreError> {
        let call = self.applies.fetch_add(1, Ordering::SeqCst);
        if self.backend_fails_from.is_some_and(|from| call >= from) {
            return Err(StoreError::Backend {
                backend: "test",
                operation: "apply",
                message: "disk full".into(),
            });
        }
        let refused = writes
            .iter()
            .any(|w| matches!(w, Write::Upsert(doc) if Some(doc.status.as_str()) == self.refuse_status));
        if refused {
            return Err(StoreError::InvalidValue { field: "status" });
        }
        self.inner.apply(writes).await
    }
    async fn get(&self, key: &Key) -> Result<Option<Record>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, kind: Kind, filter: &Filter, page: PageRequest) -> Result<Page<Record>, StoreError> {
        self.inner.list(kind, filter, page).await
    }
    async fn ids(&self, kind: Kind, cluster: &ClusterName) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.ids(kind, cluster).await
    }
    async fn clusters(&self, kind: Kind) -> Result<Vec<ClusterName>, StoreError> {
        self.inner.clusters(kind).await
    }
    async fn changes(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.inner.changes(after, limit).await
    }
    async fn log_bounds(&self) -> Result<LogBounds, StoreError> {
        self.inner.log_bounds().await
    }
    fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.subscribe()
    }
    async fn dead_letters(&self, page: PageRequest) -> Result<Page<DeadLetter>, StoreError> {
        self.inner.dead_letters(page).await
    }
    async fn remove_dead_letter(&self, id: u64) -> Result<bool, StoreError> {
        self.inner.remove_dead_letter(id).await
    }
    async fn count(&self, kind: Kind) -> Result<u64, StoreError> {
        self.inner.count(kind).await
    }
}

/// Messages with distinct ids and receipts (`m{n}`, `r{n}`).
fn messages(bodies: impl IntoIterator<Item = String>) -> Vec<Message> {
    bodies
        .into_iter()
        .enumerate()
        .map(|(n, body)| Message {
            id: format!("m{n}"),
            receipt: format!("r{n}"),
            body,
            sent_at_ms: None,
        })
        .collect()
}

#[tokio::test]
async fn nothing_is_deleted_when_the_commit_fails() {
    let store = Arc::new(FaultyStore::new(None, Some(0)));
    let queue = Arc::new(FakeQueue::default());
    let ingest = ingestor(store, queue.clone(), None);
    let result = ingest
        .commit(vec![
            message(task_event(&task("prod", "t1", "RUNNING", 1), 1)),
            message("garbage".into()),
        ])
        .await;
    assert!(result.is_err());
    assert_eq!(queue.deleted(), 0);
}

/// A batch whose commit the store refuses is split until the refused message stands alone: it is
/// parked with the store's reason, every other message commits, and all leave the queue. Cases:
/// (batch size, positions of refused messages).
#[tokio::test]
async fn a_refused_batch_is_split_so_that_the_good_messages_commit_and_the_bad_ones_are_parked() {
    let cases: [(usize, &[usize]); 8] = [
        (10, &[3]),
        (10, &[0]),
        (10, &[9]),
        (10, &[2, 7]),
        (10, &[4, 5]),
        (1, &[0]),
        (2, &[1]),
        (1_000, &[0, 500, 999]),
    ];
    for (size, bad) in cases {
        let store = Arc::new(FaultyStore::new(Some("POISON"), None));
        let queue = Arc::new(FakeQueue::default());
        let ingest = ingestor(store.clone(), queue.clone(), None);
        let bodies = (0..size).map(|n| {
            let status = if bad.contains(&n) { "POISON" } else { "RUNNING" };
            task_event(&task("prod", &format!("t{n}"), status, 1), 1)
        });
        // A message that is not an event, and one of a type blox drops, ride along.
        let batch = messages(
            ["garbage".to_owned(), OTHER_TYPE.to_owned()]
                .into_iter()
                .chain(bodies),
        );
        let report = ingest.commit(batch).await.unwrap();
        let case = format!("{size} with {bad:?}");
        assert_eq!(
            (report.applied, report.parked, report.dropped),
            (size - bad.len(), bad.len() + 1, 1),
            "{case}"
        );
        assert!(report.splits >= 1, "{case}");
        // Each refused message costs at most two applies per halving, and one to park it.
        let bound = 1 + bad.len() * (2 * (usize::BITS - size.leading_zeros()) as usize + 2);
        let applies = store.applies.load(Ordering::SeqCst);
        assert!(applies <= bound, "{case}: {applies} applies > {bound}");
        assert_eq!(
            queue.deleted(),
            size + 2,
            "{case}: every message leaves the queue"
        );
        assert_eq!(
            store.count(Kind::Task).await.unwrap(),
            (size - bad.len()) as u64,
            "{case}"
        );
        let parked = store.dead_letters(PageRequest::default()).await.unwrap().items;
        let refused: Vec<&DeadLetter> = parked
            .iter()
            .filter(|d| {
                d.reason
                    .starts_with("the store refused it: status contains a NUL byte")
            })
            .collect();
        assert_eq!(refused.len(), bad.len(), "{case}: {parked:?}");
        for letter in refused {
            // Message n + 2 is task n.
            let n: usize = letter.message_id.as_deref().unwrap()[1..].parse().unwrap();
            assert!(bad.contains(&(n - 2)), "{case}: {letter:?}");
        }
    }
}

const OTHER_TYPE: &str = r#"{"detail-type":"ECS Service Action","source":"aws.ecs","detail":{}}"#;

/// A large batch is committed in parts while it is parsed (each part what the parser is ahead by):
/// when the backend fails after the first part, exactly the messages of that part leave the queue,
/// a prefix of the batch. (Should the parser have finished before the first commit, that one part
/// is the whole batch.)
#[tokio::test]
async fn a_failure_after_the_first_part_of_a_large_batch_deletes_that_part_only() {
    let store = Arc::new(FaultyStore::new(None, Some(1)));
    let queue = Arc::new(FakeQueue::default());
    let ingest = ingestor(store.clone(), queue.clone(), None);
    let size = 5_000;
    let bodies = (0..size).map(|n| task_event(&task("prod", &format!("t{n}"), "RUNNING", 1), 1));
    let result = ingest.commit(messages(bodies)).await;
    let deleted = queue.deleted.lock().unwrap().clone();
    let committed = store.count(Kind::Task).await.unwrap() as usize;
    assert!(committed > 0, "the first part commits");
    assert_eq!(
        result.is_ok(),
        committed == size,
        "{committed} of {size} committed"
    );
    let expected: Vec<String> = (0..committed).map(|n| format!("r{n}")).collect();
    assert_eq!(deleted, expected, "the committed prefix, and only it, is deleted");
}

/// When the backend fails while a refused batch is being split, the parts committed before stay
/// committed and their messages are deleted; the others stay in the queue (nothing is lost).
#[tokio::test]
async fn a_backend_failure_while_splitting_deletes_only_what_was_committed() {
    // Apply 1 (all 8) is refused; 2 (the first half, good) commits; 3 (the second half) fails.
    let store = Arc::new(FaultyStore::new(Some("POISON"), Some(2)));
    let queue = Arc::new(FakeQueue::default());
    let ingest = ingestor(store.clone(), queue.clone(), None);
    let bodies: Vec<String> = (0..8)
        .map(|n| {
            let status = if n == 6 { "POISON" } else { "RUNNING" };
            task_event(&task("prod", &format!("t{n}"), status, 1), 1)
        })
        .collect();
    assert!(ingest.commit(messages(bodies)).await.is_err());
    assert_eq!(store.count(Kind::Task).await.unwrap(), 4);
    assert_eq!(
        *queue.deleted.lock().unwrap(),
        ["r0", "r1", "r2", "r3"],
        "only the committed half is deleted"
    );
    assert!(
        store
            .dead_letters(PageRequest::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn the_running_ingestor_drains_the_queue_and_stops_cleanly() {
    let store = Arc::new(MemStore::new(StoreOptions::default()));
    let queue = Arc::new(FakeQueue::default());
    queue.push((1..=250).map(|n| task_event(&task("prod", &format!("t{n}"), "RUNNING", 1), 1)));
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(ingestor(store.clone(), queue.clone(), None).run(shutdown.clone()));
    wait_until("all 250 messages deleted", Duration::from_secs(10), || {
        let queue = queue.clone();
        async move { queue.deleted() == 250 }
    })
    .await;
    assert_eq!(store.count(Kind::Task).await.unwrap(), 250);
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("ingestor stops on shutdown")
        .unwrap();
}

/// ECS in memory: clusters of instances and tasks; `failing` clusters answer errors.
#[derive(Default)]
struct FakeEcs {
    instances: Mutex<BTreeMap<String, Vec<ContainerInstance>>>,
    tasks: Mutex<BTreeMap<String, Vec<Task>>>,
    failing: Mutex<Vec<String>>,
    listing_fails: AtomicBool,
    /// Task ARNs ECS's listings leave out while its describes still return them (listings are
    /// eventually consistent: a task just started may not be listed yet).
    unlisted: Mutex<Vec<String>>,
}

impl FakeEcs {
    fn fail(&self, cluster: &str, op: &'static str) -> Result<(), EcsError> {
        if self.failing.lock().unwrap().iter().any(|c| c == cluster) {
            return Err(EcsError {
                operation: op,
                cluster: Some(cluster.into()),
                kind: EcsErrorKind::Throttled,
            });
        }
        Ok(())
    }

    fn known(&self, cluster: &str, op: &'static str) -> Result<(), EcsError> {
        self.fail(cluster, op)?;
        if self.instances.lock().unwrap().contains_key(cluster)
            || self.tasks.lock().unwrap().contains_key(cluster)
        {
            Ok(())
        } else {
            Err(EcsError {
                operation: op,
                cluster: Some(cluster.into()),
                kind: EcsErrorKind::ClusterNotFound,
            })
        }
    }
}

#[async_trait]
impl EcsReader for FakeEcs {
    async fn list_clusters(&self) -> Result<Vec<String>, EcsError> {
        if self.listing_fails.load(Ordering::SeqCst) {
            return Err(EcsError {
                operation: "ListClusters",
                cluster: None,
                kind: EcsErrorKind::Other("boom".into()),
            });
        }
        let mut names: Vec<String> = self.instances.lock().unwrap().keys().cloned().collect();
        names.extend(self.tasks.lock().unwrap().keys().cloned());
        names.sort();
        names.dedup();
        Ok(names
            .into_iter()
            .map(|n| format!("arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/{n}"))
            .collect())
    }

    /// Pages of 100, the token being the offset of the next page.
    async fn list_page(
        &self,
        cluster: &str,
        listing: Listing,
        next_token: Option<&str>,
    ) -> Result<ListPage, EcsError> {
        self.known(cluster, listing.operation())?;
        let all: Vec<String> = match listing {
            Listing::ContainerInstances => self
                .instances
                .lock()
                .unwrap()
                .get(cluster)
                .into_iter()
                .flatten()
                .map(|i| i.container_instance_arn.clone())
                .collect(),
            Listing::Tasks(desired) => {
                let want = desired.as_str();
                self.tasks
                    .lock()
                    .unwrap()
                    .get(cluster)
                    .into_iter()
                    .flatten()
                    .filter(|t| t.desired_status == want)
                    .map(|t| t.task_arn.clone())
                    .filter(|arn| !self.unlisted.lock().unwrap().contains(arn))
                    .collect()
            }
        };
        let from: usize = next_token.map_or(0, |t| t.parse().expect("a token this fake gave"));
        let to = (from + blox_aws::LIST_PAGE).min(all.len());
        Ok(ListPage {
            arns: all[from..to].to_vec(),
            next_token: (to < all.len()).then(|| to.to_string()),
        })
    }

    async fn describe_container_instances(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<Vec<ContainerInstance>, EcsError> {
        assert!(arns.len() <= 100, "ECS describes at most 100 at a time");
        // As ECS (and moto) answer: a cluster ECS does not know is an error, not an empty answer.
        self.known(cluster, "DescribeContainerInstances")?;
        let instances = self.instances.lock().unwrap();
        Ok(instances
            .get(cluster)
            .into_iter()
            .flatten()
            .filter(|i| arns.contains(&i.container_instance_arn))
            .cloned()
            .collect())
    }

    async fn describe_tasks(&self, cluster: &str, arns: &[String]) -> Result<Vec<Task>, EcsError> {
        assert!(arns.len() <= 100, "ECS describes at most 100 at a time");
        self.known(cluster, "DescribeTasks")?;
        let tasks = self.tasks.lock().unwrap();
        Ok(tasks
            .get(cluster)
            .into_iter()
            .flatten()
            .filter(|t| arns.contains(&t.task_arn))
            .cloned()
            .collect())
    }

    async fn list_started_tasks(
        &self,
        cluster: &str,
        started_by: &str,
        container_instance: &str,
    ) -> Result<Vec<String>, EcsError> {
        self.known(cluster, "ListTasks")?;
        let tasks = self.tasks.lock().unwrap();
        Ok(tasks
            .get(cluster)
            .into_iter()
            .flatten()
            .filter(|t| {
                t.started_by.as_deref() == Some(started_by)
                    && t.container_instance_arn.as_deref() == Some(container_instance)
            })
            .map(|t| t.task_arn.clone())
            .collect())
    }
}

fn reconciler(
    store: Arc<MemStore>,
    ecs: Arc<FakeEcs>,
    clusters: Option<Vec<&str>>,
) -> (Reconciler, Arc<ReadinessState>) {
    let readiness = Arc::new(ReadinessState::default());
    let options = ReconcileOptions {
        clusters: clusters.map(|c| c.into_iter().map(name).collect()),
        ..ReconcileOptions::default()
    };
    (Reconciler::new(store, ecs, options, readiness.clone()), readiness)
}

async fn tasks_in(store: &MemStore, cluster: &str) -> Vec<(String, String, u64)> {
    let filter = Filter {
        cluster: Some(name(cluster)),
        ..Filter::default()
    };
    let page = store
        .list(Kind::Task, &filter, PageRequest::default())
        .await
        .unwrap();
    page.items
        .into_iter()
        .map(|r| {
            (
                r.doc.key.id.rsplit('/').next().unwrap().to_owned(),
                r.doc.status,
                r.doc.version,
            )
        })
        .collect()
}

#[tokio::test]
async fn reconcile_finds_everything_in_batches_of_100_and_removes_what_ecs_no_longer_lists() {
    let store = Arc::new(MemStore::new(StoreOptions::default()));
    let ecs = Arc::new(FakeEcs::default());
    ecs.instances.lock().unwrap().insert(
        "prod".into(),
        (0..150)
            .map(|n| instance("prod", &format!("i{n:03}"), "ACTIVE", 1))
            .collect(),
    );
    let mut tasks: Vec<Task> = (0..230)
        .map(|n| task("prod", &format!("t{n:03}"), "RUNNING", 1))
        .collect();
    tasks[0].desired_status = "STOPPED".into();
    tasks[0].last_status = "STOPPED".into();
    ecs.tasks.lock().unwrap().insert("prod".into(), tasks);
    let (reconciler, readiness) = reconciler(store.clone(), ecs.clone(), None);
    assert!(!readiness.snapshot().ready);

    let report = reconciler.pass().await;
    assert_eq!(
        (report.upserted, report.deleted, report.failures.len()),
        (380, 0, 0)
    );
    assert!(readiness.snapshot().ready);
    assert_eq!(store.count(Kind::Instance).await.unwrap(), 150);
    assert_eq!(
        store.count(Kind::Task).await.unwrap(),
        230,
        "stopped tasks ECS still lists are kept"
    );

    // Nothing changed: a second pass writes nothing (no churn in the change log).
    let head = store.log_bounds().await.unwrap().head;
    assert_eq!(reconciler.pass().await.upserted, 0);
    assert_eq!(store.log_bounds().await.unwrap().head, head);

    // ECS forgets an instance and a task; the next pass deletes them, and the deletions are changes.
    ecs.instances.lock().unwrap().get_mut("prod").unwrap().remove(5);
    ecs.tasks.lock().unwrap().get_mut("prod").unwrap().remove(7);
    let report = reconciler.pass().await;
    assert_eq!((report.upserted, report.deleted), (0, 2));
    let changes = store.changes(head, 10).await.unwrap();
    assert_eq!(changes.len(), 2);
    assert!(changes.iter().all(|c| c.deleted));
}

#[tokio::test]
async fn reconcile_asks_ecs_before_deleting_a_task_its_listing_missed() {
    let store = Arc::new(MemStore::new(StoreOptions::default()));
    let ecs = Arc::new(FakeEcs::default());
    ecs.instances
        .lock()
        .unwrap()
        .insert("prod".into(), vec![instance("prod", "i1", "ACTIVE", 1)]);
    let tasks: Vec<Task> = (0..3)
        .map(|n| task("prod", &format!("t{n}"), "RUNNING", 1))
        .collect();
    let arns: Vec<String> = tasks.iter().map(|t| t.task_arn.clone()).collect();
    ecs.tasks.lock().unwrap().insert("prod".into(), tasks);
    let (reconciler, _) = reconciler(store.clone(), ecs.clone(), None);
    reconciler.pass().await;
    assert_eq!(store.count(Kind::Task).await.unwrap(), 3);

    // The listing misses t0, which ECS still describes: kept (the scheduler would otherwise start a
    // second daemon where it runs). t1 is gone from ECS altogether: deleted.
    ecs.unlisted.lock().unwrap().push(arns[0].clone());
    ecs.tasks.lock().unwrap().get_mut("prod").unwrap().remove(1);
    let report = reconciler.pass().await;
    assert_eq!(report.deleted, 1, "{report:?}");
    let kept: Vec<String> = tasks_in(&store, "prod").await.into_iter().map(|t| t.0).collect();
    assert_eq!(kept, ["t0", "t2"]);
}

#[tokio::test]
async fn reconcile_obeys_the_version_rule() {
    let store = Arc::new(MemStore::new(StoreOptions::default()));
    let ecs = Arc::new(FakeEcs::default());
    // The store already has version 5 from an event; ECS answers with an older version 4.
    let newer = task("prod", "t1", "STOPPED", 5);
    store
        .apply(vec![Write::Upsert(blox_server::documents::task(
            name("prod"),
            &newer,
        ))])
        .await
        .unwrap();
    ecs.tasks.lock().unwrap().insert(
        "prod".into(),
        vec![task("prod", "t1", "RUNNING", 4), task("prod", "t2", "RUNNING", 9)],
    );
    let (reconciler, _) = reconciler(store.clone(), ecs.clone(), None);
    reconciler.pass().await;
    assert_eq!(
        tasks_in(&store, "prod").await,
        vec![
            ("t1".into(), "STOPPED".into(), 5),
            ("t2".into(), "RUNNING".into(), 9)
        ]
    );
}

#[tokio::test]
async fn a_failing_cluster_does_not_stop_the_others() {
    let store = Arc::new(MemStore::new(StoreOptions::default()));
    let ecs = Arc::new(FakeEcs::default());
    for cluster in ["a", "bad", "c"] {
        ecs.tasks
            .lock()
            .unwrap()
            .insert(cluster.into(), vec![task(cluster, "t1", "RUNNING", 1)]);
    }
    ecs.failing.lock().unwrap().push("bad".into());
    let (reconciler, readiness) = reconciler(store.clone(), ecs.clone(), None);
    let report = reconciler.pass().await;
    assert_eq!(report.failures.len(), 1);
    assert_eq!(tasks_in(&store, "a").await.len(), 1);
    assert_eq!(tasks_in(&store, "c").await.len(), 1);
    let ready = readiness.snapshot();
    assert!(ready.ready, "the pass completed");
    assert_eq!(ready.failing_clusters.len(), 1);
    assert_eq!(ready.failing_clusters[0].cluster, "bad");
}

#[tokio::test]
async fn clusters_gone_from_ecs_or_from_the_allow_list_are_emptied() {
    let store = Arc::new(MemStore::new(StoreOptions::default()));
    let ecs = Arc::new(FakeEcs::default());
    for cluster in ["keep", "drop"] {
        ecs.tasks
            .lock()
            .unwrap()
            .insert(cluster.into(), vec![task(cluster, "t1", "RUNNING", 1)]);
    }
    let (everything, _) = reconciler(store.clone(), ecs.clone(), None);
    everything.pass().await;
    assert_eq!(store.count(Kind::Task).await.unwrap(), 2);

    let (allowed, _) = reconciler(store.clone(), ecs.clone(), Some(vec!["keep"]));
    allowed.pass().await;
    assert_eq!(tasks_in(&store, "drop").await.len(), 0);
    assert_eq!(tasks_in(&store, "keep").await.len(), 1);

    // The cluster is deleted in ECS: its entities go too. And without the allow-list, `drop` is
    // mirrored again: its task comes back although its deletion left a tombstone at that version.
    ecs.tasks.lock().unwrap().remove("keep");
    let report = everything.pass().await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(tasks_in(&store, "keep").await.len(), 0);
    assert_eq!(
        tasks_in(&store, "drop").await,
        vec![("t1".into(), "RUNNING".into(), 1)]
    );
}

#[tokio::test]
async fn a_pass_that_cannot_list_clusters_is_not_ready() {
    let store = Arc::new(MemStore::new(StoreOptions::default()));
    let ecs = Arc::new(FakeEcs::default());
    ecs.listing_fails.store(true, Ordering::SeqCst);
    let (reconciler, readiness) = reconciler(store, ecs, None);
    let report = reconciler.pass().await;
    assert!(!report.listed);
    assert!(!readiness.snapshot().ready);
}

/// The task `entities::task` makes, in another account and/or region (every ARN of it).
fn task_of(account: &str, region: &str, id: &str) -> Task {
    let place = |arn: String| {
        arn.replace(ACCOUNT, account)
            .replace(":us-east-1:", &format!(":{region}:"))
    };
    let t = task("prod", id, "RUNNING", 1);
    Task {
        cluster_arn: place(t.cluster_arn.clone()),
        task_arn: place(t.task_arn.clone()),
        container_instance_arn: t.container_instance_arn.clone().map(place),
        task_definition_arn: place(t.task_definition_arn.clone()),
        ..t
    }
}

/// Events of another account or region than the mirrored one are parked with that reason; what is
/// not known of the mirrored scope is not checked. Cases: (mirrored account, mirrored region, the
/// event's account, the event's region, the reason it is parked for).
#[tokio::test]
async fn events_of_another_account_or_region_are_parked_with_that_reason() {
    const OTHER: &str = "210987654321";
    /// Mirrored account and region, the event's account and region, the reason it is parked for.
    type Case<'a> = (
        Option<&'a str>,
        Option<&'a str>,
        &'a str,
        &'a str,
        Option<&'a str>,
    );
    let cases: [Case<'_>; 7] = [
        (Some(ACCOUNT), Some("us-east-1"), ACCOUNT, "us-east-1", None),
        (
            Some(ACCOUNT),
            Some("us-east-1"),
            OTHER,
            "us-east-1",
            Some("the event is from account 210987654321, but blox mirrors account 123456789012"),
        ),
        (
            Some(ACCOUNT),
            Some("us-east-1"),
            ACCOUNT,
            "eu-west-1",
            Some("the event is from region eu-west-1, but blox mirrors region us-east-1"),
        ),
        (
            Some(ACCOUNT),
            Some("us-east-1"),
            OTHER,
            "eu-west-1",
            Some("the event is from account 210987654321"),
        ),
        (None, Some("us-east-1"), OTHER, "us-east-1", None),
        (
            None,
            Some("us-east-1"),
            OTHER,
            "eu-west-1",
            Some("the event is from region eu-west-1"),
        ),
        (None, None, OTHER, "eu-west-1", None),
    ];
    for (account, region, event_account, event_region, parked_for) in cases {
        let case = format!("{account:?} {region:?} ← {event_account} {event_region}");
        let store = Arc::new(MemStore::new(StoreOptions::default()));
        let queue = Arc::new(FakeQueue::default());
        let options = IngestOptions {
            mirrored: Arc::new(Mirrored::new(account.map(String::from), region.map(String::from))),
            ..IngestOptions::default()
        };
        let ingest = Ingestor::new(store.clone(), queue.clone(), options);
        let event = task_event(&task_of(event_account, event_region, "t1"), 1);
        let report = ingest.commit(messages([event.clone()])).await.unwrap();
        assert_eq!(queue.deleted(), 1, "{case}");
        let parked = store.dead_letters(PageRequest::default()).await.unwrap().items;
        match parked_for {
            None => {
                assert_eq!((report.applied, report.parked), (1, 0), "{case}");
                assert!(parked.is_empty(), "{case}");
            }
            Some(reason) => {
                assert_eq!((report.applied, report.parked), (0, 1), "{case}");
                assert!(
                    parked[0].reason.starts_with(reason),
                    "{case}: {:?}",
                    parked[0].reason
                );
                assert_eq!(parked[0].body, event, "{case}");
                assert_eq!(store.count(Kind::Task).await.unwrap(), 0, "{case}");
            }
        }
    }
}

/// Without `--account-id`, the account is learnt from the cluster ARNs ECS lists to the reconciler;
/// until then, events of any account are taken.
#[tokio::test]
async fn the_account_is_learnt_from_what_ecs_lists() {
    let store = Arc::new(MemStore::new(StoreOptions::default()));
    let ecs = Arc::new(FakeEcs::default());
    ecs.tasks
        .lock()
        .unwrap()
        .insert("prod".into(), vec![task("prod", "t1", "RUNNING", 1)]);
    let mirrored = Arc::new(Mirrored::new(None, Some("us-east-1".into())));
    let queue = Arc::new(FakeQueue::default());
    let ingest = Ingestor::new(
        store.clone(),
        queue.clone(),
        IngestOptions {
            mirrored: mirrored.clone(),
            ..IngestOptions::default()
        },
    );
    let foreign = || task_event(&task_of("210987654321", "us-east-1", "f1"), 1);
    assert_eq!(ingest.commit(messages([foreign()])).await.unwrap().applied, 1);
    assert_eq!(mirrored.scope().account, None);

    let reconciler = Reconciler::new(
        store.clone(),
        ecs,
        ReconcileOptions {
            mirrored: mirrored.clone(),
            ..ReconcileOptions::default()
        },
        Arc::new(ReadinessState::default()),
    );
    reconciler.pass().await;
    assert_eq!(mirrored.scope().account.as_deref(), Some(ACCOUNT));
    let report = ingest.commit(messages([foreign()])).await.unwrap();
    assert_eq!((report.applied, report.parked), (0, 1));
    // A given account stays, whatever ECS answers.
    let given = Mirrored::new(Some("444455556666".into()), None);
    given.learn(&entities::cluster_arn("prod"));
    assert_eq!(given.scope().account.as_deref(), Some("444455556666"));
    assert_eq!(given.scope().region.as_deref(), Some("us-east-1"));
}

/// An event whose version is ahead of anything ECS describes (near u64::MAX) pins the task against
/// events and describes; the reconciler corrects it once it has been stored since before its previous
/// look at the cluster (a whole interval), but never takes back a newer event a describe raced.
#[tokio::test]
async fn reconcile_corrects_a_version_ahead_of_ecs_but_not_a_newer_event_it_raced() {
    let store = Arc::new(MemStore::new(StoreOptions::default()));
    let queue = Arc::new(FakeQueue::default());
    let ingest = ingestor(store.clone(), queue, None);
    let ecs = Arc::new(FakeEcs::default());
    ecs.tasks
        .lock()
        .unwrap()
        .insert("prod".into(), vec![task("prod", "t1", "RUNNING", 4)]);
    let (reconciler, _) = reconciler(store.clone(), ecs.clone(), None);
    let bogus = task_event(&task("prod", "t1", "STOPPED", u64::MAX - 1), u64::MAX - 1);
    ingest.commit(messages([bogus])).await.unwrap();

    // The first look: the bogus version may be an event the describe raced. Kept.
    reconciler.pass().await;
    let stored = || tasks_in(&store, "prod");
    assert_eq!(stored().await, [("t1".into(), "STOPPED".into(), u64::MAX - 1)]);
    // The next look: stored before the previous one began, and ECS still describes 4. Corrected.
    assert_eq!(reconciler.pass().await.upserted, 1);
    assert_eq!(stored().await, [("t1".into(), "RUNNING".into(), 4)]);
    // Events at real versions apply again.
    let newer = task_event(&task("prod", "t1", "STOPPED", 5), 5);
    assert_eq!(ingest.commit(messages([newer])).await.unwrap().applied, 1);
    assert_eq!(stored().await, [("t1".into(), "STOPPED".into(), 5)]);
    // ECS's describe lags behind the event (still 4): the event arrived after the previous look,
    // so the describe is what raced it. Kept.
    assert_eq!(reconciler.pass().await.upserted, 0);
    assert_eq!(stored().await, [("t1".into(), "STOPPED".into(), 5)]);
    // ECS catches up; nothing to correct.
    ecs.tasks.lock().unwrap().get_mut("prod").unwrap()[0] = task("prod", "t1", "STOPPED", 5);
    assert_eq!(reconciler.pass().await.upserted, 0);
    assert_eq!(stored().await, [("t1".into(), "STOPPED".into(), 5)]);
}

/// A task the reconciler deleted stays deleted when a late event of it arrives after a burst of
/// changes trimmed its deletion from the change log: its tombstone is kept for a duration. With no
/// duration, it is back (the old behaviour). Cases: (tombstone retention, resurrected).
#[tokio::test]
async fn a_late_event_after_a_burst_does_not_resurrect_a_deleted_task() {
    for (retention, resurrected) in [(StoreOptions::TOMBSTONE_RETENTION, false), (Duration::ZERO, true)] {
        let store = Arc::new(MemStore::new(StoreOptions {
            change_log_retention: 5,
            tombstone_retention: retention,
            ..StoreOptions::default()
        }));
        let ecs = Arc::new(FakeEcs::default());
        let old = task("prod", "t1", "STOPPED", 3);
        ecs.tasks.lock().unwrap().insert("prod".into(), vec![old.clone()]);
        let (reconciler, _) = reconciler(store.clone(), ecs.clone(), None);
        reconciler.pass().await;
        ecs.tasks.lock().unwrap().get_mut("prod").unwrap().clear();
        assert_eq!(reconciler.pass().await.deleted, 1);
        let ingest = ingestor(store.clone(), Arc::new(FakeQueue::default()), None);
        let burst = (0..10).map(|n| task_event(&task("prod", &format!("b{n}"), "RUNNING", 1), 1));
        ingest.commit(messages(burst)).await.unwrap();
        assert!(store.log_bounds().await.unwrap().oldest_resumable > 2);
        let late = ingest.commit(messages([task_event(&old, 3)])).await.unwrap();
        assert_eq!(late.applied == 1, resurrected, "{retention:?}");
    }
}
