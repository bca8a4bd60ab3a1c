//! Model entities to store documents: the one conversion used by both ingestion and the reconciler,
//! so that an event and a Describe result for the same state produce identical documents; and the
//! scheduler's documents, shared by the scheduler's executor and the API.

use blox_model::daemon::{Deployment, DeploymentStatus, Environment, EnvironmentStatus, Revision};
use blox_model::{ClusterName, ContainerInstance, Task};
use blox_store::{Document, Key};

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
// Environments, revisions and deployments are blox's own documents, written only by compare-and-swap
// (`Write::Put` / `Write::Remove`). Their indexed fields: an environment's status is `ACTIVE` or
// `DELETING`; a revision's is `ACTIVE` and its startedBy the environment's name; a deployment's status
// is its `DeploymentStatus` in upper case and its startedBy the environment's name, so that an
// environment's revisions and deployments are listed by index.

/// An environment as a document: status `ACTIVE` or `DELETING`, no startedBy.
pub fn environment(environment: &Environment) -> Document {
    let status = match environment.status {
        EnvironmentStatus::Active => "ACTIVE",
        EnvironmentStatus::Deleting { .. } => "DELETING",
    };
    Document {
        key: Key::environment(environment.cluster.clone(), environment.name.clone()),
        version: 0,
        status: status.to_owned(),
        started_by: None,
        body: to_json(environment),
    }
}

/// A revision as a document: status `ACTIVE`, startedBy its environment.
pub fn revision(cluster: ClusterName, revision: &Revision) -> Document {
    Document {
        key: Key::revision(cluster, &revision.environment, revision.number),
        version: 0,
        status: "ACTIVE".to_owned(),
        started_by: Some(revision.environment.clone()),
        body: to_json(revision),
    }
}

/// A deployment as a document: status its [`DeploymentStatus`] upper case, startedBy its environment.
pub fn deployment(cluster: ClusterName, deployment: &Deployment) -> Document {
    Document {
        key: Key::deployment(cluster, deployment.id.clone()),
        version: 0,
        status: deployment_status(deployment.status).to_owned(),
        started_by: Some(deployment.environment.clone()),
        body: to_json(deployment),
    }
}

/// The indexed status of a deployment document.
pub fn deployment_status(status: DeploymentStatus) -> &'static str {
    match status {
        DeploymentStatus::Pending => "PENDING",
        DeploymentStatus::Running => "RUNNING",
        DeploymentStatus::Completed => "COMPLETED",
        DeploymentStatus::Failed => "FAILED",
        DeploymentStatus::Stopped => "STOPPED",
    }
}

/// A stored document's body as a model value (an environment, revision, deployment, task or
/// instance).
pub fn parse<T: serde::de::DeserializeOwned>(doc: &Document) -> Result<T, DocumentError> {
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
