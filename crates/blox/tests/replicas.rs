//! Three replicas of the `blox` binary on one real etcd, against moto (ECS and SQS). Every replica
//! serves the whole API; only the leader ingests, reconciles and schedules, on writes fenced on its
//! leadership. The leader is killed (SIGKILL) while events flow and while a deployment rolls out,
//! frozen (SIGSTOP) past its lease and woken, a change stream moves from one replica to another, and
//! two replicas create one environment at the same moment.
//!
//! Each replica reaches ECS through a proxy of its own, so that what one replica asks ECS is counted
//! apart from the others.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blox_api::{StreamQuery, TaskQuery};
use blox_aws::EcsReader as _;
use blox_client::Client;
use blox_model::Task;
use blox_testkit::{
    Api, BloxProcess, EcsFixture, Etcd, EventFeed, Moto, StartTaskFaultProxy, tasks_by_instance, wait_until,
};
use futures::StreamExt as _;
use reqwest::Method;
use serde_json::json;
use tokio::time::Instant;

const BLOX: &str = env!("CARGO_BIN_EXE_blox");
const QUEUE: &str = "events";
const PREFIX: &str = "/blox/";
/// `--leader-lease`: a leader that stops renewing is replaced within it.
const LEASE: Duration = Duration::from_secs(3);
/// How long after a leader's death another may take to lead: the lease, then some slack.
const FAILOVER: Duration = Duration::from_secs(LEASE.as_secs() + 2);
const DEADLINE: Duration = Duration::from_secs(60);
const LEADER: &str = "blox_leader";
const LEADERSHIP_CHANGES: &str = "blox_leadership_changes_total";
const TASKS_STARTED: &str = "blox_scheduler_tasks_started_total";
const TASKS_STOPPED: &str = "blox_scheduler_tasks_stopped_total";

/// etcd, moto, a queue of ECS events, and the replicas (none until [`Harness::start_replicas`]).
struct Harness {
    // Dropped first: the replicas are killed before etcd and moto.
    replicas: Vec<Replica>,
    feed: EventFeed,
    ecs: EcsFixture,
    moto: Moto,
    etcd: Etcd,
}

struct Replica {
    id: String,
    process: BloxProcess,
    /// ECS as this replica alone reaches it: its requests, counted by operation.
    ecs: StartTaskFaultProxy,
}

impl Replica {
    fn api(&self) -> &Api {
        self.process.api()
    }

    /// The leader this replica names (`GET /v1/leader`); `None` when it names none or does not
    /// answer.
    async fn leader(&self) -> Option<String> {
        let (status, body) = self.api().try_call(Method::GET, "/v1/leader", None).await.ok()?;
        assert!(status == 200 && body["self"] == self.id, "{status}: {body}");
        Some(body["leader"].as_str()?.to_owned())
    }

    /// The role `/readyz` reports.
    async fn role(&self) -> Option<String> {
        let (_, body) = self.api().try_call(Method::GET, "/readyz", None).await.ok()?;
        Some(body["role"].as_str()?.to_owned())
    }

    /// `blox_leader` and `blox_leadership_changes_total` by event: (leader, acquired, lost).
    async fn leadership(&self) -> (f64, f64, f64) {
        let api = self.api();
        (
            api.metric(LEADER, &[]).await,
            api.metric(LEADERSHIP_CHANGES, &[("event", "acquired")]).await,
            api.metric(LEADERSHIP_CHANGES, &[("event", "lost")]).await,
        )
    }
}

impl Harness {
    async fn new() -> Harness {
        let (etcd, moto) = tokio::join!(Etcd::start(), Moto::start());
        let etcd = etcd.expect("etcd starts (apt-get install etcd-server)");
        let moto = moto.expect("moto starts (run scripts/setup-test-env.sh)");
        let ecs = EcsFixture::new(&moto).await;
        let queue = ecs.create_queue(QUEUE).await.expect("queue");
        let feed = EventFeed::new(&moto, &queue).await;
        Harness {
            replicas: Vec::new(),
            feed,
            ecs,
            moto,
            etcd,
        }
    }

    /// A cluster of `n` instances (their ARNs) and the task definition `agent:1`.
    async fn cluster(&self, cluster: &str, n: usize) -> Vec<String> {
        self.ecs.create_cluster(cluster).await.unwrap();
        self.ecs.register_task_definition("agent").await.unwrap();
        self.ecs.register_instances(cluster, n).await.unwrap()
    }

    /// A cluster of `instances` instances each running `per_instance` tasks of `agent` (not started
    /// by blox), as moto describes them.
    async fn running_tasks(&self, cluster: &str, instances: usize, per_instance: usize) -> Vec<Task> {
        let instances = self.cluster(cluster, instances).await;
        let mut arns = Vec::new();
        for _ in 0..per_instance {
            let started = self.ecs.start_tasks(cluster, "agent", &instances, None).await;
            arns.extend(started.expect("StartTask"));
        }
        let tasks = self.feed.ecs().describe_tasks(cluster, &arns).await.unwrap();
        assert_eq!(tasks.len(), arns.len());
        tasks
    }

    /// Starts r1, r2 and r3 at once with the common flags and `extra`, and waits until they agree on
    /// a leader: its index.
    async fn start_replicas(&mut self, extra: &[&str]) -> usize {
        let starts = (1..=3).map(|n| self.replica(format!("r{n}"), extra));
        self.replicas = futures::future::join_all(starts).await;
        self.agreed_leader(&[0, 1, 2]).await
    }

    async fn replica(&self, id: String, extra: &[&str]) -> Replica {
        let proxy = StartTaskFaultProxy::start(&self.moto).await.expect("ECS proxy");
        let store = format!("etcd:{}", self.etcd.endpoint());
        let lease = format!("{}s", LEASE.as_secs());
        let mut args = vec![
            "server",
            "--listen",
            "127.0.0.1:0",
            "--store",
            &store,
            "--etcd-prefix",
            PREFIX,
            "--leader-lease",
            &lease,
            "--replica-id",
            &id,
            "--queue",
            QUEUE,
            "--reconcile-interval",
            "1s",
            "--scheduler-interval",
            "1s",
            // What a killed leader had received comes back to the next one after this.
            "--visibility-timeout",
            "5s",
        ];
        args.extend_from_slice(extra);
        let process = BloxProcess::start(BLOX, args, &proxy.env())
            .await
            .expect("blox starts");
        Replica {
            id,
            process,
            ecs: proxy,
        }
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.replicas.iter().position(|r| r.id == id)
    }

    /// Waits until every replica of `alive` names the same leader, one of them: its index.
    async fn agreed_leader(&self, alive: &[usize]) -> usize {
        let found = Cell::new(None);
        wait_until("the replicas agree on a leader", DEADLINE, || async {
            let mut named = BTreeSet::new();
            for &i in alive {
                named.insert(self.replicas[i].leader().await);
            }
            let agreed = match Vec::from_iter(named).as_slice() {
                [Some(id)] => self.index_of(id).filter(|i| alive.contains(i)),
                _ => None,
            };
            found.set(agreed);
            agreed.is_some()
        })
        .await;
        found.get().expect("checked")
    }

    /// Waits until a follower among `alive` names another replica of `alive` as leader: its index.
    /// Waits well past [`FAILOVER`], so that a slow failover is reported with its time.
    async fn new_leader(&self, alive: &[usize], old: usize) -> usize {
        let found = Cell::new(None);
        let what = format!("a replica other than {} leads", self.replicas[old].id);
        wait_until(&what, DEADLINE, || async {
            for &i in alive {
                let Some(leader) = self.replicas[i].leader().await else {
                    continue;
                };
                let index = self.index_of(&leader);
                if leader != self.replicas[i].id && index.is_some_and(|l| l != old && alive.contains(&l)) {
                    found.set(index);
                    return true;
                }
            }
            false
        })
        .await;
        found.get().expect("checked")
    }

    /// The indexes of the replicas other than `leader`.
    fn others(&self, leader: usize) -> Vec<usize> {
        (0..self.replicas.len()).filter(|&i| i != leader).collect()
    }

    /// Kills the leader (SIGKILL) and waits until a surviving follower names a new leader; checks
    /// that it took at most [`FAILOVER`]. Returns the new leader's index.
    async fn kill_leader(&self, leader: usize, what: &str) -> usize {
        self.replicas[leader].process.crash().await;
        let killed = Instant::now();
        let new = self.new_leader(&self.others(leader), leader).await;
        self.failed_over(what, "SIGKILL", leader, new, killed.elapsed());
        new
    }

    /// Reports a failover and checks that it took at most [`FAILOVER`].
    fn failed_over(&self, what: &str, signal: &str, old: usize, new: usize, elapsed: Duration) {
        let (old, new) = (&self.replicas[old].id, &self.replicas[new].id);
        eprintln!("FAILOVER {what}: {signal} of leader {old}; {new} named leader after {elapsed:?}");
        assert!(
            elapsed <= FAILOVER,
            "{what}: {new} led {elapsed:?} after the {signal} of {old}: more than the lease ({LEASE:?}) plus 2 s"
        );
    }

    /// The tasks moto holds that `deployment` started (`startedBy`), stopped ones included.
    async fn deployment_tasks(&self, cluster: &str, deployment: &str) -> Vec<Task> {
        let mut tasks = self.ecs.all_tasks(cluster).await.expect("moto lists its tasks");
        tasks.retain(|t| t.started_by.as_deref() == Some(deployment));
        tasks
    }

    /// Instances on which `deployment` has a task that is not STOPPED.
    async fn covered(&self, cluster: &str, deployment: &str) -> usize {
        let tasks = self.deployment_tasks(cluster, deployment).await;
        tasks_by_instance(tasks.into_iter().filter(|t| t.last_status != "STOPPED")).len()
    }

    /// Checks that each of `instances` carries exactly one task of `deployment`, RUNNING, and never
    /// carried another (moto lists stopped tasks too), and that no other instance carries any.
    async fn one_task_per_instance(&self, cluster: &str, deployment: &str, instances: &[String]) {
        let tasks = tasks_by_instance(self.deployment_tasks(cluster, deployment).await);
        let wrong: Vec<(&String, Vec<&str>)> = tasks
            .iter()
            .filter(|(_, tasks)| tasks.len() != 1 || tasks[0].last_status != "RUNNING")
            .map(|(instance, tasks)| (instance, tasks.iter().map(|t| t.last_status.as_str()).collect()))
            .collect();
        assert!(
            wrong.is_empty(),
            "{deployment}: not one RUNNING task on {wrong:?}"
        );
        let on: BTreeSet<&String> = tasks.keys().collect();
        assert_eq!(
            on,
            BTreeSet::from_iter(instances),
            "{deployment}: the instances with a task"
        );
    }
}

/// Creates environment `name` of `agent` through `api` and deploys its first revision: the
/// deployment's id.
async fn create_and_deploy(api: &Api, cluster: &str, name: &str) -> String {
    api.ok(
        Method::POST,
        &format!("/v1/{cluster}/environments"),
        Some(json!({"environmentName": name, "taskDefinition": "agent"})),
    )
    .await;
    api.deploy(cluster, name, 1).await
}

/// SIGKILL of the leader while 300 task events flow (three versions of 100 tasks, 10 every 100 ms):
/// another replica leads within the lease plus 2 s, and every event ends up in the store (the
/// messages the dead leader held come back after the visibility timeout).
#[tokio::test]
async fn a_leader_killed_while_events_flow_loses_none() {
    const ROUNDS: u64 = 3;
    let mut h = Harness::new().await;
    let tasks = h.running_tasks("prod", 20, 5).await;
    let leader = h.start_replicas(&[]).await;

    let sent = AtomicUsize::new(0);
    let publish = async {
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        for _ in 0..ROUNDS {
            for batch in tasks.chunks(10) {
                pace.tick().await;
                h.feed.send_tasks(batch).await.expect("events sent");
                sent.fetch_add(batch.len(), Ordering::SeqCst);
            }
        }
    };
    let kill = async {
        wait_until("a third of the events is sent", DEADLINE, || async {
            sent.load(Ordering::SeqCst) >= tasks.len()
        })
        .await;
        h.kill_leader(leader, "while events flow").await
    };
    let ((), new_leader) = tokio::join!(publish, kill);
    assert_eq!(sent.load(Ordering::SeqCst), 300);

    for i in h.others(leader) {
        let replica = &h.replicas[i];
        let client = Client::new(replica.api().base_url());
        let what = format!("{} serves every task at version {ROUNDS}", replica.id);
        wait_until(&what, DEADLINE, || async {
            client.list_tasks(&TaskQuery::default()).await.is_ok_and(|list| {
                let latest: BTreeMap<&str, u64> = list
                    .items
                    .iter()
                    .map(|t| (t.entity.task_arn.as_str(), t.entity.version))
                    .collect();
                latest.len() == tasks.len()
                    && tasks
                        .iter()
                        .all(|t| latest.get(t.task_arn.as_str()) == Some(&ROUNDS))
            })
        })
        .await;
    }
    assert_eq!(h.agreed_leader(&h.others(leader)).await, new_leader);
}

/// SIGKILL of the leader midway through a deployment onto 200 instances (two StartTask calls of 10
/// instances a second): the new leader completes it, and no instance ever carries two tasks of the
/// deployment (moto polled throughout, stopped tasks included), each one at the end.
#[tokio::test]
async fn a_leader_killed_mid_deployment_leaves_it_to_the_next_without_duplicates() {
    const INSTANCES: usize = 200;
    let mut h = Harness::new().await;
    let instances = h.cluster("prod", INSTANCES).await;
    let leader = h.start_replicas(&["--scheduler-calls-per-second", "2"]).await;
    let follower = h.replicas[h.others(leader)[0]].api();
    let id = create_and_deploy(follower, "prod", "agent").await;

    let done = AtomicBool::new(false);
    let polls = AtomicUsize::new(0);
    let doubled = Mutex::new(BTreeMap::new());
    let watch = async {
        let mut pace = tokio::time::interval(Duration::from_millis(200));
        while !done.load(Ordering::SeqCst) {
            pace.tick().await;
            for (instance, tasks) in tasks_by_instance(h.deployment_tasks("prod", &id).await) {
                if tasks.len() > 1 {
                    let arns: Vec<String> = tasks.into_iter().map(|t| t.task_arn).collect();
                    doubled.lock().unwrap().insert(instance, arns);
                }
            }
            polls.fetch_add(1, Ordering::SeqCst);
        }
    };
    let roll_out = async {
        wait_until("the rollout is under way", DEADLINE, || async {
            h.covered("prod", &id).await >= INSTANCES / 5
        })
        .await;
        let new = h.kill_leader(leader, "mid-deployment").await;
        let at_kill = h.covered("prod", &id).await;
        eprintln!("the leader was killed with {at_kill} of {INSTANCES} daemons started");
        assert!(
            at_kill < INSTANCES,
            "the leader was killed after the rollout ended"
        );
        h.replicas[new]
            .api()
            .wait_completed("prod", "agent", &id, INSTANCES, Duration::from_secs(120))
            .await;
        done.store(true, Ordering::SeqCst);
    };
    tokio::join!(watch, roll_out);
    let doubled = doubled.into_inner().unwrap();
    assert!(
        doubled.is_empty(),
        "instances with two tasks of the deployment: {doubled:?}"
    );
    assert!(polls.load(Ordering::SeqCst) >= 2, "moto was polled throughout");
    h.one_task_per_instance("prod", &id, &instances).await;
}

/// SIGSTOP of the leader in the middle of a rollout, until another replica leads; a second
/// deployment is started meanwhile, so that work is pending when it wakes. While it wakes (SIGCONT)
/// the new leader is frozen too, for a moment: whatever etcd records then is the woken replica's, and
/// etcd must record nothing. It steps down (role follower, `blox_leader` 0, one `lost`), never leads
/// again and asks ECS to start or stop nothing more (its own ECS proxy counts); the new leader
/// completes both deployments, one task per instance each.
#[tokio::test]
async fn a_leader_frozen_past_its_lease_steps_down_and_acts_no_more() {
    const INSTANCES: usize = 30;
    let mut h = Harness::new().await;
    let instances = h.cluster("prod", INSTANCES).await;
    // Two StartTask calls of 10 instances a second: the rollout takes a few seconds.
    let old = h.start_replicas(&["--scheduler-calls-per-second", "2"]).await;
    let others = h.others(old);
    let api = h.replicas[others[0]].api();
    let first = create_and_deploy(api, "prod", "agent").await;
    wait_until("the rollout is under way", DEADLINE, || async {
        h.covered("prod", &first).await >= 10
    })
    .await;

    let frozen = &h.replicas[old];
    frozen.process.pause().await;
    let paused = Instant::now();
    let new = h.new_leader(&others, old).await;
    h.failed_over("of a frozen leader", "SIGSTOP", old, new, paused.elapsed());
    let second = create_and_deploy(api, "prod", "other").await;
    // Asked before it froze: every request it sent has arrived by now.
    let asked = frozen.ecs.operations();

    let mut etcd = etcd_client::Client::connect([h.etcd.endpoint()], None)
        .await
        .expect("etcd client");
    let successor = &h.replicas[new];
    successor.process.pause().await;
    let before = settled_revision(&etcd).await;
    frozen.process.resume();
    let woken = Instant::now();
    // Short: the successor, frozen meanwhile, must keep its lease (renewed every second).
    wait_until(
        "the woken leader steps down",
        Duration::from_millis(1500),
        || async {
            frozen.role().await.as_deref() == Some("follower") && frozen.leadership().await == (0.0, 1.0, 1.0)
        },
    )
    .await;
    let stepped_down = woken.elapsed();
    let after = revision(&mut etcd).await;
    successor.process.resume();
    eprintln!("the woken leader stepped down {stepped_down:?} after SIGCONT");
    if after != before {
        let options = etcd_client::GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_min_mod_revision(before + 1);
        let written = etcd.get(PREFIX, Some(options)).await.expect("etcd get");
        let keys: Vec<String> = written
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        panic!("etcd went from revision {before} to {after} while only the woken leader ran: {keys:?}");
    }
    let counted = (
        frozen.api().counter(TASKS_STARTED).await,
        frozen.api().counter(TASKS_STOPPED).await,
    );

    let survivor = successor.api();
    survivor
        .wait_completed("prod", "agent", &first, INSTANCES, DEADLINE)
        .await;
    survivor
        .wait_completed("prod", "other", &second, INSTANCES, DEADLINE)
        .await;
    h.one_task_per_instance("prod", &first, &instances).await;
    h.one_task_per_instance("prod", &second, &instances).await;
    assert_eq!(
        frozen.leadership().await,
        (0.0, 1.0, 1.0),
        "the woken replica never led again"
    );
    assert_eq!(frozen.role().await.as_deref(), Some("follower"));
    assert_eq!(
        successor.leadership().await,
        (1.0, 1.0, 0.0),
        "the successor kept its lead"
    );
    // Reads (a pass under way when it froze) are harmless; anything else would act as leader.
    let asked_since: Vec<(String, u64)> = frozen
        .ecs
        .operations()
        .into_iter()
        .filter(|(operation, n)| asked.get(operation) != Some(n))
        .collect();
    eprintln!("ECS requests of the woken replica after it froze: {asked_since:?}");
    let acted: Vec<&(String, u64)> = asked_since
        .iter()
        .filter(|(operation, _)| !(operation.starts_with("List") || operation.starts_with("Describe")))
        .collect();
    assert!(
        acted.is_empty(),
        "the woken replica asked ECS to act: {acted:?} (before it froze: {asked:?})"
    );
    assert_eq!(
        (
            frozen.api().counter(TASKS_STARTED).await,
            frozen.api().counter(TASKS_STOPPED).await
        ),
        counted,
        "tasks started and stopped by the woken replica"
    );
}

/// etcd's revision (a linearizable read).
async fn revision(etcd: &mut etcd_client::Client) -> i64 {
    let answer = etcd.get(PREFIX, None).await.expect("etcd get");
    answer.header().expect("a response header").revision()
}

/// etcd's revision once it is the same twice in a row: what was in flight towards etcd has landed.
async fn settled_revision(etcd: &etcd_client::Client) -> i64 {
    let last = Cell::new(-1);
    wait_until("etcd's revision settles", DEADLINE, || async {
        let now = revision(&mut etcd.clone()).await;
        last.replace(now) == now
    })
    .await;
    last.get()
}

/// A task change as a stream delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    entity_version: u64,
    arn: String,
    version: u64,
}

/// `GET /v1/stream/tasks` read on a task of its own.
struct Reader {
    seen: Arc<Mutex<Vec<Seen>>>,
    ended: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    /// Opens the stream from `entity_version` (inclusive); panics unless it opens.
    async fn open(replica: &Replica, entity_version: u64) -> Reader {
        let query = StreamQuery {
            entity_version: Some(entity_version),
            ..StreamQuery::default()
        };
        let stream = Client::new(replica.api().base_url())
            .stream_tasks(&query)
            .await
            .unwrap_or_else(|e| panic!("{}: the stream opens from {entity_version}: {e}", replica.id));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let ended: Arc<Mutex<Option<String>>> = Arc::default();
        let (into, end) = (Arc::clone(&seen), Arc::clone(&ended));
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(record) = stream.next().await {
                match record {
                    Ok(record) => into.lock().unwrap().push(Seen {
                        entity_version: record.metadata.entity_version.parse().expect("a number"),
                        arn: record.entity.task_arn,
                        version: record.entity.version,
                    }),
                    Err(e) => {
                        *end.lock().unwrap() = Some(e.to_string());
                        return;
                    }
                }
            }
            *end.lock().unwrap() = Some("the server closed the stream".to_owned());
        });
        Reader { seen, ended, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Checks that the stream is still open.
    fn open_still(&self) {
        let ended = self.ended.lock().unwrap().clone();
        assert!(ended.is_none(), "the stream ended: {ended:?}");
    }

    /// The latest version seen of each task.
    fn latest(&self) -> BTreeMap<String, u64> {
        latest(&self.seen())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn latest(seen: &[Seen]) -> BTreeMap<String, u64> {
    let mut latest = BTreeMap::new();
    for s in seen {
        let version = latest.entry(s.arn.clone()).or_default();
        *version = s.version.max(*version);
    }
    latest
}

/// A task stream opened on a follower follows the leader's writes; the leader is killed while events
/// flow, and the stream is reopened on the other follower after the last entityVersion seen: the two
/// streams together are the change log's task changes, each once, in order (a third stream read from
/// the start is the reference), with every task's latest change.
#[tokio::test]
async fn a_stream_resumed_on_another_replica_has_no_gap_and_no_repeat() {
    let mut h = Harness::new().await;
    let tasks = h.running_tasks("prod", 10, 4).await;
    let leader = h.start_replicas(&[]).await;
    let others = h.others(leader);
    let (first_replica, second_replica) = (&h.replicas[others[0]], &h.replicas[others[1]]);
    let every = |latest: BTreeMap<String, u64>, version: u64| {
        latest.len() == tasks.len() && latest.values().all(|&v| v == version)
    };

    let first = Reader::open(first_replica, 0).await;
    h.feed.send_tasks(&tasks).await.unwrap();
    wait_until(
        "the first stream sees version 1 of every task",
        DEADLINE,
        || async { every(first.latest(), 1) },
    )
    .await;

    // Version 2, 5 tasks every 100 ms; the leader dies once the stream has seen some.
    let publish = async {
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        for batch in tasks.chunks(5) {
            pace.tick().await;
            h.feed.send_tasks(batch).await.unwrap();
        }
    };
    let switch = async {
        wait_until("the first stream sees some of version 2", DEADLINE, || async {
            first.seen().iter().filter(|s| s.version == 2).count() >= 5
        })
        .await;
        h.replicas[leader].process.crash().await;
        let killed = Instant::now();
        first.open_still();
        let seen = first.seen();
        drop(first);
        // A resume is inclusive: from the version after the last one seen, so that none repeats.
        let last = seen.last().expect("records").entity_version;
        let second = Reader::open(second_replica, last + 1).await;
        (seen, second, killed)
    };
    let ((), (first_seen, second, killed)) = tokio::join!(publish, switch);
    let new = h.new_leader(&others, leader).await;
    h.failed_over("under a stream", "SIGKILL", leader, new, killed.elapsed());
    h.feed.send_tasks(&tasks).await.unwrap();
    let all = || [first_seen.clone(), second.seen()].concat();
    wait_until("the streams see version 3 of every task", DEADLINE, || async {
        every(latest(&all()), 3)
    })
    .await;
    second.open_still();

    let all = all();
    let positions: Vec<u64> = all.iter().map(|s| s.entity_version).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "entityVersions not strictly increasing across the two streams: {positions:?}"
    );
    let last = *positions.last().expect("records");
    let reference = Reader::open(second_replica, 0).await;
    wait_until("the reference stream catches up", DEADLINE, || async {
        reference.seen().last().is_some_and(|s| s.entity_version >= last)
    })
    .await;
    let mut expected = reference.seen();
    expected.retain(|s| s.entity_version <= last);
    eprintln!(
        "streamed {} task changes on {} then {} after entityVersion {} on {}",
        first_seen.len(),
        first_replica.id,
        all.len() - first_seen.len(),
        first_seen.last().expect("records").entity_version,
        second_replica.id
    );
    assert!(
        expected == all,
        "the two streams ({} records) are not the log's task changes ({} records); first difference at {:?}",
        all.len(),
        expected.len(),
        expected.iter().zip(&all).find(|(e, a)| e != a)
    );
    let listed = Client::new(second_replica.api().base_url())
        .list_tasks(&TaskQuery::default())
        .await
        .unwrap();
    for task in listed.items {
        let position: u64 = task.metadata.entity_version.parse().unwrap();
        assert!(
            all.iter()
                .any(|s| s.entity_version == position && s.arn == task.entity.task_arn && s.version == 3),
            "the latest change of {} ({position}) was not streamed",
            task.entity.task_arn
        );
    }
}

/// Ten rounds of r1 and r2 asked at the same moment to create one environment name, r1 in
/// `clusters[0]` and r2 in `clusters[1]`: checks that exactly one of each pair creates it and the other
/// answers 409 `EnvironmentExists`. Returns the harness and the names.
async fn race_to_create(clusters: [&str; 2]) -> (Harness, Vec<String>) {
    let mut h = Harness::new().await;
    for cluster in BTreeSet::from(clusters) {
        h.cluster(cluster, 1).await;
    }
    h.start_replicas(&[]).await;
    let (a, b) = (h.replicas[0].api(), h.replicas[1].api());
    let names: Vec<String> = (0..10).map(|round| format!("race{round}")).collect();
    for name in &names {
        let body = json!({"environmentName": name, "taskDefinition": "agent"});
        let paths = clusters.map(|cluster| format!("/v1/{cluster}/environments"));
        let answers = tokio::join!(
            a.call(Method::POST, &paths[0], Some(body.clone())),
            b.call(Method::POST, &paths[1], Some(body.clone())),
        );
        let answers = [answers.0, answers.1];
        let mut statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409], "{name}: {answers:?}");
        let refused = answers.iter().find(|(status, _)| *status == 409);
        assert_eq!(
            refused.expect("checked").1["code"],
            "EnvironmentExists",
            "{name}: {refused:?}"
        );
    }
    (h, names)
}

/// Two replicas asked at the same moment to create one environment in one cluster: one creates it,
/// the other answers 409, round after round; the third lists each once.
#[tokio::test]
async fn two_replicas_creating_one_environment_at_once_create_it_once() {
    let (h, names) = race_to_create(["prod", "prod"]).await;
    let listed = h.replicas[2]
        .api()
        .ok(Method::GET, "/v1/prod/environments", None)
        .await;
    assert_eq!(listed["environmentNames"], json!(names));
}

/// Environment names are unique across clusters: two replicas asked at the same moment to create one
/// name, each in another cluster, create it once.
#[tokio::test]
async fn two_replicas_creating_one_name_in_two_clusters_at_once_create_it_once() {
    race_to_create(["prod", "dev"]).await;
}
