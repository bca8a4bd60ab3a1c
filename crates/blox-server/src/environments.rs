//! Environments in the store: reading one environment's documents into a [`Snapshot`] and writing a
//! command's [`Changes`] back by compare-and-swap against what was read. [`cas`] is the one
//! read-modify-write loop; both APIs and the executor go through it.

use std::collections::HashMap;

use blox_model::ClusterName;
use blox_model::daemon::{
    self, Changes, CommandError, Deployment, Doc, Environment, InstanceFailure, Revision, Snapshot,
    StartIntent,
};
use blox_store::{
    Document, Expect, Filter, Key, Kind, Outcome, PageRequest, Record, Store, StoreError, Write,
};
use thiserror::Error;

use crate::documents::{self, DocumentError};
use crate::metrics as m;

/// How many times a compare-and-swap write is retried on a conflict before giving up.
pub const CAS_ATTEMPTS: usize = 8;

/// One environment's documents as read, with the sequence number each write must expect.
#[derive(Debug, Clone)]
pub struct Stored {
    pub cluster: ClusterName,
    pub snapshot: Snapshot,
    seqs: HashMap<Key, u64>,
}

impl Stored {
    pub fn environment(&self) -> &Environment {
        self.snapshot
            .environment
            .as_ref()
            .unwrap_or_else(|| unreachable!("a Stored always has its environment"))
    }

    /// The sequence number a write of `key` must expect; `None` when it was not read.
    pub fn seq(&self, key: &Key) -> Option<u64> {
        self.seqs.get(key).copied()
    }

    /// The batch that writes `changes` against what was read.
    pub fn writes(&self, changes: &Changes) -> Vec<Write> {
        let mut writes = Vec::with_capacity(changes.put.len() + changes.remove.len());
        // The environment's own document last: a store that must split a large removal (etcd) and
        // stops at a conflict leaves the environment in place, to be deleted again.
        let (environment, others): (Vec<&Doc>, Vec<&Doc>) = changes
            .remove
            .iter()
            .partition(|doc| matches!(doc, Doc::Environment(_)));
        for doc in others.into_iter().chain(environment) {
            let key = documents::scheduler_key(&self.cluster, doc);
            if let Some(&seq) = self.seqs.get(&key) {
                writes.push(Write::Remove { key, expect: seq });
            }
        }
        for doc in &changes.put {
            let document = documents::scheduler_doc(&self.cluster, doc);
            let expect = match self.seqs.get(&document.key) {
                Some(&seq) => Expect::Seq(seq),
                None => Expect::Absent,
            };
            writes.push(Write::Put {
                doc: document,
                expect,
            });
        }
        writes
    }
}

#[derive(Debug, Error)]
pub enum CasError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Document(#[from] DocumentError),
    /// Every attempt met a concurrent change.
    #[error("environment {0} kept changing; try again")]
    KeptChanging(String),
}

/// Which of an environment's documents to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// The environment, its revisions and deployments.
    Documents,
    /// Also every start intent and failure record of its deployments (to remove them).
    Everything,
}

/// The environment of that name, in any cluster (names are unique across clusters).
pub async fn find(store: &dyn Store, name: &str) -> Result<Option<(Record, Environment)>, CasError> {
    if daemon::validate_environment_name(name).is_err() {
        return Ok(None);
    }
    for cluster in store.clusters(Kind::Environment).await? {
        if let Some(record) = store.get(&Key::environment(cluster, name)).await? {
            let environment = documents::parse(&record.doc)?;
            return Ok(Some((record, environment)));
        }
    }
    Ok(None)
}

/// Every record of a kind matching `filter`, a page at a time.
pub async fn list_all(store: &dyn Store, kind: Kind, filter: &Filter) -> Result<Vec<Record>, StoreError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(
                kind,
                filter,
                PageRequest {
                    after,
                    limit: Some(1_000),
                },
            )
            .await?;
        out.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(out),
        }
    }
}

/// An environment's documents as the in-memory view holds them, with everything of it (intents and
/// failure records too).
pub fn from_view(state: &crate::view::ViewState, name: &str) -> Option<Stored> {
    let env = state.environments.get(name)?;
    let cluster = env.cluster.clone();
    let snapshot = state.snapshot(name)?;
    let mut seqs = HashMap::new();
    seqs.insert(Key::environment(cluster.clone(), name), env.seq);
    for r in &snapshot.revisions {
        if let Some(e) = state.revisions.get(&(name.to_owned(), r.number)) {
            seqs.insert(Key::revision(cluster.clone(), name, r.number), e.seq);
        }
    }
    for d in &snapshot.deployments {
        if let Some(e) = state.deployments.get(&d.id) {
            seqs.insert(Key::deployment(cluster.clone(), d.id.clone()), e.seq);
        }
    }
    for i in &snapshot.intents {
        if let Some(e) = state.intents.get(&i.id()) {
            seqs.insert(
                Key::intent(cluster.clone(), &i.deployment_id, &i.instance_arn),
                e.seq,
            );
        }
    }
    for f in &snapshot.failures {
        if let Some(e) = state.failures.get(&f.id()) {
            seqs.insert(
                Key::failure(cluster.clone(), &f.deployment_id, &f.instance_arn),
                e.seq,
            );
        }
    }
    Some(Stored {
        cluster,
        snapshot,
        seqs,
    })
}

/// Reads an environment's documents; `None` when there is no environment of that name.
pub async fn load(store: &dyn Store, name: &str, depth: Depth) -> Result<Option<Stored>, CasError> {
    let Some((record, environment)) = find(store, name).await? else {
        return Ok(None);
    };
    let cluster = environment.cluster.clone();
    let mut seqs = HashMap::new();
    seqs.insert(record.doc.key.clone(), record.seq);
    let by_environment = Filter {
        cluster: Some(cluster.clone()),
        status: None,
        started_by: Some(environment.name.clone()),
    };
    let mut snapshot = Snapshot {
        environment: Some(environment),
        ..Snapshot::default()
    };
    for record in list_all(store, Kind::Revision, &by_environment).await? {
        snapshot
            .revisions
            .push(documents::parse::<Revision>(&record.doc)?);
        seqs.insert(record.doc.key, record.seq);
    }
    for record in list_all(store, Kind::Deployment, &by_environment).await? {
        snapshot
            .deployments
            .push(documents::parse::<Deployment>(&record.doc)?);
        seqs.insert(record.doc.key, record.seq);
    }
    if depth == Depth::Everything {
        for deployment in &snapshot.deployments {
            let by_deployment = Filter {
                cluster: Some(cluster.clone()),
                status: None,
                started_by: Some(deployment.id.clone()),
            };
            for record in list_all(store, Kind::Intent, &by_deployment).await? {
                snapshot
                    .intents
                    .push(documents::parse::<StartIntent>(&record.doc)?);
                seqs.insert(record.doc.key, record.seq);
            }
            for record in list_all(store, Kind::Failure, &by_deployment).await? {
                snapshot
                    .failures
                    .push(documents::parse::<InstanceFailure>(&record.doc)?);
                seqs.insert(record.doc.key, record.seq);
            }
        }
    }
    Ok(Some(Stored {
        cluster,
        snapshot,
        seqs,
    }))
}

/// Read-modify-write of one environment: reads it, lets `decide` turn it into changes, writes them in
/// one batch expecting what was read, and on a conflict reads again and decides again. `decide` gets
/// `None` when the environment does not exist. Returns `decide`'s value and the batch's outcomes.
pub async fn cas<T>(
    store: &dyn Store,
    name: &str,
    depth: Depth,
    mut decide: impl FnMut(Option<&Stored>) -> Result<(Changes, T), CommandError>,
) -> Result<(T, Vec<Outcome>), CasError> {
    for _ in 0..CAS_ATTEMPTS {
        // Read before the environment is looked for: a creation of the name by anyone after this
        // read changes the reservation, and a fresh environment's batch expects it unchanged.
        let reservation = store.get(&Key::name(name)).await?.map(|record| record.seq);
        let stored = load(store, name, depth).await?;
        let (changes, value) = decide(stored.as_ref())?;
        if changes.is_empty() {
            return Ok((value, Vec::new()));
        }
        let writes = match &stored {
            Some(stored) => stored.writes(&changes),
            None => fresh_writes(&changes, name, reservation),
        };
        match store.apply(writes).await {
            Ok(outcomes) => return Ok((value, outcomes)),
            Err(StoreError::Conflict { .. }) => {
                ::metrics::counter!(m::SCHEDULER_CONFLICTS, "kind" => "environment").increment(1);
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(CasError::KeptChanging(name.to_owned()))
}

/// The batch that writes the documents of a new environment (nothing of it is stored yet), with the
/// reservation of its name: two creations of one name, in any clusters and on any replicas, race on
/// that key, and the loser finds the winner's environment when it tries again. `reservation`: the
/// seq of the name's reservation left by a deleted environment of the name, if any.
fn fresh_writes(changes: &Changes, name: &str, reservation: Option<u64>) -> Vec<Write> {
    let cluster = changes.put.iter().find_map(|d| match d {
        Doc::Environment(e) => Some(e.cluster.clone()),
        _ => None,
    });
    let Some(cluster) = cluster else {
        return Vec::new();
    };
    let reserve = Write::Put {
        doc: Document {
            key: Key::name(name),
            version: 0,
            status: "RESERVED".to_owned(),
            started_by: None,
            body: serde_json::json!({ "environment": name, "cluster": cluster.as_str() })
                .to_string()
                .into_bytes(),
        },
        expect: reservation.map_or(Expect::Absent, Expect::Seq),
    };
    let documents = changes.put.iter().map(|doc| Write::Put {
        doc: documents::scheduler_doc(&cluster, doc),
        expect: Expect::Absent,
    });
    std::iter::once(reserve).chain(documents).collect()
}
