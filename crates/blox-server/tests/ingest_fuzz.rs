//! Fuzz-style property tests of the ingest path: `EcsEvent::parse` and `Ingestor::commit` on arbitrary
//! bodies and on valid events with fields set to odd values (NUL bytes, huge numbers, wrong types,
//! other accounts). Whatever comes: no panic, every message is applied, found stale, dropped or parked,
//! every message leaves the queue, and no commit is ever refused by the store (what the store would
//! refuse is parked at parse time, so the batch is never split).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use blox_aws::{EventSource, Message, QueueDepth, SourceError};
use blox_model::{ContainerInstance, EcsEvent, Task, storable};
use blox_server::ingest::Mirrored;
use blox_server::{IngestOptions, Ingestor};
use blox_store::{MemStore, PageRequest, Store, StoreOptions};
use blox_testkit::entities::{self, ACCOUNT};
use blox_testkit::{instance_event, task_event};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::Value;

/// A queue that only counts what is deleted (the tests hand batches to `commit` directly).
#[derive(Default)]
struct Deletions(Mutex<Vec<String>>);

#[async_trait]
impl EventSource for Deletions {
    async fn receive(&self, _max: usize) -> Result<Vec<Message>, SourceError> {
        Ok(Vec::new())
    }
    async fn delete(&self, receipts: &[String]) -> Result<Vec<String>, SourceError> {
        self.0.lock().unwrap().extend(receipts.iter().cloned());
        Ok(Vec::new())
    }
    async fn depth(&self) -> Result<QueueDepth, SourceError> {
        Ok(QueueDepth::default())
    }
}

/// Commits `bodies` as one batch into a fresh store mirroring the test kit's account and region, and
/// checks the promise: every message accounted for and deleted, no refused commit, no panic.
fn ingest(bodies: Vec<String>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Arc::new(MemStore::new(StoreOptions::default()));
        let queue = Arc::new(Deletions::default());
        let options = IngestOptions {
            mirrored: Arc::new(Mirrored::new(Some(ACCOUNT.into()), Some("us-east-1".into()))),
            ..IngestOptions::default()
        };
        let ingest = Ingestor::new(store.clone(), queue.clone(), options);
        let n = bodies.len();
        let batch = bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Message {
                id: format!("m{i}"),
                receipt: format!("r{i}"),
                body,
                sent_at_ms: None,
            })
            .collect();
        let report = ingest
            .commit(batch)
            .await
            .map_err(|()| TestCaseError::fail("the commit failed"))?;
        prop_assert_eq!(
            report.applied + report.stale + report.parked + report.dropped,
            n,
            "{:?}",
            report
        );
        prop_assert_eq!(report.splits, 0, "the store refused a commit: {:?}", report);
        prop_assert_eq!(queue.0.lock().unwrap().len(), n);
        let parked = store
            .dead_letters(PageRequest::default())
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parked.items.len(), report.parked);
        for letter in &parked.items {
            prop_assert!(!letter.reason.starts_with("the store refused it"), "{:?}", letter);
        }
        Ok(())
    })
}

/// Strings ECS would never send in a field: empty, NUL anywhere, any unicode, ARN-like.
fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        Just(String::new()),
        Just("\0".to_owned()),
        "[A-Z_\\x00]{0,12}",
        "[a-z0-9:/_-]{0,8}\\x00[a-z0-9:/_-]{0,8}",
        "arn:aws:ecs:(us-east-1|eu-west-1|\\x00):(123456789012|210987654321|1):(task|cluster|container-instance)/[a-zA-Z0-9_/\\x00-]{0,40}",
    ]
}

/// Any JSON value, leaning to the odd.
fn odd_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        odd_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(odd_string(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The fields of an event worth breaking, top level and in `detail`.
const FIELDS: &[&str] = &[
    "account",
    "region",
    "detail-type",
    "detail",
    "id",
    "time",
    "resources",
    "detail/clusterArn",
    "detail/containerInstanceArn",
    "detail/taskArn",
    "detail/taskDefinitionArn",
    "detail/lastStatus",
    "detail/desiredStatus",
    "detail/startedBy",
    "detail/group",
    "detail/version",
    "detail/containers",
    "detail/overrides",
    "detail/createdAt",
    "detail/stoppedReason",
    "detail/healthStatus",
    "detail/status",
    "detail/agentConnected",
    "detail/attributes",
    "detail/registeredResources",
    "detail/versionInfo",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// The field set to any value.
    Set(&'static str, Value),
    /// The field removed.
    Remove(&'static str),
    /// A NUL inserted into the field's string (a well-formed but odd value of a field ECS does send).
    InsertNul(&'static str, prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let field = proptest::sample::select(FIELDS);
    prop_oneof![
        3 => (field.clone(), odd_value()).prop_map(|(f, v)| Mutation::Set(f, v)),
        3 => (field.clone(), any::<prop::sample::Index>()).prop_map(|(f, at)| Mutation::InsertNul(f, at)),
        1 => field.prop_map(Mutation::Remove),
    ]
}

fn apply(event: &mut Value, mutation: &Mutation) {
    let path = match mutation {
        Mutation::Set(path, _) | Mutation::Remove(path) | Mutation::InsertNul(path, _) => *path,
    };
    let (parent, name) = match path.split_once('/') {
        Some((parent, name)) => (event.get_mut(parent), name),
        None => (Some(&mut *event), path),
    };
    let Some(Value::Object(object)) = parent else {
        return;
    };
    match mutation {
        Mutation::Set(_, value) => {
            object.insert(name.to_owned(), value.clone());
        }
        Mutation::Remove(_) => {
            object.remove(name);
        }
        Mutation::InsertNul(_, at) => {
            if let Some(Value::String(text)) = object.get_mut(name) {
                let boundaries: Vec<usize> =
                    text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
                text.insert(boundaries[at.index(boundaries.len())], '\0');
            }
        }
    }
}

/// A valid event of the test kit's account: a task (with a startedBy) or a container instance.
fn valid_event() -> impl Strategy<Value = String> {
    let id = "[a-z0-9]{1,12}";
    prop_oneof![
        (id, "[a-zA-Z0-9/_-]{0,20}", 1..u64::MAX).prop_map(|(id, started_by, version)| {
            let task = Task {
                started_by: Some(started_by),
                ..entities::task("prod", &id)
            };
            task_event(&task, version)
        }),
        (id, 1..u64::MAX).prop_map(|(id, version)| {
            let instance: ContainerInstance = entities::instance("prod", &id);
            instance_event(&instance, version)
        }),
    ]
}

/// A valid event with some fields set to odd values or removed; or, now and then, cut short.
fn mutated_event() -> impl Strategy<Value = String> {
    let cut = prop_oneof![7 => Just(None), 1 => any::<prop::sample::Index>().prop_map(Some)];
    (valid_event(), vec(mutation(), 1..3), cut).prop_map(|(body, mutations, cut)| {
        let mut event: Value = serde_json::from_str(&body).unwrap();
        for mutation in &mutations {
            apply(&mut event, mutation);
        }
        let text = event.to_string();
        match cut {
            Some(at) if text.len() > 1 => {
                let at = at.index(text.len());
                text.char_indices()
                    .take_while(|(i, _)| *i < at)
                    .map(|(_, c)| c)
                    .collect()
            }
            _ => text,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary bytes (as SQS would carry them: text) never panic the parser, and what parses holds
    /// only storable keys and indexed fields.
    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..512)) {
        let body = String::from_utf8_lossy(&bytes);
        if let Ok(event) = EcsEvent::parse(&body) {
            check_storable(&event)?;
        }
    }

    /// Mutated valid events: parsed and storable, or refused with a reason; never a panic.
    #[test]
    fn parse_of_mutated_events_is_storable_or_refused(body in mutated_event()) {
        match EcsEvent::parse(&body) {
            Ok(event) => check_storable(&event)?,
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
    }

    /// The ingest path on arbitrary bodies.
    #[test]
    fn ingest_of_arbitrary_bodies_parks_or_applies_each(
        bodies in vec(vec(any::<u8>(), 0..256).prop_map(|b| String::from_utf8_lossy(&b).into_owned()), 1..10)
    ) {
        ingest(bodies)?;
    }

    /// The ingest path on batches of valid and mutated events: the valid ones apply, the odd ones
    /// are parked (or dropped, or apply when still valid), and no commit fails.
    #[test]
    fn ingest_of_mutated_events_never_fails_a_commit(
        bodies in vec(prop_oneof![valid_event(), mutated_event()], 1..12)
    ) {
        ingest(bodies)?;
    }
}

/// What the store keys and indexes an event's entity by is storable.
fn check_storable(event: &EcsEvent) -> Result<(), TestCaseError> {
    let fields: Vec<&str> = match event {
        EcsEvent::Task { cluster, task } => [
            cluster.as_str(),
            &task.task_arn,
            &task.last_status,
            task.started_by.as_deref().unwrap_or_default(),
        ]
        .into(),
        EcsEvent::ContainerInstance { cluster, instance } => [
            cluster.as_str(),
            &instance.container_instance_arn,
            &instance.status,
        ]
        .into(),
        EcsEvent::Other { .. } => Vec::new(),
    };
    for field in fields {
        prop_assert!(storable(field), "{:?} in {:?}", field, event);
    }
    Ok(())
}
