//! Convergence against the simulator: under any seeded scenario of churn (instances joining, leaving,
//! draining, agents disconnecting, tasks starting, crashing, stopping, expiring) with faults on the
//! event path (drops, duplicates, reordering, delay), once the faults stop and the last events are in,
//! one reconcile pass leaves the store holding exactly what the simulated ECS lists and describes:
//! the same entities, each at the simulator's version with the simulator's description.
//!
//! Everything runs on the simulator's manual clock through the real ingestion path (`Ingestor::commit`
//! deleting from the simulator's queue) and the real `Reconciler`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use blox_aws::EventSource as _;
use blox_model::ClusterName;
use blox_server::{IngestOptions, Ingestor, ReadinessState, ReconcileOptions, Reconciler, documents};
use blox_sim::{
    Clock, ClusterPlan, Faults, Rates, Scenario, SimConfig, SimOptions, Simulator, ThrottleConfig,
};
use blox_store::{Filter, Kind, MemStore, PageRequest, Store, StoreOptions};
use proptest::prelude::*;

const START_MS: u64 = 1_764_072_000_000;
const STEP: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
struct Case {
    seed: u64,
    faults: Faults,
    steps: usize,
    /// Reconcile every this many steps during the churn (0: only at the end).
    reconcile_every: usize,
    /// Messages taken from the queue per step (a slow consumer lets a backlog build).
    receive_per_step: usize,
}

fn scenario() -> Scenario {
    Scenario {
        clusters: vec![
            ClusterPlan {
                name: "alpha".into(),
                instances: 4,
                tasks: None,
            },
            ClusterPlan {
                name: "beta".into(),
                instances: 3,
                tasks: None,
            },
        ],
        tasks_per_instance: 2,
        // Busy enough that a few seconds see every kind of change.
        rates: Rates {
            instance_joins: 0.6,
            instance_leaves: 0.4,
            drains: 0.4,
            drain_ms: 1_500,
            agent_disconnects: 0.8,
            disconnect_ms: 1_000,
            task_starts: 6.0,
            task_crashes: 2.0,
            task_stops: 2.0,
        },
        ..Scenario::demo()
    }
}

/// (kind, cluster, id) → (version, description) of every stored entity.
type Mirror = BTreeMap<(Kind, String, String), (u64, serde_json::Value)>;

async fn stored(store: &dyn Store) -> Mirror {
    let mut out = Mirror::new();
    for kind in [Kind::Instance, Kind::Task] {
        let page = store
            .list(kind, &Filter::default(), PageRequest::default())
            .await
            .expect("list");
        for record in page.items {
            let doc = record.doc;
            let body = serde_json::from_slice(&doc.body).expect("stored JSON");
            out.insert(
                (kind, doc.key.cluster.to_string(), doc.key.id),
                (doc.version, body),
            );
        }
    }
    out
}

/// What the simulator lists and describes, as blox documents.
fn expected(sim: &Simulator) -> Mirror {
    let mut out = Mirror::new();
    for (cluster, listed) in sim.read(|ecs| ecs.listed()) {
        let name = ClusterName::new(cluster).expect("cluster name");
        for instance in listed.instances {
            let doc = documents::instance(name.clone(), &instance);
            let body = serde_json::from_slice(&doc.body).expect("JSON");
            out.insert(
                (Kind::Instance, name.to_string(), doc.key.id),
                (doc.version, body),
            );
        }
        for task in listed.tasks {
            let doc = documents::task(name.clone(), &task);
            let body = serde_json::from_slice(&doc.body).expect("JSON");
            out.insert((Kind::Task, name.to_string(), doc.key.id), (doc.version, body));
        }
    }
    out
}

async fn consume(sim: &Simulator, ingestor: &Ingestor, max: usize) -> usize {
    let mut taken = 0;
    while taken < max {
        let depth = sim.depth().await.expect("depth");
        if depth.visible == 0 {
            break;
        }
        let batch = sim.receive(10.min(max - taken)).await.expect("receive");
        taken += batch.len();
        ingestor.commit(batch).await.expect("commit");
    }
    taken
}

fn run(case: &Case) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let clock = Clock::manual(START_MS);
        let options = SimOptions {
            config: SimConfig {
                stopped_task_retention_ms: 4_000,
                inactive_instance_retention_ms: 3_000,
                start_failure: 0.1,
                throttle: ThrottleConfig::unlimited(),
                ..SimConfig::default()
            },
            seed: case.seed,
            faults: case.faults.clone(),
            scenario: Some(scenario()),
            churn: true,
            // Far beyond the run: a message received is deleted by the same step.
            visibility_timeout: Duration::from_secs(3_600),
            receive_wait: Duration::ZERO,
            ..SimOptions::default()
        };
        let (sim, _) = Simulator::open(options, clock.clone()).expect("simulator");
        let store: Arc<dyn Store> = Arc::new(MemStore::new(StoreOptions::default()));
        let ingestor = Ingestor::new(store.clone(), Arc::new(sim.clone()), IngestOptions::default());
        let reconciler = Reconciler::new(
            store.clone(),
            Arc::new(sim.clone()),
            ReconcileOptions::default(),
            Arc::new(ReadinessState::default()),
        );
        reconciler.pass().await;

        for step in 1..=case.steps {
            clock.advance(STEP);
            sim.tick();
            consume(&sim, &ingestor, case.receive_per_step).await;
            if case.reconcile_every > 0 && step % case.reconcile_every == 0 {
                reconciler.pass().await;
            }
        }

        // The faults stop and the churn ends; what is in flight arrives, lifecycles finish.
        sim.set_rates(Rates::default());
        sim.heal();
        for _ in 0..50 {
            clock.advance(STEP);
            sim.tick();
            consume(&sim, &ingestor, usize::MAX).await;
        }
        let stats = sim.queue(|q| q.stats());
        assert_eq!(sim.queue(|q| q.pending()), 0, "every message consumed: {stats:?}");
        let before_reconcile = stored(store.as_ref()).await;
        let report = reconciler.pass().await;
        assert!(report.failures.is_empty(), "{report:?}");
        Outcome {
            before_reconcile,
            store: stored(store.as_ref()).await,
            sim: expected(&sim),
            stats,
        }
    })
}

struct Outcome {
    before_reconcile: Mirror,
    store: Mirror,
    sim: Mirror,
    stats: blox_sim::QueueStats,
}

fn check(case: &Case) {
    let Outcome {
        before_reconcile,
        store,
        sim,
        stats,
    } = run(case);
    assert!(!sim.is_empty());
    assert!(stats.emitted > 0);
    if case.faults.drop == 0.0 {
        // Nothing lost: the events alone brought every entity ECS has to its exact state (only
        // what ECS forgot without an event, expired tasks and purged instances, waits for the
        // reconciler).
        for (key, want) in &sim {
            assert_eq!(
                before_reconcile.get(key),
                Some(want),
                "{key:?} after the events, before reconciling ({stats:?})"
            );
        }
    }
    let lower: Vec<_> = sim
        .iter()
        .filter(|(k, (v, _))| store.get(*k).is_some_and(|(stored, _)| stored < v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        lower.is_empty(),
        "entities below the simulator's version: {lower:?}"
    );
    let missing: Vec<_> = sim.keys().filter(|k| !store.contains_key(*k)).collect();
    let extra: Vec<_> = store.keys().filter(|k| !sim.contains_key(*k)).collect();
    assert!(missing.is_empty(), "not mirrored: {missing:?} ({stats:?})");
    assert!(extra.is_empty(), "mirrored but not in ECS: {extra:?} ({stats:?})");
    for (key, want) in &sim {
        assert_eq!(&store[key], want, "{key:?}");
    }
}

fn faults(drop: f64, duplicate: f64, reorder: f64, window_ms: u64, delay_ms: u64) -> Faults {
    Faults {
        drop,
        duplicate,
        reorder,
        reorder_window_ms: window_ms,
        delay_ms,
    }
}

#[test]
fn without_faults_events_alone_keep_the_mirror_exact() {
    check(&Case {
        seed: 1,
        faults: Faults::default(),
        steps: 100,
        reconcile_every: 0,
        receive_per_step: usize::MAX,
    });
}

#[test]
fn heavy_faults_and_a_slow_consumer_still_converge() {
    check(&Case {
        seed: 2,
        faults: faults(0.3, 0.3, 0.5, 3_000, 500),
        steps: 150,
        reconcile_every: 40,
        receive_per_step: 20,
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_seeded_scenario_with_faults_converges_to_the_simulator(
        seed in any::<u64>(),
        drop in prop_oneof![Just(0.0), 0.0..0.4f64],
        duplicate in 0.0..0.5f64,
        reorder in 0.0..0.6f64,
        window_ms in 0u64..5_000,
        delay_ms in 0u64..1_000,
        steps in 20usize..120,
        reconcile_every in prop_oneof![Just(0usize), 5usize..60],
        receive_per_step in prop_oneof![Just(usize::MAX), 5usize..50],
    ) {
        check(&Case {
            seed,
            faults: faults(drop, duplicate, reorder, window_ms, delay_ms),
            steps,
            reconcile_every,
            receive_per_step,
        });
    }
}
