//! Model entities to store documents: the one conversion used by both ingestion and the reconciler,
//! so that an event and a Describe result for the same state produce identical documents; and the
//! scheduler's documents, shared by the scheduler's executor and the API.

use blox_model::daemon::{Doc, EnvironmentStatus};
use blox_model::{ClusterName, ContainerInstance, Task};
use blox_store::{Document, Key, Kind};

pub fn task(cluster: ClusterName, task: &Task) -> Document {
    Document {
        key: Key::task(cluster, task.task_arn.clone()),
        version: task.version,
        status: task.last_status.to_ascii_uppercase(),
        started_by: task.started_by.clone().filter(|s| !s.is_empty()),
        body: to_json(task),
    }
}

pub fn instance(cluster: ClusterName, instance: &ContainerInstance) -> Document {
    Document {
        key: Key::instance(cluster, instance.container_instance_arn.clone()),
        version: instance.version,
        status: instance.status.to_ascii_uppercase(),
        started_by: None,
        body: to_json(instance),
    }
}

fn to_json<T: serde::Serialize>(entity: &T) -> Vec<u8> {
    // Model entities are plain strings, numbers and vectors: serialising them cannot fail.
    serde_json::to_vec(entity).unwrap_or_else(|e| unreachable!("model entity failed to serialise: {e}"))
}

// ---- scheduler documents -------------------------------------------------------------------------
//
// Environments, revisions, deployments, start intents and failure records are blox's own documents,
// written only by compare-and-swap (`Write::Put` / `Write::Remove`). Their indexed fields: an
// environment's status is `ACTIVE` or `DELETING`; a revision's is `ACTIVE` and its startedBy the
// environment's name; a deployment's status is its status in upper case and its startedBy the
// environment's name, so that an environment's revisions and deployments are listed by index; an
// intent's (`PENDING`) and a failure record's (`FAILED`) startedBy is their deployment's id.

/// The store document of a scheduler document of an environment in `cluster`.
pub fn scheduler_doc(cluster: &ClusterName, doc: &Doc) -> Document {
    let (key, status, started_by, body) = match doc {
        Doc::Environment(e) => (
            Key::environment(e.cluster.clone(), e.name.clone()),
            match e.status {
                EnvironmentStatus::Active => "ACTIVE",
                EnvironmentStatus::Deleting { .. } => "DELETING",
            }
            .to_owned(),
            None,
            to_json(e),
        ),
        Doc::Revision(r) => (
            Key::revision(cluster.clone(), &r.environment, r.number),
            "ACTIVE".to_owned(),
            Some(r.environment.clone()),
            to_json(r),
        ),
        Doc::Deployment(d) => (
            Key::deployment(cluster.clone(), d.id.clone()),
            d.status.name().to_ascii_uppercase(),
            Some(d.environment.clone()),
            to_json(d),
        ),
        Doc::Intent(i) => (
            Key::intent(cluster.clone(), &i.deployment_id, &i.instance_arn),
            "PENDING".to_owned(),
            Some(i.deployment_id.clone()),
            to_json(i),
        ),
        Doc::Failure(f) => (
            Key::failure(cluster.clone(), &f.deployment_id, &f.instance_arn),
            "FAILED".to_owned(),
            Some(f.deployment_id.clone()),
            to_json(f),
        ),
    };
    Document {
        key,
        version: 0,
        status,
        started_by,
        body,
    }
}

/// The store key of a scheduler document of an environment in `cluster`.
pub fn scheduler_key(cluster: &ClusterName, doc: &Doc) -> Key {
    match doc {
        Doc::Environment(e) => Key::environment(e.cluster.clone(), e.name.clone()),
        Doc::Revision(r) => Key::revision(cluster.clone(), &r.environment, r.number),
        Doc::Deployment(d) => Key::deployment(cluster.clone(), d.id.clone()),
        Doc::Intent(i) => Key::intent(cluster.clone(), &i.deployment_id, &i.instance_arn),
        Doc::Failure(f) => Key::failure(cluster.clone(), &f.deployment_id, &f.instance_arn),
    }
}

/// A stored scheduler document as its model value, by its kind; `None` for an ECS entity.
pub fn parse_scheduler_doc(doc: &Document) -> Result<Option<Doc>, DocumentError> {
    Ok(Some(match doc.key.kind {
        Kind::Environment => Doc::Environment(parse(doc)?),
        Kind::Revision => Doc::Revision(parse(doc)?),
        Kind::Deployment => Doc::Deployment(parse(doc)?),
        Kind::Intent => Doc::Intent(parse(doc)?),
        Kind::Failure => Doc::Failure(parse(doc)?),
        Kind::Task | Kind::Instance | Kind::Name => return Ok(None),
    }))
}

/// A stored document's body as a model value (an environment, revision, deployment, task or
/// instance).
pub fn parse<T: serde::de::DeserializeOwned>(doc: &Document) -> Result<T, DocumentError> {
    serde_json::from_slice(&doc.body).map_err(|source| DocumentError {
        key: doc.key.to_string(),
        source,
    })
}

/// [`parse`] into a type that borrows from the body.
pub fn parse_borrowed<'a, T: serde::Deserialize<'a>>(doc: &'a Document) -> Result<T, DocumentError> {
    serde_json::from_slice(&doc.body).map_err(|source| DocumentError {
        key: doc.key.to_string(),
        source,
    })
}

/// A stored body that does not parse as what its kind should hold.
#[derive(Debug, thiserror::Error)]
#[error("stored {key} does not parse: {source}")]
pub struct DocumentError {
    pub key: String,
    pub source: serde_json::Error,
}
