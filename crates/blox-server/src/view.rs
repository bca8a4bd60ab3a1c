//! The in-memory view: every cluster's instances and scheduler-group tasks ([`ClusterView`]) and every
//! scheduler document, parsed once and kept current by one reader of the store's change log (kube-rs's
//! reflector). The executor plans from it instead of re-reading the store; the API computes live
//! counts from it. Writers never wait for it: it follows the change log at its own pace.
//!
//! The executor is woken by changes that can alter a plan and that it did not write itself: the feed
//! queues their sequence numbers ([`View::take_relevant`]), and the executor drops its own.
//!
//! It also keeps every container instance's stored body, so that a cluster query (`GET
//! /v1/instances?filter=`, an instance group's `query`) is answered from memory: decoding 10,000
//! stored instances per request would cost ~100 ms. The groups of every task (not only the
//! scheduler's), which `task:group` reads, are loaded only once something asks for them
//! ([`View::task_groups`]): reading every task at start would fill the store's page cache and
//! double the process's memory for a predicate few use. From then on they follow the change log.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use blox_model::daemon::{
    ClusterView, Deployment, Doc, Environment, InstanceFailure, Revision, Snapshot, StartIntent,
};
use blox_model::{ClusterName, ContainerInstance, Task};
use blox_store::{Change, Filter, Kind, PageRequest, Store, StoreError};
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::documents;
use crate::environments::list_all;

/// A scheduler document with the sequence number of its last change.
#[derive(Debug, Clone)]
pub struct Entry<T> {
    pub seq: u64,
    pub cluster: ClusterName,
    pub doc: Arc<T>,
}

/// Everything the view holds.
#[derive(Debug, Default)]
pub struct ViewState {
    pub clusters: BTreeMap<ClusterName, ClusterView>,
    /// By name (names are unique across clusters).
    pub environments: BTreeMap<String, Entry<Environment>>,
    /// By (environment, number).
    pub revisions: BTreeMap<(String, u64), Entry<Revision>>,
    pub deployments: HashMap<String, Entry<Deployment>>,
    /// Environment → its deployments' ids.
    pub deployments_of: HashMap<String, BTreeSet<String>>,
    /// By store id (`deployment/instance`).
    pub intents: BTreeMap<String, Entry<StartIntent>>,
    pub failures: BTreeMap<String, Entry<InstanceFailure>>,
    /// Every container instance's stored body and the sequence number of its last change, by
    /// cluster and ARN: what a filtered listing answers with.
    pub instance_records: HashMap<ClusterName, HashMap<Arc<str>, (u64, bytes::Bytes)>>,
    /// The last change applied.
    pub applied: u64,
    /// Every task's status, by cluster, for the dashboard's counts: complete once every task's group
    /// is known ([`View::knows_task_groups`]), which loads them all.
    pub task_statuses: HashMap<ClusterName, TaskTally>,
    /// While every task's group is being loaded (`task:group`; `View::task_groups`): the tasks whose
    /// changes the view applied meanwhile, which the load must not overwrite with what it read
    /// (maybe older). `None` when no load runs.
    touched: Option<HashSet<String>>,
    /// Loads of the whole view so far: a load of the task groups begun before a reload stops.
    generation: u64,
}

/// What a task status ECS does not document is counted as.
pub const OTHER_STATUS: &str = "OTHER";

/// Every task of a cluster, counted by status (ECS's [`blox_model::TASK_STATUSES`], then
/// [`OTHER_STATUS`]). Keyed by a hash of the ARN, as the cluster view's task groups are, so that
/// 100,000 tasks cost ~2 MB rather than their ARNs.
#[derive(Debug, Default)]
pub struct TaskTally {
    of: HashMap<u64, u8>,
    counts: [u64; blox_model::TASK_STATUSES.len() + 1],
}

impl TaskTally {
    /// A task's status now; `None` once it is deleted from the store.
    fn note(&mut self, arn: &str, status: Option<&str>) {
        let key = blox_model::daemon::task_key(arn);
        if let Some(old) = self.of.remove(&key) {
            self.counts[usize::from(old)] -= 1;
        }
        if let Some(status) = status {
            let at = blox_model::TASK_STATUSES
                .iter()
                .position(|s| *s == status)
                .unwrap_or(blox_model::TASK_STATUSES.len());
            self.of.insert(key, at as u8);
            self.counts[at] += 1;
        }
    }

    /// How many tasks have each status, every status listed.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        let names = blox_model::TASK_STATUSES.iter().copied().chain([OTHER_STATUS]);
        names.zip(self.counts.iter().copied())
    }

    pub fn total(&self) -> u64 {
        self.of.len() as u64
    }
}

/// What one step of the change-log reader applied: the kinds, clusters and environments it touched.
/// What live pages (the dashboard's server-sent events) follow: one reader feeds every subscriber.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// The last change applied.
    pub seq: u64,
    /// When the view applied it, in milliseconds since the epoch.
    pub at_ms: u64,
    /// The view reloaded (it fell behind the change log): anything may have changed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reload: bool,
    pub kinds: BTreeSet<&'static str>,
    pub clusters: BTreeSet<String>,
    pub environments: BTreeSet<String>,
}

impl Applied {
    /// Folds a later step into this one.
    pub fn merge(&mut self, later: &Applied) {
        self.seq = self.seq.max(later.seq);
        self.at_ms = self.at_ms.max(later.at_ms);
        self.reload |= later.reload;
        self.kinds.extend(later.kinds.iter().copied());
        self.clusters.extend(later.clusters.iter().cloned());
        self.environments.extend(later.environments.iter().cloned());
    }
}

/// Steps of the feed buffered per subscriber; one that falls further behind is told to reload.
const FEED_CAPACITY: usize = 1_024;

/// What the view keeps of a task outside the scheduler's groups: where it runs and its group (for
/// `task:group`), read without parsing the rest of the body.
#[derive(serde::Deserialize)]
struct TaskPlacement<'a> {
    #[serde(
        borrow,
        default,
        rename = "containerInstanceARN",
        alias = "containerInstanceArn"
    )]
    instance: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    group: Option<Cow<'a, str>>,
}

impl ViewState {
    /// One environment's documents, as [`crate::environments::load`] would read them.
    pub fn snapshot(&self, name: &str) -> Option<Snapshot> {
        let env = self.environments.get(name)?;
        let ids = self.deployments_of.get(name);
        let deployments: Vec<Deployment> = ids
            .into_iter()
            .flatten()
            .filter_map(|id| self.deployments.get(id))
            .map(|e| (*e.doc).clone())
            .collect();
        let is_ours = |deployment: &str| ids.is_some_and(|ids| ids.contains(deployment));
        Some(Snapshot {
            environment: Some((*env.doc).clone()),
            revisions: self
                .revisions
                .range((name.to_owned(), 0)..=(name.to_owned(), u64::MAX))
                .map(|(_, e)| (*e.doc).clone())
                .collect(),
            deployments,
            intents: self
                .intents
                .values()
                .filter(|e| is_ours(&e.doc.deployment_id))
                .map(|e| (*e.doc).clone())
                .collect(),
            failures: self
                .failures
                .values()
                .filter(|e| is_ours(&e.doc.deployment_id))
                .map(|e| (*e.doc).clone())
                .collect(),
        })
    }

    /// The environment a document belongs to, if any (looked up before the change is applied, so
    /// that a deletion still finds its deployment).
    fn environment_of(&self, doc: &blox_store::Document) -> Option<String> {
        let of_deployment = |id: &str| self.deployments.get(id).map(|e| e.doc.environment.clone());
        match doc.key.kind {
            Kind::Environment => Some(doc.key.id.clone()),
            Kind::Revision | Kind::Deployment => doc.started_by.clone(),
            Kind::Intent | Kind::Failure | Kind::Task => doc.started_by.as_deref().and_then(of_deployment),
            Kind::Instance | Kind::Name => None,
        }
    }

    /// Whether a task change can matter: started by a known deployment, or already in view.
    fn wants_task(&self, doc: &blox_store::Document) -> bool {
        doc.started_by
            .as_deref()
            .is_some_and(|s| self.deployments.contains_key(s))
            || self
                .clusters
                .get(&doc.key.cluster)
                .is_some_and(|c| c.task(&doc.key.id).is_some())
    }

    /// Applies one change; returns whether it can change a plan.
    fn apply(&mut self, change: &Change, now_ms: u64) -> Result<bool, documents::DocumentError> {
        if change.seq <= self.applied {
            return Ok(false);
        }
        self.applied = change.seq;
        let doc = &change.doc;
        let cluster = doc.key.cluster.clone();
        match doc.key.kind {
            Kind::Instance => {
                if change.deleted {
                    if let Some(view) = self.clusters.get_mut(&cluster) {
                        view.remove_instance(&doc.key.id);
                    }
                    if let Some(records) = self.instance_records.get_mut(&cluster) {
                        records.remove(doc.key.id.as_str());
                    }
                } else {
                    let instance: ContainerInstance = documents::parse(doc)?;
                    let view = self.clusters.entry(cluster.clone()).or_default();
                    view.upsert_instance(&instance);
                    let arn = view
                        .instance(&instance.container_instance_arn)
                        .map(|i| i.arn.clone())
                        .unwrap_or_else(|| instance.container_instance_arn.as_str().into());
                    self.instance_records
                        .entry(cluster.clone())
                        .or_default()
                        .insert(arn, (change.seq, bytes::Bytes::copy_from_slice(&doc.body)));
                }
                Ok(self.environments.values().any(|e| e.cluster == cluster))
            }
            Kind::Task => {
                if let Some(touched) = &mut self.touched {
                    touched.insert(doc.key.id.clone());
                }
                let status = (!change.deleted).then_some(doc.status.as_str());
                self.task_statuses
                    .entry(cluster.clone())
                    .or_default()
                    .note(&doc.key.id, status);
                if !self.wants_task(doc) {
                    let view = self.clusters.entry(cluster).or_default();
                    if change.deleted {
                        view.remove_task(&doc.key.id);
                    } else {
                        let placement: TaskPlacement<'_> = documents::parse_borrowed(doc)?;
                        view.note_task_group(
                            &doc.key.id,
                            placement.instance.as_deref(),
                            placement.group.as_deref(),
                            &doc.status,
                        );
                    }
                    return Ok(false);
                }
                if change.deleted {
                    if let Some(view) = self.clusters.get_mut(&cluster) {
                        view.remove_task(&doc.key.id);
                    }
                } else {
                    let task: Task = documents::parse(doc)?;
                    self.clusters
                        .entry(cluster)
                        .or_default()
                        .upsert_task(&task, now_ms);
                }
                Ok(true)
            }
            // A name's reservation tells the view nothing its environment does not.
            Kind::Name => Ok(false),
            Kind::Environment | Kind::Revision | Kind::Deployment | Kind::Intent | Kind::Failure => {
                let Some(parsed) = documents::parse_scheduler_doc(doc)? else {
                    return Ok(false);
                };
                self.apply_doc(change.seq, cluster, parsed, change.deleted);
                Ok(true)
            }
        }
    }

    fn apply_doc(&mut self, seq: u64, cluster: ClusterName, doc: Doc, deleted: bool) {
        fn entry<T>(seq: u64, cluster: ClusterName, doc: T) -> Entry<T> {
            Entry {
                seq,
                cluster,
                doc: Arc::new(doc),
            }
        }
        match doc {
            Doc::Environment(e) => {
                if deleted {
                    self.environments.remove(&e.name);
                } else {
                    self.environments.insert(e.name.clone(), entry(seq, cluster, e));
                }
            }
            Doc::Revision(r) => {
                let key = (r.environment.clone(), r.number);
                if deleted {
                    self.revisions.remove(&key);
                } else {
                    self.revisions.insert(key, entry(seq, cluster, r));
                }
            }
            Doc::Deployment(d) => {
                if deleted {
                    if let Some(ids) = self.deployments_of.get_mut(&d.environment) {
                        ids.remove(&d.id);
                        if ids.is_empty() {
                            self.deployments_of.remove(&d.environment);
                        }
                    }
                    self.deployments.remove(&d.id);
                } else {
                    self.deployments_of
                        .entry(d.environment.clone())
                        .or_default()
                        .insert(d.id.clone());
                    self.deployments.insert(d.id.clone(), entry(seq, cluster, d));
                }
            }
            Doc::Intent(i) => {
                let id = i.id();
                if deleted {
                    self.intents.remove(&id);
                } else {
                    self.intents.insert(id, entry(seq, cluster, i));
                }
            }
            Doc::Failure(f) => {
                let id = f.id();
                if deleted {
                    self.failures.remove(&id);
                } else {
                    self.failures.insert(id, entry(seq, cluster, f));
                }
            }
        }
    }
}

/// The view and its feed's signals.
pub struct View {
    state: RwLock<ViewState>,
    applied: watch::Sender<u64>,
    /// Whether every task's group is known: turns true once they are loaded, false again when the
    /// view reloads. Before, only the scheduler's tasks and the changes seen since the start are.
    groups_loaded: watch::Sender<bool>,
    /// Sequence numbers of applied changes that can change a plan, not yet taken by the executor.
    relevant: Mutex<Vec<u64>>,
    wake: Notify,
    clock: crate::clock::Clock,
    /// What each step applied, for live pages.
    feed: broadcast::Sender<Arc<Applied>>,
    /// The changes the view read last, for the streams (`View::changes_after`).
    recent: RwLock<Recent>,
}

/// Changes the view read from the change log are kept for the streams, at most this many: a stream
/// at the head reads them from here, so that the change log has one reader (the view's) for the
/// scheduler, the dashboard and every stream. ~1.5 KB each; a stream further behind reads the store.
const RECENT_CHANGES: usize = 2_048;

/// Every change after `after`, up to the last the view read, in order.
#[derive(Default)]
struct Recent {
    after: u64,
    changes: std::collections::VecDeque<Arc<Change>>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("applied", &*self.applied.borrow())
            .finish_non_exhaustive()
    }
}

impl View {
    pub fn new(clock: crate::clock::Clock) -> Arc<View> {
        Arc::new(View {
            state: RwLock::new(ViewState::default()),
            applied: watch::channel(0).0,
            groups_loaded: watch::channel(false).0,
            relevant: Mutex::new(Vec::new()),
            wake: Notify::new(),
            clock,
            feed: broadcast::channel(FEED_CAPACITY).0,
            recent: RwLock::new(Recent::default()),
        })
    }

    /// The changes after `after` (at most `limit`), when the view still holds every one of them:
    /// `None` when `after` is older than what it keeps (then read the store). Empty when the view
    /// has not read past `after` yet: wait for [`View::applied_changes`].
    pub fn changes_after(&self, after: u64, limit: usize) -> Option<Vec<Arc<Change>>> {
        let recent = self.recent.read().unwrap_or_else(|p| p.into_inner());
        if after < recent.after {
            return None;
        }
        let start = recent.changes.partition_point(|change| change.seq <= after);
        Some(recent.changes.range(start..).take(limit).cloned().collect())
    }

    /// Moves whenever the view has read and applied more of the change log.
    pub fn applied_changes(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Keeps what was read for the streams, before the view applies it (so that a stream woken by
    /// the view finds it).
    fn remember(&self, changes: &[Arc<Change>]) {
        let mut recent = self.recent.write().unwrap_or_else(|p| p.into_inner());
        recent.changes.extend(changes.iter().cloned());
        while recent.changes.len() > RECENT_CHANGES {
            if let Some(oldest) = recent.changes.pop_front() {
                recent.after = oldest.seq;
            }
        }
    }

    /// Follows what the view applies from now on. A subscriber that falls more than
    /// [`FEED_CAPACITY`] steps behind gets `Lagged` and should read everything anew.
    pub fn feed(&self) -> broadcast::Receiver<Arc<Applied>> {
        self.feed.subscribe()
    }

    /// Subscribers of the feed right now.
    pub fn feed_subscribers(&self) -> usize {
        self.feed.receiver_count()
    }

    /// A view fed from `store` until `shutdown`, its first load done before this returns.
    pub async fn spawn(
        store: Arc<dyn Store>,
        clock: crate::clock::Clock,
        shutdown: CancellationToken,
    ) -> Result<Arc<View>, StoreError> {
        let view = View::new(clock);
        view.load(store.as_ref()).await?;
        tokio::spawn(view.clone().follow(store, shutdown));
        Ok(view)
    }

    /// Whether every task's group is known; if not, starts loading them (once) from `store`. A
    /// planner that reads `task:group` must not plan before: a group it does not know matches no
    /// `==` and every `!=`.
    pub fn task_groups(self: &Arc<View>, store: &Arc<dyn Store>) -> bool {
        // Under the lock, which every change of the flag or of `touched` takes too.
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        if self.knows_task_groups() {
            return true;
        }
        if state.touched.is_none() {
            state.touched = Some(HashSet::new());
            tokio::spawn(self.clone().load_task_groups(store.clone()));
        }
        false
    }

    /// Whether every task's group is known.
    pub fn knows_task_groups(&self) -> bool {
        *self.groups_loaded.borrow()
    }

    /// Waits (at most `timeout`) until every task's group is known, starting the load if needed.
    pub async fn task_groups_loaded(self: &Arc<View>, store: &Arc<dyn Store>, timeout: Duration) -> bool {
        let mut loaded = self.groups_loaded.subscribe();
        if self.task_groups(store) {
            return true;
        }
        let wait = loaded.wait_for(|&done| done);
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(_)))
    }

    /// Reads every task's group and instance, a page at a time, and counts them; what the change log
    /// changed meanwhile wins. On a store error, the groups stay partial and the next ask tries again.
    async fn load_task_groups(self: Arc<View>, store: Arc<dyn Store>) {
        let generation = self.read().generation;
        let all = Filter::default();
        let mut after = None;
        let started = tokio::time::Instant::now();
        let mut read = 0usize;
        loop {
            let page = match store
                .list(
                    Kind::Task,
                    &all,
                    PageRequest {
                        after: after.take(),
                        limit: Some(1_000),
                    },
                )
                .await
            {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(error = %err, "the view could not load the tasks' groups; task:group waits");
                    let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
                    if state.generation == generation {
                        state.touched = None;
                    }
                    return;
                }
            };
            read += page.items.len();
            {
                let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
                if state.generation != generation {
                    return;
                }
                let ViewState {
                    clusters,
                    touched,
                    task_statuses,
                    ..
                } = &mut *state;
                for record in &page.items {
                    let doc = &record.doc;
                    if touched.as_ref().is_some_and(|t| t.contains(&doc.key.id)) {
                        continue;
                    }
                    task_statuses
                        .entry(doc.key.cluster.clone())
                        .or_default()
                        .note(&doc.key.id, Some(&doc.status));
                    match documents::parse_borrowed::<TaskPlacement<'_>>(doc) {
                        Ok(placement) => clusters
                            .entry(doc.key.cluster.clone())
                            .or_default()
                            .note_task_group(
                                &doc.key.id,
                                placement.instance.as_deref(),
                                placement.group.as_deref(),
                                &doc.status,
                            ),
                        Err(err) => tracing::warn!(error = %err, "the view skipped a task it cannot parse"),
                    }
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            if state.generation != generation {
                return;
            }
            state.touched = None;
            // Under the lock: a reload cannot slip in between.
            self.groups_loaded.send_replace(true);
        }
        tracing::info!(
            tasks = read,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "the view knows every task's group"
        );
    }

    /// Shows tasks as ECS just answered for them (StartTask, StopTask, DescribeTasks), ahead of the
    /// change log: the executor's next plan must not count a task it asked to stop as running
    /// because the store already held that version. The change log's later changes of these tasks
    /// apply over them as usual.
    pub fn observe_tasks(&self, cluster: &ClusterName, tasks: &[Task]) {
        let now = (self.clock)();
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        let view = state.clusters.entry(cluster.clone()).or_default();
        for task in tasks {
            view.upsert_task(task, now);
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, ViewState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The last change applied.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits until the view has applied every change up to `seq` (at most `timeout`); whether it has.
    pub async fn caught_up(&self, seq: u64, timeout: Duration) -> bool {
        let mut applied = self.applied.subscribe();
        let wait = applied.wait_for(|&a| a >= seq);
        matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(_)))
    }

    /// Waits until a change that can alter a plan has been applied.
    pub async fn relevant_change(&self) {
        let notified = self.wake.notified();
        if !self.lock_relevant().is_empty() {
            return;
        }
        notified.await;
    }

    /// The sequence numbers of relevant changes applied since the last call.
    pub fn take_relevant(&self) -> Vec<u64> {
        std::mem::take(&mut *self.lock_relevant())
    }

    fn lock_relevant(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.relevant.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads everything the view holds from the store, replacing what it held.
    async fn load(&self, store: &dyn Store) -> Result<(), StoreError> {
        let head = store.log_bounds().await?.head;
        let now = (self.clock)();
        let mut state = ViewState::default();
        let all = Filter::default();
        let mut changes = Vec::new();
        for kind in [
            Kind::Environment,
            Kind::Revision,
            Kind::Deployment,
            Kind::Intent,
            Kind::Failure,
        ] {
            for record in list_all(store, kind, &all).await? {
                changes.push(as_change(record));
            }
        }
        for record in list_all(store, Kind::Instance, &all).await? {
            changes.push(as_change(record));
        }
        apply_unordered(&mut state, &changes, now);
        // Only tasks some deployment started can be an environment's.
        let deployments: Vec<(ClusterName, String)> = state
            .deployments
            .values()
            .map(|e| (e.cluster.clone(), e.doc.id.clone()))
            .collect();
        let mut tasks = Vec::new();
        for (cluster, id) in deployments {
            let filter = Filter {
                cluster: Some(cluster),
                status: None,
                started_by: Some(id),
            };
            tasks.extend(
                list_all(store, Kind::Task, &filter)
                    .await?
                    .into_iter()
                    .map(as_change),
            );
        }
        apply_unordered(&mut state, &tasks, now);
        state.applied = head;
        *self.recent.write().unwrap_or_else(|p| p.into_inner()) = Recent {
            after: head,
            changes: Default::default(),
        };
        {
            let mut current = self.state.write().unwrap_or_else(|p| p.into_inner());
            // The task groups are partial again: the next ask loads them anew.
            state.generation = current.generation + 1;
            *current = state;
            self.groups_loaded.send_replace(false);
        }
        self.applied.send_replace(head);
        // What changed while loading comes next, from the change log after `head`.
        Ok(())
    }

    /// Follows the change log until `shutdown`; reloads when it fell behind the retained log.
    async fn follow(self: Arc<View>, store: Arc<dyn Store>, shutdown: CancellationToken) {
        let mut heads = store.subscribe();
        let mut failures = 0u32;
        loop {
            let after = self.applied();
            match store.changes(after, 1_000).await {
                Ok(changes) if changes.is_empty() => {
                    failures = 0;
                    tokio::select! {
                        changed = heads.changed() => if changed.is_err() { return },
                        () = shutdown.cancelled() => return,
                    }
                }
                Ok(changes) => {
                    failures = 0;
                    let changes: Vec<Arc<Change>> = changes.into_iter().map(Arc::new).collect();
                    self.remember(&changes);
                    self.apply(&changes);
                }
                Err(StoreError::Compacted { .. }) => {
                    tracing::warn!(after, "the view fell behind the change log; reloading");
                    if let Err(err) = self.load(store.as_ref()).await {
                        tracing::warn!(error = %err, "the view could not reload");
                    }
                    self.signal(vec![u64::MAX]);
                    let _ = self.feed.send(Arc::new(Applied {
                        seq: self.applied(),
                        at_ms: (self.clock)(),
                        reload: true,
                        ..Applied::default()
                    }));
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %err, after, "the view could not read the change log");
                    let pause = Duration::from_millis(100 * u64::from(failures.min(50)));
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    fn apply(&self, changes: &[Arc<Change>]) {
        let now = (self.clock)();
        let mut relevant = Vec::new();
        // Only worked out while somebody follows the feed.
        let mut applied = (self.feed.receiver_count() > 0).then(|| Applied {
            at_ms: now,
            ..Applied::default()
        });
        let last = {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            for change in changes {
                if let Some(applied) = &mut applied
                    && change.seq > state.applied
                {
                    applied.kinds.insert(change.doc.key.kind.name());
                    if change.doc.key.kind != Kind::Name {
                        applied.clusters.insert(change.doc.key.cluster.to_string());
                    }
                    if let Some(environment) = state.environment_of(&change.doc) {
                        applied.environments.insert(environment);
                    }
                }
                match state.apply(change, now) {
                    Ok(true) => relevant.push(change.seq),
                    Ok(false) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, seq = change.seq, "the view skipped a change it cannot parse")
                    }
                }
            }
            state.applied
        };
        // Queued before `applied` moves, so that a reader who sees `applied` finds every relevant
        // change up to it queued.
        self.signal(relevant);
        self.applied.send_replace(last);
        if let Some(mut applied) = applied
            && !applied.kinds.is_empty()
        {
            applied.seq = last;
            // No subscriber left is no error.
            let _ = self.feed.send(Arc::new(applied));
        }
    }

    fn signal(&self, relevant: Vec<u64>) {
        if relevant.is_empty() {
            return;
        }
        self.lock_relevant().extend(relevant);
        self.wake.notify_waiters();
    }
}

fn as_change(record: blox_store::Record) -> Change {
    Change {
        seq: record.seq,
        deleted: false,
        doc: record.doc,
    }
}

/// Applies listed records, which come in key order, not sequence order.
fn apply_unordered(state: &mut ViewState, changes: &[Change], now_ms: u64) {
    for change in changes {
        let applied = state.applied;
        state.applied = 0;
        if let Err(err) = state.apply(change, now_ms) {
            tracing::warn!(error = %err, key = %change.doc.key, "the view skipped a document it cannot parse");
        }
        state.applied = applied.max(change.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blox_store::{Document, Key, MemStore, StoreOptions, Write};

    fn task(n: u64) -> Write {
        Write::Upsert(Document {
            key: Key::task(ClusterName::new("c").unwrap(), format!("t{}", n % 50)),
            version: n,
            status: "RUNNING".into(),
            started_by: None,
            body: format!(r#"{{"n":{n}}}"#).into_bytes(),
        })
    }

    /// What the streams read from the view is what the store's change log holds after the same
    /// position, as long as the view keeps it; older positions are the store's to answer.
    #[tokio::test]
    async fn recent_changes_are_the_change_logs() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new(StoreOptions::default()));
        let shutdown = CancellationToken::new();
        store.apply((1..=10).map(task).collect()).await.unwrap();
        let view = View::spawn(store.clone(), crate::clock::wall(), shutdown.clone())
            .await
            .unwrap();
        // Loaded at 10: what came before is the store's.
        assert!(view.changes_after(9, 100).is_none());
        assert_eq!(view.changes_after(10, 100).unwrap(), vec![]);
        let total = RECENT_CHANGES as u64 + 500;
        for batch in (11..=total).collect::<Vec<_>>().chunks(300) {
            store
                .apply(batch.iter().copied().map(task).collect())
                .await
                .unwrap();
        }
        assert!(view.caught_up(total, Duration::from_secs(10)).await);
        let kept_from = total - RECENT_CHANGES as u64;
        for (after, limit) in [
            (kept_from, 5),
            (kept_from + 1, 1_000),
            (total - 3, 10),
            (total, 10),
        ] {
            let recent: Vec<Change> = view
                .changes_after(after, limit)
                .unwrap()
                .iter()
                .map(|change| (**change).clone())
                .collect();
            assert_eq!(
                recent,
                store.changes(after, limit).await.unwrap(),
                "after {after}"
            );
        }
        assert!(view.changes_after(kept_from - 1, 10).is_none());
        shutdown.cancel();
    }
}
