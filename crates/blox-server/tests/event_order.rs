//! "Events in any order, duplicated ⇒ same state", through the real ingestion path: event JSON →
//! `EcsEvent::parse` → documents → `Store::apply`, in random batches.

use std::collections::BTreeMap;
use std::sync::Arc;

use blox_aws::{Message, NoEvents};
use blox_model::{ContainerInstance, Task};
use blox_server::{IngestOptions, Ingestor};
use blox_store::{Filter, Kind, MemStore, PageRequest, Store, StoreOptions};
use blox_testkit::{entities, instance_event, task_event};
use proptest::prelude::*;

const STATUSES: &[&str] = &["PROVISIONING", "PENDING", "RUNNING", "STOPPING", "STOPPED"];

fn task(n: usize, version: u64, status: usize) -> Task {
    Task {
        last_status: STATUSES[status].into(),
        started_by: status.is_multiple_of(2).then(|| format!("by{status}")),
        version,
        updated_at: Some(format!("2026-11-25T00:00:{version:02}.000Z")),
        ..entities::task(&format!("c{}", n % 2), &format!("t{n}"))
    }
}

fn instance(n: usize, version: u64, status: usize) -> ContainerInstance {
    ContainerInstance {
        agent_connected: status.is_multiple_of(2),
        status: ["ACTIVE", "DRAINING", "INACTIVE"][status % 3].into(),
        running_tasks_count: Some(status as i64),
        version,
        ..entities::instance("c0", &format!("i{n}"))
    }
}

/// Every entity's (kind, id) → (version, status, body) after ingesting `bodies` in `batches`.
fn ingest(bodies: &[String], batches: &[usize]) -> BTreeMap<(bool, String), (u64, String, Vec<u8>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Arc::new(MemStore::new(StoreOptions::default()));
        let ingestor = Ingestor::new(store.clone(), Arc::new(NoEvents), IngestOptions::default());
        let mut rest = bodies;
        let mut sizes = batches.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap()).clamp(1, rest.len());
            let (batch, tail) = rest.split_at(n);
            rest = tail;
            let messages = batch
                .iter()
                .enumerate()
                .map(|(i, body)| Message {
                    id: i.to_string(),
                    receipt: i.to_string(),
                    body: body.clone(),
                    sent_at_ms: None,
                })
                .collect();
            ingestor.commit(messages).await.unwrap();
        }
        let mut state = BTreeMap::new();
        for kind in [Kind::Task, Kind::Instance] {
            for record in store
                .list(kind, &Filter::default(), PageRequest::default())
                .await
                .unwrap()
                .items
            {
                state.insert(
                    (kind == Kind::Task, record.doc.key.id),
                    (record.doc.version, record.doc.status, record.doc.body),
                );
            }
        }
        state
    })
}

/// For each of a few tasks and instances, a run of versions with a random status each.
fn histories() -> impl Strategy<Value = Vec<(bool, usize, Vec<usize>)>> {
    proptest::collection::vec(
        (
            any::<bool>(),
            0..4usize,
            proptest::collection::vec(0..5usize, 1..6),
        ),
        1..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_order_with_duplicates_yields_the_same_state(
        histories in histories(),
        order in proptest::collection::vec(any::<proptest::sample::Index>(), 0..40),
        duplicates in proptest::collection::vec(any::<proptest::sample::Index>(), 0..10),
        batches in proptest::collection::vec(1..7usize, 1..5),
    ) {
        let mut events = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (is_task, n, statuses) in &histories {
            if !seen.insert((*is_task, *n)) {
                continue; // one history per entity
            }
            for (i, status) in statuses.iter().enumerate() {
                let version = i as u64 + 1;
                events.push(if *is_task {
                    task_event(&task(*n, version, *status), version)
                } else {
                    instance_event(&instance(*n, version, *status), version)
                });
            }
        }
        // In order, one batch each: the reference.
        let expected = ingest(&events, &[1]);
        // Shuffled (a permutation driven by `order`), with duplicates, in random batch sizes.
        let mut shuffled = events.clone();
        for (i, index) in order.iter().enumerate() {
            let len = shuffled.len();
            shuffled.swap(i % len, index.index(len));
        }
        for index in &duplicates {
            let pick = shuffled[index.index(shuffled.len())].clone();
            let at = index.index(shuffled.len() + 1);
            shuffled.insert(at, pick);
        }
        prop_assert_eq!(ingest(&shuffled, &batches), expected);
    }
}
