//! The reconciler. ECS is the truth and events are hints: at start and then every interval, for each
//! cluster, list and describe every container instance and task, write what is newer through the same
//! version rule as events, and delete what ECS no longer lists. It takes no input: every pass
//! recomputes from ECS and the store. One failing cluster does not stop the others.
//!
//! ECS's per-resource `version` only grows, so an entity whose stored version is ahead of what ECS
//! describes can only come from a bogus event (one near `u64::MAX` would otherwise pin it for good).
//! The reconciler's descriptions ([`Write::Observe`]) replace such an entity when it was stored before
//! the *previous* pass over its cluster began: a describe racing a newer event is normal and must not
//! take the entity back, and ECS's reads are eventually consistent, so a version ahead must have been
//! stored for a whole interval before it counts as bogus. A bogus version is so corrected within two
//! intervals.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blox_api::{ClusterFailure, Readiness};
use blox_aws::{DesiredStatus, EcsError, EcsErrorKind, EcsReader, ListPage, Listing};
use blox_model::ClusterName;
use blox_store::leader::LeaderGuard;
use blox_store::{Document, Key, Kind, Outcome, Store, StoreError, Write};
use futures::stream::BoxStream;
use futures::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::ingest::Mirrored;
use crate::{clock, documents, metrics as m};

#[derive(Debug, Clone)]
pub struct ReconcileOptions {
    pub interval: Duration,
    /// When set, only these clusters are mirrored.
    pub clusters: Option<Vec<ClusterName>>,
    /// Clusters reconciled at once.
    pub cluster_concurrency: usize,
    /// Describe calls in flight at once per cluster.
    pub describe_concurrency: usize,
    /// Wait before retrying a pass that could not even list the clusters.
    pub retry_after_failure: Duration,
    /// The account and region mirrored; the reconciler learns the account from the ARNs ECS answers
    /// with. Share it with the ingestor's options.
    pub mirrored: Arc<Mirrored>,
}

impl Default for ReconcileOptions {
    fn default() -> Self {
        ReconcileOptions {
            interval: Duration::from_secs(300),
            clusters: None,
            cluster_concurrency: 4,
            describe_concurrency: 4,
            retry_after_failure: Duration::from_secs(10),
            mirrored: Arc::default(),
        }
    }
}

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct ReadinessState(Mutex<Readiness>);

impl ReadinessState {
    pub fn snapshot(&self) -> Readiness {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn pass_completed(&self, failing_clusters: Vec<ClusterFailure>) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        state.ready = true;
        state.reconcile_passes += 1;
        state.last_pass_completed_at = Some(clock::now_rfc3339());
        state.failing_clusters = failing_clusters;
    }

    /// For a server that runs no reconciler: ready at once.
    pub fn ready_without_reconcile(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).ready = true;
    }

    /// Records the replica's role. A follower serves from the shared store, which the leader keeps
    /// reconciled: it is ready once the store is loaded.
    pub fn set_role(&self, leader: bool) {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        state.role = Some(if leader { "leader" } else { "follower" }.to_owned());
        if !leader {
            state.ready = true;
        }
    }
}

#[derive(Debug, Error)]
enum ClusterError {
    #[error(transparent)]
    Ecs(#[from] EcsError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl ClusterError {
    /// What `/readyz` says, open to anyone: never AWS's text, which can name the account and the
    /// role (the whole error goes to the log).
    fn public_reason(&self) -> &'static str {
        match self {
            ClusterError::Ecs(err) => match err.kind {
                EcsErrorKind::Throttled => "ECS throttled the reconciler",
                EcsErrorKind::ClusterNotFound => "ECS does not know the cluster",
                _ => "an ECS call failed; see the server log",
            },
            ClusterError::Store(_) => "the store failed; see the server log",
        }
    }
}

/// Drift corrected in one cluster.
#[derive(Debug, Default, Clone, Copy)]
struct Drift {
    upserted: u64,
    deleted: u64,
}

/// What one pass did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    pub clusters: usize,
    pub upserted: u64,
    pub deleted: u64,
    pub failures: Vec<(String, String)>,
    /// False when the cluster list itself could not be read (nothing was reconciled).
    pub listed: bool,
}

pub struct Reconciler {
    store: Arc<dyn Store>,
    ecs: Arc<dyn EcsReader>,
    options: ReconcileOptions,
    readiness: Arc<ReadinessState>,
    /// The change log's head when each cluster's entities of a kind were last looked at: what was
    /// stored before it has been stored for at least an interval when they are looked at again.
    looked_at: Mutex<HashMap<(ClusterName, Kind), u64>>,
    guard: LeaderGuard,
}

impl Reconciler {
    pub fn new(
        store: Arc<dyn Store>,
        ecs: Arc<dyn EcsReader>,
        options: ReconcileOptions,
        readiness: Arc<ReadinessState>,
    ) -> Reconciler {
        Reconciler {
            store,
            ecs,
            options,
            readiness,
            looked_at: Mutex::default(),
            guard: LeaderGuard::sole(),
        }
    }

    /// Calls ECS only while `guard`'s leadership term holds.
    pub fn with_guard(mut self, guard: LeaderGuard) -> Reconciler {
        self.guard = guard;
        self
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let report = tokio::select! {
                report = self.pass() => report,
                () = shutdown.cancelled() => return,
            };
            let wait = if report.listed {
                self.options.interval
            } else {
                self.options.retry_after_failure.min(self.options.interval)
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// One full pass over every cluster.
    pub async fn pass(&self) -> PassReport {
        let started = tokio::time::Instant::now();
        let mut report = PassReport::default();
        let clusters = match self.clusters().await {
            Ok(clusters) => clusters,
            Err(err) => {
                tracing::warn!(error = %err, "reconcile could not list clusters; retrying");
                report.failures.push(("*".into(), err.to_string()));
                return report;
            }
        };
        report.listed = true;
        report.clusters = clusters.len();
        let results: Vec<(ClusterName, Result<Drift, ClusterError>)> = futures::stream::iter(clusters)
            .map(|cluster| async move {
                let result = self.reconcile_cluster(&cluster).await;
                (cluster, result)
            })
            .buffer_unordered(self.options.cluster_concurrency.max(1))
            .collect()
            .await;
        let mut failing = Vec::new();
        for (cluster, result) in results {
            match result {
                Ok(drift) => {
                    metrics::counter!(m::RECONCILE_RUNS, "result" => "ok").increment(1);
                    report.upserted += drift.upserted;
                    report.deleted += drift.deleted;
                }
                Err(err) => {
                    metrics::counter!(m::RECONCILE_RUNS, "result" => "error").increment(1);
                    tracing::warn!(cluster = %cluster, error = %err, "reconcile of cluster failed");
                    report.failures.push((cluster.to_string(), err.to_string()));
                    failing.push(ClusterFailure {
                        cluster: cluster.to_string(),
                        reason: err.public_reason().to_owned(),
                    });
                }
            }
        }
        let elapsed = started.elapsed();
        metrics::histogram!(m::RECONCILE_DURATION_SECONDS).record(elapsed.as_secs_f64());
        tracing::info!(
            clusters = report.clusters,
            upserted = report.upserted,
            deleted = report.deleted,
            failed = report.failures.len(),
            elapsed_ms = elapsed.as_millis() as u64,
            "reconcile pass completed"
        );
        self.readiness.pass_completed(failing);
        report
    }

    /// The clusters to reconcile: ECS's (or the allow-list), plus any the store still holds, so that
    /// the entities of a deleted or no-longer-allowed cluster are removed too.
    async fn clusters(&self) -> Result<BTreeSet<ClusterName>, ClusterError> {
        self.guard.check()?;
        let mut clusters = BTreeSet::new();
        match &self.options.clusters {
            Some(allowed) => clusters.extend(allowed.iter().cloned()),
            None => {
                for arn in self.ecs.list_clusters().await? {
                    self.options.mirrored.learn(&arn);
                    match ClusterName::from_arn(&arn) {
                        Ok(name) => {
                            clusters.insert(name);
                        }
                        Err(err) => {
                            tracing::warn!(arn, error = %err, "ECS listed a cluster ARN blox cannot parse")
                        }
                    }
                }
            }
        }
        for kind in [Kind::Instance, Kind::Task] {
            clusters.extend(self.store.clusters(kind).await?);
        }
        Ok(clusters)
    }

    fn allowed(&self, cluster: &ClusterName) -> bool {
        self.options
            .clusters
            .as_ref()
            .is_none_or(|allowed| allowed.contains(cluster))
    }

    async fn reconcile_cluster(&self, cluster: &ClusterName) -> Result<Drift, ClusterError> {
        let mut total = Drift::default();
        for kind in [Kind::Instance, Kind::Task] {
            self.guard.check()?;
            let (mut kind_upserted, mut kind_deleted) = (0, 0);
            // Read before looking at ECS: an entity changed after this (by an event) is never deleted
            // by this pass, even if the listing below missed it.
            let snapshot = self.store.log_bounds().await?.head;
            // What was stored before the previous look (0: none) is corrected if ECS now describes it
            // at a lower version (see the module's documentation).
            let settled = self
                .looked_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((cluster.clone(), kind), snapshot)
                .unwrap_or(0);
            let observe = |doc| Write::Observe {
                doc,
                unchanged_since: settled,
            };
            // Pages are described as they are listed (each listing is sequential: a page needs the
            // previous page's token), so that ECS's list and describe budgets are spent together.
            let listings = if self.allowed(cluster) {
                listings(kind)
            } else {
                &[]
            };
            // Boxed: the unboxed stream trips the compiler's higher-ranked lifetime inference when the
            // reconciler is spawned.
            let pages: BoxStream<'_, Result<Vec<String>, ClusterError>> =
                futures::stream::try_unfold((0, None::<String>), |position| {
                    self.next_page(cluster, listings, position)
                })
                .boxed();
            let described = pages
                .try_filter(|arns| futures::future::ready(!arns.is_empty()))
                .map_ok(|arns| {
                    async move { Ok::<_, ClusterError>(self.describe(cluster, kind, &arns).await?) }.boxed()
                })
                .try_buffer_unordered(self.options.describe_concurrency.max(1));
            let mut described = std::pin::pin!(described);
            let mut seen = HashSet::new();
            while let Some(docs) = described.try_next().await? {
                seen.extend(docs.iter().map(|d| d.key.id.clone()));
                let outcomes = self.store.apply(docs.into_iter().map(observe).collect()).await?;
                kind_upserted += outcomes
                    .iter()
                    .filter(|o| matches!(o, Outcome::Written { .. }))
                    .count() as u64;
            }
            let mut missing: Vec<String> = self
                .store
                .ids(kind, cluster)
                .await?
                .into_iter()
                .filter(|(id, _)| !seen.contains(id))
                .map(|(id, _)| id)
                .collect();
            if !missing.is_empty() && self.allowed(cluster) {
                // Absence from a listing is not proof (ECS's lists are eventually consistent): a task
                // missing from the store would let the scheduler start a second daemon beside it, an
                // instance missing would shrink the fleet its healthy floor is computed from. What ECS
                // still describes is kept, as described.
                let mut kept = HashSet::new();
                for chunk in missing.chunks(blox_aws::DESCRIBE_BATCH) {
                    let docs = self.describe(cluster, kind, chunk).await?;
                    kept.extend(docs.iter().map(|d| d.key.id.clone()));
                    let outcomes = self.store.apply(docs.into_iter().map(observe).collect()).await?;
                    kind_upserted += outcomes
                        .iter()
                        .filter(|o| matches!(o, Outcome::Written { .. }))
                        .count() as u64;
                }
                missing.retain(|id| !kept.contains(id));
            }
            let gone: Vec<Write> = missing
                .into_iter()
                .map(|id| Write::Delete {
                    key: Key {
                        kind,
                        cluster: cluster.clone(),
                        id,
                    },
                    unchanged_since: snapshot,
                    at_ms: clock::now_unix_ms(),
                })
                .collect();
            for batch in gone.chunks(1_000) {
                let outcomes = self.store.apply(batch.to_vec()).await?;
                kind_deleted += outcomes
                    .iter()
                    .filter(|o| matches!(o, Outcome::Deleted { .. }))
                    .count() as u64;
            }
            let label = kind.name();
            metrics::counter!(m::RECONCILE_DRIFT, "kind" => label, "action" => "upsert")
                .increment(kind_upserted);
            metrics::counter!(m::RECONCILE_DRIFT, "kind" => label, "action" => "delete")
                .increment(kind_deleted);
            total.upserted += kind_upserted;
            total.deleted += kind_deleted;
        }
        Ok(total)
    }

    /// The page at `(listing index, token)` and the position after it; `None` after the last.
    async fn next_page(
        &self,
        cluster: &ClusterName,
        listings: &[Listing],
        (at, token): (usize, Option<String>),
    ) -> Result<Option<(Vec<String>, (usize, Option<String>))>, ClusterError> {
        let Some(&listing) = listings.get(at) else {
            return Ok(None);
        };
        let page = self.list_page(cluster, listing, token.as_deref()).await?;
        let next = match page.next_token {
            Some(token) => (at, Some(token)),
            None => (at + 1, None),
        };
        Ok(Some((page.arns, next)))
    }

    async fn list_page(
        &self,
        cluster: &ClusterName,
        listing: Listing,
        token: Option<&str>,
    ) -> Result<ListPage, EcsError> {
        nothing_if_unknown(self.ecs.list_page(cluster.as_str(), listing, token).await)
    }

    /// What ECS describes of `arns` (nothing, for a cluster ECS does not know: the entities stored of
    /// a deleted cluster are then removed).
    async fn describe(
        &self,
        cluster: &ClusterName,
        kind: Kind,
        arns: &[String],
    ) -> Result<Vec<Document>, EcsError> {
        let name = cluster.as_str();
        let mirrored = &self.options.mirrored;
        let docs = match kind {
            Kind::Instance => nothing_if_unknown(self.ecs.describe_container_instances(name, arns).await)?
                .into_iter()
                .filter_map(|mut i| {
                    let validated = i.validate();
                    mirrored.learn(&i.cluster_arn);
                    usable(cluster, validated, || documents::instance(cluster.clone(), &i))
                })
                .collect(),
            Kind::Task => nothing_if_unknown(self.ecs.describe_tasks(name, arns).await)?
                .into_iter()
                .filter_map(|mut t| {
                    let validated = t.validate();
                    mirrored.learn(&t.cluster_arn);
                    usable(cluster, validated, || documents::task(cluster.clone(), &t))
                })
                .collect(),
            Kind::Environment
            | Kind::Revision
            | Kind::Deployment
            | Kind::Intent
            | Kind::Failure
            | Kind::Name => Vec::new(),
        };
        Ok(docs)
    }
}

/// A cluster ECS does not know has nothing in it: its listings are empty and it describes nothing.
fn nothing_if_unknown<T: Default>(answer: Result<T, EcsError>) -> Result<T, EcsError> {
    match answer {
        Err(EcsError {
            kind: EcsErrorKind::ClusterNotFound,
            ..
        }) => Ok(T::default()),
        other => other,
    }
}

/// The List calls that find every entity of a kind ECS still describes. ECS lists one desired
/// status per call; stopped tasks stay visible for a while, and are kept. (A task that stops between
/// the two listings is described twice, which the version rule makes harmless.)
fn listings(kind: Kind) -> &'static [Listing] {
    match kind {
        Kind::Instance => &[Listing::ContainerInstances],
        Kind::Task => &[
            Listing::Tasks(DesiredStatus::Running),
            Listing::Tasks(DesiredStatus::Stopped),
        ],
        // Scheduler documents are not ECS's: never reconciled (and never asked for).
        Kind::Environment | Kind::Revision | Kind::Deployment | Kind::Intent | Kind::Failure | Kind::Name => {
            &[]
        }
    }
}

/// Keeps a described entity only if it is valid and in the cluster it was listed in.
fn usable(
    cluster: &ClusterName,
    validated: Result<ClusterName, blox_model::FieldError>,
    document: impl FnOnce() -> Document,
) -> Option<Document> {
    match validated {
        Ok(c) if c == *cluster => Some(document()),
        Ok(other) => {
            tracing::warn!(cluster = %cluster, other = %other, "ECS described an entity of another cluster; skipped");
            None
        }
        Err(err) => {
            tracing::warn!(cluster = %cluster, error = %err, "ECS described an entity blox cannot use; skipped");
            None
        }
    }
}
