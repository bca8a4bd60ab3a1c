//! The simulator as blox's AWS boundary: one shared [`Ecs`] and [`EventQueue`] behind a clock, moved
//! along by a ticker that runs lifecycle steps and churn, and implementing [`EcsReader`],
//! [`EcsControl`] and [`EventSource`] the way the SDK adapters do (including waiting out throttling,
//! as the SDK's retries do).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use blox_aws::{
    ClusterDescription, DESCRIBE_BATCH, EcsControl, EcsError, EcsErrorKind, EcsReader, EventSource, Failure,
    ListPage, Listing, Message, QueueDepth, STARTED_TASKS_ORDER, SourceError, StartTask, Started,
    TaskDefinitionDescription, started_among,
};
use blox_model::{ContainerInstance, Task};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::ecs::{Ecs, Page, SimConfig, SimError, TaskFilter};
use crate::events::{EventQueue, Faults};
use crate::scenario::{Driver, Scenario};
use crate::throttle::Family;

/// Where the simulator's time comes from.
#[derive(Debug, Clone)]
pub enum Clock {
    /// Wall-clock milliseconds since the Unix epoch.
    Wall,
    /// Set by the test that owns it.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    pub fn manual(start_ms: u64) -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(start_ms)))
    }

    #[allow(clippy::disallowed_methods)] // the simulator's one wall-clock read
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::Wall => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            Clock::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward; a wall clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(ms) = self {
            ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        }
    }
}

/// How to open a simulator.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub config: SimConfig,
    pub seed: u64,
    pub faults: Faults,
    /// The world built when there is no saved state, and whose churn runs when `churn` is set.
    pub scenario: Option<Scenario>,
    pub churn: bool,
    /// Where the simulated account is kept across restarts: loaded at open, saved every
    /// `save_every` and at shutdown.
    pub state_file: Option<PathBuf>,
    pub save_every: Duration,
    /// How often lifecycle steps and churn run.
    pub tick: Duration,
    /// The queue's visibility timeout.
    pub visibility_timeout: Duration,
    /// How long an empty receive waits (SQS long poll).
    pub receive_wait: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            config: SimConfig::default(),
            seed: 1,
            faults: Faults::default(),
            scenario: None,
            churn: false,
            state_file: None,
            save_every: Duration::from_secs(30),
            tick: Duration::from_millis(20),
            visibility_timeout: Duration::from_secs(60),
            receive_wait: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, Error)]
pub enum SimStartError {
    #[error("reading simulator state {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("simulator state {path} is not a saved simulator: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("building the scenario: {0}")]
    Scenario(#[from] SimError),
}

#[derive(Debug, Error)]
#[error("saving simulator state to {path}: {message}")]
pub struct SaveError {
    pub path: PathBuf,
    pub message: String,
}

/// What a state file holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    ecs: Ecs,
    driver: Option<Driver>,
}

#[derive(Debug)]
struct Inner {
    ecs: RwLock<Ecs>,
    queue: Mutex<EventQueue>,
    driver: Mutex<Option<Driver>>,
    /// Wakes receivers when messages become visible.
    arrived: Notify,
    clock: Clock,
    last_tick_ms: AtomicU64,
    options: SimOptions,
    /// Per API family, the line throttled callers wait in.
    waiting: [tokio::sync::Mutex<()>; 4],
}

/// The shared simulator. Clones share one account.
#[derive(Debug, Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

/// The most churn one tick acts out.
const MAX_CHURN_STEP_MS: u64 = 1_000;

/// How long a call waits out throttling in all before giving up, like the SDK's retries.
const THROTTLE_PATIENCE: Duration = Duration::from_secs(120);

impl Simulator {
    /// Loads the saved account from `options.state_file` when there is one, else builds
    /// `options.scenario` (or an empty account).
    pub fn open(options: SimOptions, clock: Clock) -> Result<(Simulator, bool), SimStartError> {
        let now = clock.now_ms();
        let saved = match &options.state_file {
            Some(path) if path.exists() => {
                let json = std::fs::read_to_string(path).map_err(|source| SimStartError::Read {
                    path: path.clone(),
                    source,
                })?;
                let saved: Saved = serde_json::from_str(&json).map_err(|source| SimStartError::Parse {
                    path: path.clone(),
                    source,
                })?;
                Some(saved)
            }
            _ => None,
        };
        let restored = saved.is_some();
        let (ecs, driver) = match saved {
            Some(mut saved) => {
                saved.ecs.set_throttle(options.config.throttle.clone());
                saved.ecs.set_start_failure(options.config.start_failure);
                let driver = match (saved.driver, &options.scenario) {
                    (Some(mut d), Some(s)) if options.churn => {
                        d.set_rates(s.rates.clone());
                        Some(d)
                    }
                    (None, Some(s)) if options.churn => Some(Driver::new(s.clone(), options.seed)),
                    _ => None,
                };
                (saved.ecs, driver)
            }
            None => {
                let mut ecs = Ecs::new(options.config.clone(), options.seed);
                if let Some(scenario) = &options.scenario {
                    scenario.populate(&mut ecs, options.seed, now)?;
                }
                let driver = options
                    .scenario
                    .clone()
                    .filter(|_| options.churn)
                    .map(|s| Driver::new(s, options.seed));
                (ecs, driver)
            }
        };
        Ok((Simulator::from_parts(ecs, driver, clock, options), restored))
    }

    /// A simulator over a given account (tests build theirs directly).
    pub fn new(ecs: Ecs, clock: Clock, options: SimOptions) -> Simulator {
        Simulator::from_parts(ecs, None, clock, options)
    }

    fn from_parts(ecs: Ecs, driver: Option<Driver>, clock: Clock, options: SimOptions) -> Simulator {
        let now = clock.now_ms();
        let queue = EventQueue::new(
            options.faults.clone(),
            options.seed,
            options.visibility_timeout.as_millis() as u64,
        );
        Simulator {
            inner: Arc::new(Inner {
                ecs: RwLock::new(ecs),
                queue: Mutex::new(queue),
                driver: Mutex::new(driver),
                arrived: Notify::new(),
                clock,
                last_tick_ms: AtomicU64::new(now),
                options,
                waiting: Default::default(),
            }),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    fn ecs_read(&self) -> RwLockReadGuard<'_, Ecs> {
        self.inner.ecs.read().unwrap_or_else(|p| p.into_inner())
    }

    fn ecs_write(&self) -> RwLockWriteGuard<'_, Ecs> {
        self.inner.ecs.write().unwrap_or_else(|p| p.into_inner())
    }

    fn queue_lock(&self) -> MutexGuard<'_, EventQueue> {
        self.inner.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn driver_lock(&self) -> MutexGuard<'_, Option<Driver>> {
        self.inner.driver.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the account.
    pub fn read<R>(&self, f: impl FnOnce(&Ecs) -> R) -> R {
        f(&self.ecs_read())
    }

    /// Reads the account at the current time, for a read-only API call (unlike [`Simulator::write`],
    /// runs no steps).
    fn read_now<R>(&self, f: impl FnOnce(&Ecs, u64) -> R) -> R {
        let now = self.now_ms();
        f(&self.ecs_read(), now)
    }

    /// Changes the account at the current time (after running the steps due by then); the events
    /// the change emits go to the queue.
    pub fn write<R>(&self, f: impl FnOnce(&mut Ecs, u64) -> R) -> R {
        let now = self.now_ms();
        let mut ecs = self.ecs_write();
        ecs.advance(now);
        let result = f(&mut ecs, now);
        ecs.advance(now);
        let emitted = ecs.drain_events();
        drop(ecs);
        self.publish(emitted, now);
        result
    }

    /// Acts on the event queue (faults, statistics).
    pub fn queue<R>(&self, f: impl FnOnce(&mut EventQueue) -> R) -> R {
        f(&mut self.queue_lock())
    }

    fn publish(&self, emitted: Vec<crate::ecs::Emitted>, now: u64) {
        let mut queue = self.queue_lock();
        for e in emitted {
            queue.publish(e.body, e.at_ms);
        }
        queue.release(now);
        let visible = queue.depth().visible;
        drop(queue);
        if visible > 0 {
            self.inner.arrived.notify_waiters();
        }
    }

    /// One step of time: lifecycle steps due, churn for the time since the last tick, arrivals.
    pub fn tick(&self) {
        let now = self.now_ms();
        let last = self.inner.last_tick_ms.swap(now, Ordering::SeqCst);
        let mut ecs = self.ecs_write();
        ecs.advance(now);
        if let Some(driver) = self.driver_lock().as_mut() {
            // A ticker that stalled (or a simulator opened long before its first tick) does not
            // catch up on churn in one burst.
            driver.step(&mut ecs, now, now.saturating_sub(last).min(MAX_CHURN_STEP_MS));
            ecs.advance(now);
        }
        let emitted = ecs.drain_events();
        drop(ecs);
        self.publish(emitted, now);
    }

    /// Ticks until `shutdown`, saving the account every `save_every` and once more at the end.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.inner.options.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut saver = tokio::time::interval(self.inner.options.save_every);
        saver.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        saver.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => self.tick(),
                _ = saver.tick() => self.save_logged().await,
                () = shutdown.cancelled() => break,
            }
        }
        self.save_logged().await;
    }

    async fn save_logged(&self) {
        let this = self.clone();
        let saved = tokio::task::spawn_blocking(move || this.save()).await;
        match saved {
            Ok(Ok(Some(path))) => tracing::debug!(path = %path.display(), "simulator state saved"),
            Ok(Ok(None)) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "simulator state not saved"),
            Err(err) => tracing::warn!(error = %err, "simulator state not saved"),
        }
    }

    /// Writes the account to the state file (atomically: a temporary file renamed over it).
    pub fn save(&self) -> Result<Option<PathBuf>, SaveError> {
        let Some(path) = self.inner.options.state_file.clone() else {
            return Ok(None);
        };
        let failed = |message: String| SaveError {
            path: path.clone(),
            message,
        };
        let json = {
            let ecs = self.ecs_read();
            let driver = self.driver_lock();
            serde_json::to_string(&SavedRef {
                ecs: &ecs,
                driver: driver.as_ref(),
            })
            .map_err(|e| failed(e.to_string()))?
        };
        write_atomically(&path, json.as_bytes()).map_err(|e| failed(e.to_string()))?;
        Ok(Some(path))
    }

    /// Changes the churn's rates (zero: the account stays as it is); no-op without a driver.
    pub fn set_rates(&self, rates: crate::scenario::Rates) {
        if let Some(driver) = self.driver_lock().as_mut() {
            driver.set_rates(rates);
        }
    }

    /// Stops injecting faults and delivers everything still on its way now.
    pub fn heal(&self) {
        let mut queue = self.queue_lock();
        queue.set_faults(Faults::default());
        queue.flush();
        drop(queue);
        self.inner.arrived.notify_waiters();
    }

    /// Makes a call, waiting out throttling. Throttled callers of a family queue up and poll the
    /// bucket one at a time (a client-side limiter), instead of all waking for the same token.
    async fn retry<R>(
        &self,
        operation: &'static str,
        family: Family,
        cluster: Option<&str>,
        mut call: impl FnMut(&Simulator) -> Result<R, SimError>,
    ) -> Result<R, EcsError> {
        let started = tokio::time::Instant::now();
        let mut turn = None;
        loop {
            match call(self) {
                Ok(result) => return Ok(result),
                Err(SimError::Throttled { retry_after_ms }) if started.elapsed() < THROTTLE_PATIENCE => {
                    if turn.is_none() {
                        turn = Some(self.inner.waiting[family as usize].lock().await);
                        // Whoever held the turn may have left a token behind.
                        continue;
                    }
                    tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
                }
                Err(err) => return Err(ecs_error(operation, cluster, err)),
            }
        }
    }

    /// Follows every page of a List call.
    async fn all_pages(
        &self,
        operation: &'static str,
        cluster: Option<&str>,
        list: impl Fn(&Ecs, Option<&str>, u64) -> Result<Page, SimError>,
    ) -> Result<Vec<String>, EcsError> {
        let mut arns = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .retry(operation, Family::List, cluster, |sim| {
                    sim.read_now(|ecs, now| list(ecs, token.as_deref(), now))
                })
                .await?;
            arns.extend(page.arns);
            match page.next_token {
                Some(next) => token = Some(next),
                None => return Ok(arns),
            }
        }
    }
}

#[derive(Serialize)]
struct SavedRef<'a> {
    ecs: &'a Ecs,
    driver: Option<&'a Driver>,
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn ecs_error(operation: &'static str, cluster: Option<&str>, err: SimError) -> EcsError {
    let kind = match err {
        SimError::ClusterNotFound { .. } => EcsErrorKind::ClusterNotFound,
        SimError::Throttled { .. } => EcsErrorKind::Throttled,
        SimError::Rejected { code, message } => EcsErrorKind::Rejected {
            code: code.to_owned(),
            message,
        },
    };
    EcsError {
        operation,
        cluster: cluster.map(str::to_owned),
        kind,
    }
}

#[async_trait]
impl EcsReader for Simulator {
    async fn list_clusters(&self) -> Result<Vec<String>, EcsError> {
        self.all_pages("ListClusters", None, |ecs, token, now| {
            ecs.list_clusters(token, None, now)
        })
        .await
    }

    async fn list_page(
        &self,
        cluster: &str,
        listing: Listing,
        next_token: Option<&str>,
    ) -> Result<ListPage, EcsError> {
        let filter = match listing {
            Listing::ContainerInstances => None,
            Listing::Tasks(desired) => Some(TaskFilter {
                desired_status: Some(desired.as_str().to_owned()),
                ..TaskFilter::default()
            }),
        };
        let page = self
            .retry(listing.operation(), Family::List, Some(cluster), |sim| {
                sim.read_now(|ecs, now| match &filter {
                    None => ecs.list_container_instances(cluster, None, next_token, None, now),
                    Some(filter) => ecs.list_tasks(cluster, filter, next_token, None, now),
                })
            })
            .await?;
        Ok(ListPage {
            arns: page.arns,
            next_token: page.next_token,
        })
    }

    async fn describe_container_instances(
        &self,
        cluster: &str,
        arns: &[String],
    ) -> Result<Vec<ContainerInstance>, EcsError> {
        // ECS takes at most 100 per call; like SdkEcs, a longer slice is described in batches.
        let mut described = Vec::with_capacity(arns.len());
        for chunk in arns.chunks(DESCRIBE_BATCH) {
            let (found, _) = self
                .retry(
                    "DescribeContainerInstances",
                    Family::Describe,
                    Some(cluster),
                    |sim| sim.read_now(|ecs, now| ecs.describe_container_instances(cluster, chunk, now)),
                )
                .await?;
            described.extend(found.iter().map(|i| (**i).clone()));
        }
        Ok(described)
    }

    async fn describe_tasks(&self, cluster: &str, arns: &[String]) -> Result<Vec<Task>, EcsError> {
        let mut described = Vec::with_capacity(arns.len());
        for chunk in arns.chunks(DESCRIBE_BATCH) {
            let (found, _) = self
                .retry("DescribeTasks", Family::Describe, Some(cluster), |sim| {
                    sim.read_now(|ecs, now| ecs.describe_tasks(cluster, chunk, now))
                })
                .await?;
            described.extend(found.iter().map(|t| (**t).clone()));
        }
        Ok(described)
    }

    async fn list_started_tasks(
        &self,
        cluster: &str,
        started_by: &str,
        container_instance: &str,
    ) -> Result<Vec<String>, EcsError> {
        // The calls SdkEcs makes: ECS refuses startedBy with a containerInstance filter.
        let mut listed = Vec::new();
        for desired in STARTED_TASKS_ORDER {
            let filter = TaskFilter {
                desired_status: Some(desired.as_str().to_owned()),
                container_instance: Some(container_instance.to_owned()),
                ..TaskFilter::default()
            };
            listed.extend(
                self.all_pages("ListTasks", Some(cluster), |ecs, token, now| {
                    ecs.list_tasks(cluster, &filter, token, None, now)
                })
                .await?,
            );
        }
        started_among(self, cluster, started_by, listed).await
    }
}

#[async_trait]
impl EcsControl for Simulator {
    async fn describe_clusters(
        &self,
        clusters: &[String],
    ) -> Result<(Vec<ClusterDescription>, Vec<Failure>), EcsError> {
        let (mut described, mut failures) = (Vec::new(), Vec::new());
        for chunk in clusters.chunks(DESCRIBE_BATCH) {
            let (found, missing) = self
                .retry("DescribeClusters", Family::Describe, None, |sim| {
                    sim.read_now(|ecs, now| ecs.describe_clusters(chunk, now))
                })
                .await?;
            described.extend(found);
            failures.extend(missing);
        }
        Ok((described, failures))
    }

    async fn describe_task_definition(
        &self,
        task_definition: &str,
    ) -> Result<TaskDefinitionDescription, EcsError> {
        self.retry("DescribeTaskDefinition", Family::Describe, None, |sim| {
            sim.read_now(|ecs, now| ecs.describe_task_definition(task_definition, now))
        })
        .await
    }

    async fn start_task(&self, request: &StartTask) -> Result<Started, EcsError> {
        self.retry("StartTask", Family::Launch, Some(&request.cluster), |sim| {
            sim.write(|ecs, now| ecs.start_task(request, now))
        })
        .await
    }

    async fn stop_task(&self, cluster: &str, task: &str, reason: &str) -> Result<Task, EcsError> {
        self.retry("StopTask", Family::Modify, Some(cluster), |sim| {
            sim.write(|ecs, now| ecs.stop_task(cluster, task, reason, now))
        })
        .await
        .map(|t| (*t).clone())
    }
}

#[async_trait]
impl EventSource for Simulator {
    async fn receive(&self, max: usize) -> Result<Vec<Message>, SourceError> {
        let deadline = tokio::time::Instant::now() + self.inner.options.receive_wait;
        loop {
            let arrived = self.inner.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let now = self.now_ms();
            let messages = self.queue_lock().receive(max, now);
            if !messages.is_empty() {
                return Ok(messages);
            }
            tokio::select! {
                () = arrived => {}
                () = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }

    async fn delete(&self, receipts: &[String]) -> Result<Vec<String>, SourceError> {
        Ok(self.queue_lock().delete(receipts))
    }

    async fn depth(&self) -> Result<QueueDepth, SourceError> {
        Ok(self.queue_lock().depth())
    }
}
