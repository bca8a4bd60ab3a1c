//! Crash safety of ingestion: the `blox` binary, ingesting a storm of ECS task events from moto's SQS,
//! is killed (SIGKILL) at random moments, at least 50 times, and started again on the same data
//! directory. After each restart, before the new process may receive anything, the test checks:
//!
//! - **every acknowledged event is in the store**: each task's stored version is at least the highest
//!   version of it whose message was deleted from the queue;
//! - **nothing else is**: no task that was never sent; every stored task is exactly what a delivered
//!   event said of it (that event's version and description, so never a version beyond the last
//!   sent); the status and startedBy indexes list exactly the tasks whose description has them;
//! - **the change log resumes without gap**: the task stream, opened on the new process 200 changes
//!   before the last one read from the killed process, repeats those changes unchanged and goes on
//!   with consecutive sequence numbers up to the store's head, which is never behind what was read
//!   before the kill; each task's last change in the log is the version stored, at the
//!   `entityVersion` its listing shows.
//!
//! At the end the producer stops, the last process drains the queue, every task is stored at the last
//! version sent, nothing is parked, and the whole log read again from the start is what was read
//! across the crashes.
//!
//! **Acknowledged** means deleted from SQS, as moto answered it. blox reaches SQS through an
//! [`SqsProxy`], which records each message moto delivered (by receipt handle) and each receipt moto
//! confirmed deleted (a DeleteMessage answered 200, or an entry under `Successful` of a
//! DeleteMessageBatch). Its exchanges with moto complete on tasks of their own, so a delete moto
//! carried out for a process killed before it heard the answer still counts. Each message is one
//! (task, version), versions strictly increasing per task, so its body identifies it. From the kill
//! until the check is done the proxy holds receives back: nothing is written meanwhile, and the
//! store, its listings and its log are checked as the killed process left them.
//!
//! **The reconciler** must not interfere. moto's ECS does not know the synthetic tasks, and ECS is the
//! truth: a reconcile pass would delete them, and one runs whenever a process starts, whatever
//! `--reconcile-interval` says. `--clusters` is no way out either: ingestion drops events of clusters
//! it does not name, and the reconciler removes what the store holds of them. So ECS is reached
//! through a [`StartTaskFaultProxy`] that denies ListClusters: every pass fails before it reads or
//! writes anything, and the scheduler, which waits for a first pass, never runs. Ingestion is then
//! the store's only writer and the change log holds nothing but the events' task changes, which is
//! what makes "consecutive" the right test for the task stream. Since no pass completes, `/readyz`
//! never says ready: a process is ready once it prints its address, which it does after opening the
//! store.
//!
//! Seeded: `BLOX_CRASH_SEED=N` replays the same events and kill delays (how they interleave with the
//! processes is the machine's); `BLOX_CRASH_KILLS` sets the number of kills (default 50).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{BuildHasher as _, RandomState};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use blox_api::{PageQuery, StreamQuery, TaskQuery};
use blox_client::Client;
use blox_model::Task;
use blox_model::emit::{rfc3339_millis, task_event};
use blox_testkit::entities::{self, ACCOUNT};
use blox_testkit::{BloxProcess, EcsFixture, Moto, SqsProxy, StartTaskFaultProxy, wait_until};
use futures::StreamExt as _;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const BLOX: &str = env!("CARGO_BIN_EXE_blox");
const CLUSTER: &str = "storm";
const QUEUE: &str = "events";
/// Tasks the storm is about; each event is one of them at its next version.
const TASKS: usize = 200;
const KILLS: usize = 50;
/// Events sent and not yet acknowledged, at most: enough that every process has a backlog to work
/// through when it starts, few because moto spends time on every SQS call in proportion to the
/// messages in the queue (those a killed process left hidden included).
///
/// The storm is as fast as moto lets it be: a few dozen events a second on two cores, restarts included.
const WINDOW: usize = 100;
/// SendMessageBatch's limit.
const BATCH: usize = 10;
/// How long after moto's first delivery to a process it is killed: from before its first commit to
/// well into its ingestion (its first acknowledgement typically comes 100 to 400 ms after the
/// delivery: moto answers a DeleteMessageBatch in tens of milliseconds).
const KILL_DELAY_MS: Range<u64> = 0..500;
/// Changes read before a kill that the stream on the next process reads again.
const OVERLAP: u64 = 200;
/// The queue hides a message a dead process received for this long; short, so that the last process
/// drains soon.
const VISIBILITY: &str = "1s";
const DEADLINE: Duration = Duration::from_secs(60);
/// The time every event's description is stamped from: events are a function of (task, version).
const EPOCH_MS: u64 = 1_700_000_000_000;

/// The store every process opens; the one place to change the backend under test.
fn store_spec(dir: &Path) -> String {
    format!("log:{}", dir.join("store").display())
}

/// What event `version` of task `id` says: the status goes round PENDING, RUNNING, STOPPED, startedBy
/// between two values (both indexed), updatedAt with the version.
fn task_state(id: usize, version: u64) -> Task {
    let status = ["PENDING", "RUNNING", "STOPPED"][(version % 3) as usize];
    Task {
        version,
        last_status: status.into(),
        desired_status: if status == "STOPPED" { "STOPPED" } else { "RUNNING" }.into(),
        started_by: Some(format!("storm-{}", version % 2)),
        updated_at: Some(rfc3339_millis(EPOCH_MS + version * 1000)),
        ..entities::task(CLUSTER, &task_name(id))
    }
}

fn task_name(id: usize) -> String {
    format!("t{id:03}")
}

/// The message body of event `version` of task `id`.
fn event(id: usize, version: u64) -> String {
    task_event(
        &task_state(id, version),
        version,
        &rfc3339_millis(EPOCH_MS + version * 1000),
    )
}

/// The task a stored or streamed ARN names; panics on one the storm never sent.
fn task_id(arn: &str) -> usize {
    let id = arn
        .rsplit('/')
        .next()
        .and_then(|name| name.strip_prefix('t'))
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&id| id < TASKS)
        .unwrap_or_else(|| panic!("a task the storm never sent: {arn}"));
    assert_eq!(
        arn,
        entities::task_arn(CLUSTER, &task_name(id)),
        "a task the storm never sent"
    );
    id
}

/// The (task, version) a message body is the event of.
fn event_of(body: &str) -> (usize, u64) {
    let event: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    let arn = event["detail"]["taskArn"].as_str().expect("detail.taskArn");
    let version = event["detail"]["version"].as_u64().expect("detail.version");
    (task_id(arn), version)
}

/// SplitMix64: a seeded generator is all the test needs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn within(&mut self, range: Range<u64>) -> u64 {
        range.start + self.next() % (range.end - range.start)
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// What the producer has sent: the last version of each task (versions go 1, 2, 3... per task, so
/// this is every event sent). A version is counted before its message goes out: whatever a process
/// received has been counted.
struct Sent {
    last: Mutex<Vec<u64>>,
    events: AtomicUsize,
}

impl Sent {
    fn last(&self) -> MutexGuard<'_, Vec<u64>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sends events of random tasks, `BATCH` to a SendMessageBatch, keeping at most `WINDOW` of them
/// unacknowledged, until `stop`.
fn produce(
    moto: EcsFixture,
    queue: String,
    sqs: Arc<SqsProxy>,
    sent: Arc<Sent>,
    stop: Arc<AtomicBool>,
    mut rng: Rng,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            wait_until("the window has room for a batch", DEADLINE, || async {
                stop.load(Ordering::SeqCst)
                    || sent.events.load(Ordering::SeqCst) < sqs.deleted_messages() + WINDOW
            })
            .await;
            let bodies: Vec<String> = {
                let mut last = sent.last();
                (0..BATCH)
                    .map(|_| {
                        let id = rng.within(0..TASKS as u64) as usize;
                        last[id] += 1;
                        event(id, last[id])
                    })
                    .collect()
            };
            sent.events.fetch_add(bodies.len(), Ordering::SeqCst);
            moto.send_messages(&queue, &bodies)
                .await
                .expect("SendMessageBatch");
        }
    })
}

/// The change log as read through task streams, across processes: `changes[i]` is change `i + 1`.
#[derive(Default)]
struct Log {
    changes: Vec<Task>,
    /// The last sequence number the current reader read.
    position: u64,
    /// What a reader found wrong; it stops there.
    fault: Option<String>,
    /// Why the current reader's stream ended (it does when its process is killed).
    ended: Option<String>,
}

/// Reads `GET /v1/stream/tasks?entityVersion=FROM` into `log` until the stream ends: each record must
/// carry the next sequence number, from `FROM` itself (a resume is inclusive); one already in the
/// log must be the same change, a new one is appended.
async fn follow(client: &Client, from: u64, log: Arc<Mutex<Log>>) -> JoinHandle<()> {
    let query = StreamQuery {
        entity_version: Some(from),
        ..StreamQuery::default()
    };
    let stream = client
        .stream_tasks(&query)
        .await
        .unwrap_or_else(|e| panic!("the task stream opens from {from}: {e}"));
    {
        let mut log = log.lock().unwrap();
        log.position = from.saturating_sub(1);
        log.ended = None;
    }
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let record = match stream.next().await {
                Some(Ok(record)) => record,
                Some(Err(e)) => {
                    log.lock().unwrap().ended = Some(e.to_string());
                    return;
                }
                None => {
                    log.lock().unwrap().ended = Some("the server closed the stream".to_owned());
                    return;
                }
            };
            let seq: u64 = record.metadata.entity_version.parse().expect("a number");
            let mut log = log.lock().unwrap();
            let fault = if seq != log.position + 1 {
                Some(format!("the stream went from change {} to {seq}", log.position))
            } else if record.metadata.deleted {
                Some(format!("change {seq} deletes {}", record.entity.task_arn))
            } else if let Some(before) = log.changes.get(seq as usize - 1) {
                (*before != record.entity).then(|| {
                    format!(
                        "change {seq} was {before:?} before the kill and is {:?} after",
                        record.entity
                    )
                })
            } else {
                log.changes.push(record.entity);
                None
            };
            if fault.is_some() {
                log.fault = fault;
                return;
            }
            log.position = seq;
        }
    })
}

/// What the test knows of the messages and of the log checked so far.
struct Checker {
    client: Client,
    sqs: Arc<SqsProxy>,
    sent: Arc<Sent>,
    log: Arc<Mutex<Log>>,
    reader: Option<JoinHandle<()>>,
    /// Deliveries and deletions taken from the proxy so far.
    deliveries_seen: usize,
    deletions_seen: usize,
    /// (task, version) of every message delivered to some process.
    delivered: HashSet<(usize, u64)>,
    /// (task, version) of every message deleted.
    acknowledged: HashSet<(usize, u64)>,
    /// The highest version acknowledged, per task.
    acked: Vec<u64>,
    /// Changes of the log checked so far, and the last of each task among them: (seq, version).
    checked: usize,
    last_change: Vec<Option<(u64, u64)>>,
}

impl Checker {
    fn new(blox: &BloxProcess, sqs: Arc<SqsProxy>, sent: Arc<Sent>) -> Checker {
        Checker {
            client: Client::new(blox.base_url()),
            sqs,
            sent,
            log: Arc::default(),
            reader: None,
            deliveries_seen: 0,
            deletions_seen: 0,
            delivered: HashSet::new(),
            acknowledged: HashSet::new(),
            acked: vec![0; TASKS],
            checked: 0,
            last_change: vec![None; TASKS],
        }
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows the log on a new process, from `OVERLAP` changes before the last one read.
    async fn attach(&mut self, blox: &BloxProcess) {
        if let Some(reader) = self.reader.take() {
            reader.abort();
            let _ = reader.await;
        }
        assert_eq!(
            self.log().fault,
            None,
            "the change log as streamed before the kill"
        );
        self.client = Client::new(blox.base_url());
        let from = (self.log().changes.len() as u64).saturating_sub(OVERLAP);
        self.reader = Some(follow(&self.client, from, Arc::clone(&self.log)).await);
    }

    fn take_deletions(&mut self) {
        let later = self.sqs.deletions(self.deletions_seen);
        self.deletions_seen += later.len();
        for message in later {
            let (id, version) = event_of(&message.body);
            self.acknowledged.insert((id, version));
            self.acked[id] = self.acked[id].max(version);
        }
    }

    fn take_deliveries(&mut self) {
        let later = self.sqs.deliveries(self.deliveries_seen);
        self.deliveries_seen += later.len();
        self.delivered.extend(later.iter().map(|m| event_of(&m.body)));
    }

    /// The checks of the module's documentation, on a store nothing writes to meanwhile. Returns the
    /// store's head.
    async fn check(&mut self, when: &str) -> u64 {
        // Acknowledgements first, then the store, then deliveries: an acknowledgement is only made
        // after its commit, and the store holds only what was delivered before it is read.
        self.take_deletions();
        let listed = self
            .client
            .list_tasks(&TaskQuery::default())
            .await
            .expect("GET /v1/tasks");
        self.take_deliveries();

        let mut stored: BTreeMap<usize, (u64, Task)> = BTreeMap::new();
        for record in listed.items {
            let id = task_id(&record.entity.task_arn);
            let seq: u64 = record.metadata.entity_version.parse().expect("a number");
            let version = record.entity.version;
            assert!(
                self.delivered.contains(&(id, version)),
                "{when}: {} is stored at version {version}, which no process was delivered (last sent: {})",
                task_name(id),
                self.sent.last()[id]
            );
            assert_eq!(
                record.entity,
                task_state(id, version),
                "{when}: the description stored"
            );
            assert!(
                stored.insert(id, (seq, record.entity)).is_none(),
                "{when}: {} listed twice",
                task_name(id)
            );
        }
        let lost: Vec<String> = (0..TASKS)
            .filter(|&id| stored.get(&id).map_or(0, |(_, t)| t.version) < self.acked[id])
            .map(|id| {
                let version = stored.get(&id).map(|(_, t)| t.version);
                format!(
                    "{} stored at {version:?}, acknowledged at {}",
                    task_name(id),
                    self.acked[id]
                )
            })
            .collect();
        assert!(
            lost.is_empty(),
            "{when}: acknowledged events missing from the store, {} tasks: {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
        self.check_indexes(when, &stored).await;

        // The log: up to the head (the newest change of any task, as only tasks change), no further.
        let head = stored.values().map(|(seq, _)| *seq).max().unwrap_or(0);
        let read_before = self.log().changes.len() as u64;
        assert!(
            read_before <= head,
            "{when}: changes up to {read_before} were streamed before the kill, the store's head is {head}"
        );
        wait_until(
            &format!("{when}: the stream reaches change {head}"),
            DEADLINE,
            || async {
                let log = self.log();
                log.fault.is_some() || log.ended.is_some() || log.position >= head
            },
        )
        .await;
        let shared = Arc::clone(&self.log);
        let log = shared.lock().unwrap();
        assert_eq!(log.fault, None, "{when}: the change log");
        assert_eq!(log.position, head, "{when}: the stream ended: {:?}", log.ended);
        assert_eq!(log.changes.len() as u64, head, "{when}: the change log's length");
        for (i, task) in log.changes.iter().enumerate().skip(self.checked) {
            let (seq, id, version) = (i as u64 + 1, task_id(&task.task_arn), task.version);
            assert!(
                self.delivered.contains(&(id, version)),
                "{when}: change {seq} is {} at version {version}, which no process was delivered",
                task_name(id)
            );
            assert_eq!(*task, task_state(id, version), "{when}: change {seq}");
            let before = self.last_change[id].map_or(0, |(_, v)| v);
            assert!(
                version > before,
                "{when}: change {seq} takes {} from version {before} to {version}",
                task_name(id)
            );
            self.last_change[id] = Some((seq, version));
        }
        self.checked = log.changes.len();
        drop(log);
        for id in 0..TASKS {
            let in_store = stored.get(&id).map(|(seq, t)| (*seq, t.version));
            assert_eq!(
                self.last_change[id],
                in_store,
                "{when}: {}'s last change in the log (seq, version) against the store",
                task_name(id)
            );
        }
        head
    }

    /// Each value of the indexed fields lists exactly the stored tasks that have it.
    async fn check_indexes(&self, when: &str, stored: &BTreeMap<usize, (u64, Task)>) {
        let by = |query: TaskQuery| async move {
            let listed = self.client.list_tasks(&query).await.expect("GET /v1/tasks?...");
            listed
                .items
                .iter()
                .map(|r| task_id(&r.entity.task_arn))
                .collect::<BTreeSet<_>>()
        };
        for status in ["PENDING", "RUNNING", "STOPPED"] {
            let expected: BTreeSet<usize> = stored
                .iter()
                .filter(|(_, (_, t))| t.last_status == status)
                .map(|(id, _)| *id)
                .collect();
            let query = TaskQuery {
                status: Some(status.to_lowercase()),
                ..TaskQuery::default()
            };
            assert_eq!(
                by(query).await,
                expected,
                "{when}: tasks listed by status {status}"
            );
        }
        for started_by in ["storm-0", "storm-1"] {
            let expected: BTreeSet<usize> = stored
                .iter()
                .filter(|(_, (_, t))| t.started_by.as_deref() == Some(started_by))
                .map(|(id, _)| *id)
                .collect();
            let query = TaskQuery {
                started_by: Some(started_by.to_owned()),
                ..TaskQuery::default()
            };
            assert_eq!(
                by(query).await,
                expected,
                "{when}: tasks listed by startedBy {started_by}"
            );
        }
    }
}

/// What one kill found.
struct Kill {
    delay_ms: u64,
    /// Messages deleted (for the first time) while this process ran.
    acknowledged: usize,
    /// Events sent and not acknowledged at the kill.
    outstanding: usize,
}

#[tokio::test]
async fn ingestion_killed_at_random_moments_keeps_every_acknowledged_event_and_a_gapless_log() {
    let seed = env_number("BLOX_CRASH_SEED").unwrap_or_else(|| RandomState::new().hash_one("crash"));
    let kills = env_number("BLOX_CRASH_KILLS").map_or(KILLS, |n| n as usize);
    eprintln!("crash test seed {seed} (BLOX_CRASH_SEED={seed} replays it), {kills} kills");
    let started = Instant::now();

    let moto = Moto::start()
        .await
        .expect("moto starts (run scripts/setup-test-env.sh)");
    let fixture = EcsFixture::new(&moto).await;
    let queue = fixture.create_queue(QUEUE).await.expect("queue");
    let sqs = Arc::new(SqsProxy::start(&moto).await.expect("SQS proxy"));
    let ecs = StartTaskFaultProxy::start(&moto).await.expect("ECS proxy");
    ecs.deny("ListClusters");
    let mut env = sqs.env();
    env.push(("AWS_ENDPOINT_URL_ECS".to_owned(), ecs.url()));
    let dir = tempfile::tempdir().unwrap();
    let store = store_spec(dir.path());
    let args = [
        "server",
        "--listen",
        "127.0.0.1:0",
        "--store",
        &store,
        "--queue",
        &queue,
        "--visibility-timeout",
        VISIBILITY,
        "--account-id",
        ACCOUNT,
    ];

    let sent = Arc::new(Sent {
        last: Mutex::new(vec![0; TASKS]),
        events: AtomicUsize::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut rng = Rng(seed);
    let producer = produce(
        fixture.clone(),
        queue.clone(),
        Arc::clone(&sqs),
        Arc::clone(&sent),
        Arc::clone(&stop),
        Rng(rng.next()),
    );
    let mut blox = start(&sqs, &args, &env).await;
    let mut checker = Checker::new(&blox, Arc::clone(&sqs), Arc::clone(&sent));
    checker.attach(&blox).await;
    checker.check("at the first start").await;
    let mut killed = Vec::new();
    for n in 1..=kills {
        // Events flow into this process (moto delivered it some), then a random moment.
        let (deleted, delivered) = (sqs.deleted_messages(), sqs.delivery_count());
        sqs.release_receives();
        wait_until(&format!("process {n} is delivered events"), DEADLINE, || async {
            sqs.delivery_count() > delivered
        })
        .await;
        let delay_ms = rng.within(KILL_DELAY_MS);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let outstanding = sent.events.load(Ordering::SeqCst) - sqs.deleted_messages();
        blox.crash().await;
        let kill = Kill {
            delay_ms,
            acknowledged: sqs.deleted_messages() - deleted,
            outstanding,
        };
        assert!(
            outstanding > 0,
            "kill {n}: every event sent was acknowledged: no storm to kill into"
        );
        assert!(!producer.is_finished(), "the producer stopped");

        drop(blox);
        let restart = Instant::now();
        blox = start(&sqs, &args, &env).await;
        let restarted = restart.elapsed();
        checker.attach(&blox).await;
        let head = checker.check(&format!("after kill {n}")).await;
        eprintln!(
            "kill {n}: {delay_ms} ms after the first delivery, {} acknowledged, {outstanding} not; restarted in \
             {restarted:?}, checked in {:?}; the log's head is {head}",
            kill.acknowledged,
            restart.elapsed() - restarted
        );
        killed.push(kill);
    }

    // The last process drains the queue.
    stop.store(true, Ordering::SeqCst);
    producer.await.expect("the producer");
    sqs.release_receives();
    let total = sent.events.load(Ordering::SeqCst);
    wait_until("every event sent is acknowledged", DEADLINE, || async {
        sqs.deleted_messages() == total
    })
    .await;
    wait_until("the queue is empty", DEADLINE, || async {
        fixture
            .queue_depth(&queue)
            .await
            .is_ok_and(|d| d.visible == 0 && d.in_flight == 0)
    })
    .await;
    let head = checker.check("once drained").await;
    let last = sent.last().clone();
    assert_eq!(checker.acknowledged.len(), total, "distinct events acknowledged");
    assert!(
        checker
            .acknowledged
            .iter()
            .all(|&(id, v)| (1..=last[id]).contains(&v)),
        "only events sent were acknowledged"
    );
    let listed = checker.client.list_tasks(&TaskQuery::default()).await.unwrap();
    let stored: BTreeMap<usize, u64> = listed
        .items
        .iter()
        .map(|r| (task_id(&r.entity.task_arn), r.entity.version))
        .collect();
    let expected: BTreeMap<usize, u64> = (0..TASKS)
        .filter(|&id| last[id] > 0)
        .map(|id| (id, last[id]))
        .collect();
    assert_eq!(stored, expected, "every task at the last version sent");
    let parked = checker.client.dead_letters(&PageQuery::default()).await.unwrap();
    assert!(parked.items.is_empty(), "parked messages: {:?}", parked.items);
    assert_eq!(
        sqs.unknown_deletes(),
        0,
        "deletions of receipts the proxy never delivered"
    );

    // The whole log, read again from the start, is what was read across the crashes.
    let again: Arc<Mutex<Log>> = Arc::default();
    let reader = follow(&checker.client, 0, Arc::clone(&again)).await;
    wait_until("the log is read again from the start", DEADLINE, || async {
        let again = again.lock().unwrap();
        again.fault.is_some() || again.ended.is_some() || again.position >= head
    })
    .await;
    reader.abort();
    let again = again.lock().unwrap();
    assert_eq!(again.fault, None, "the log read from the start");
    assert_eq!(
        again.position, head,
        "the stream from the start ended: {:?}",
        again.ended
    );
    let read = &checker.log().changes;
    let differs = again.changes.iter().zip(read).position(|(a, b)| a != b);
    assert!(
        again.changes.len() == read.len() && differs.is_none(),
        "the log read from the start ({} changes) is not what was read across the crashes ({}): first \
         difference at change {:?}",
        again.changes.len(),
        read.len(),
        differs.map(|i| i + 1)
    );

    let deliveries = checker.deliveries_seen;
    let mean = |f: fn(&Kill) -> usize| killed.iter().map(f).sum::<usize>() / killed.len().max(1);
    let delays = killed.iter().map(|k| k.delay_ms);
    eprintln!(
        "crash test seed {seed}: {} kills in {:?} ({} before the process acknowledged anything); {total} \
         events of {TASKS} tasks sent, {deliveries} deliveries ({} redeliveries), {head} changes in the \
         log; on average {} events acknowledged per process and {} not at its kill; delays {:?}..={:?} ms",
        killed.len(),
        started.elapsed(),
        killed.iter().filter(|k| k.acknowledged == 0).count(),
        deliveries.saturating_sub(total),
        mean(|k| k.acknowledged),
        mean(|k| k.outstanding),
        delays.clone().min().unwrap_or_default(),
        delays.max().unwrap_or_default(),
    );
}

/// Starts a process with receives held at the proxy: it ingests nothing until they are released.
async fn start(sqs: &SqsProxy, args: &[&str], env: &[(String, String)]) -> BloxProcess {
    sqs.hold_receives();
    BloxProcess::start(BLOX, args, env).await.expect("blox starts")
}
