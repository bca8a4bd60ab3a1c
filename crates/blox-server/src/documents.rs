//! Model entities to store documents: the one conversion used by both ingestion and the reconciler,
//! so that an event and a Describe result for the same state produce identical documents.

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
