//! Seeded worlds and churn for the simulator. A [`Scenario`] builds the initial account (clusters,
//! task definitions, instances across availability zones and instance types, running tasks); a
//! [`Driver`] then acts as everything else in the account at given rates: instances joining and
//! leaving, draining, agents disconnecting, tasks starting, crashing and being stopped. The same seed
//! and the same steps give the same world.

use std::collections::VecDeque;

use blox_aws::StartTask;
use blox_model::{ContainerInstance, Task};
use rand::seq::IndexedRandom as _;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::ecs::{Ecs, NewInstance, SimContainer, SimError, SimFault, SimHealthCheck};

/// Events per second of churn, each kind drawn independently.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// New instances registering (spread over the clusters).
    pub instance_joins: f64,
    /// Instances whose EC2 host terminates (tasks stop, instance deregistered).
    pub instance_leaves: f64,
    /// Instances set to DRAINING; each leaves `drain_ms` later.
    pub drains: f64,
    pub drain_ms: u64,
    /// Agents disconnecting; each reconnects `disconnect_ms` later.
    pub agent_disconnects: f64,
    pub disconnect_ms: u64,
    /// Standalone tasks started on a random instance with room.
    pub task_starts: f64,
    /// Running tasks whose essential container exits.
    pub task_crashes: f64,
    /// Running tasks stopped by their owner.
    pub task_stops: f64,
}

impl Rates {
    /// Enough to watch something happen, not enough to bury it: `blox up`.
    pub fn light() -> Rates {
        Rates {
            instance_joins: 1.0 / 45.0,
            instance_leaves: 1.0 / 90.0,
            drains: 1.0 / 90.0,
            drain_ms: 20_000,
            agent_disconnects: 1.0 / 60.0,
            disconnect_ms: 15_000,
            task_starts: 0.5,
            task_crashes: 0.1,
            task_stops: 0.35,
        }
    }

    /// Task churn of about `events_per_second` ECS events, with the instance churn of `light`. A
    /// start emits five events (PROVISIONING, PENDING, RUNNING, and its instance's resources taken
    /// and its running count), a crash or stop three (desired STOPPED, STOPPED, resources freed);
    /// half the operations are starts, so four events per operation (measured in
    /// `tests/control_plane.rs`).
    pub fn task_churn(events_per_second: f64) -> Rates {
        let operations = events_per_second / 4.0;
        Rates {
            task_starts: operations / 2.0,
            task_crashes: operations / 4.0,
            task_stops: operations / 4.0,
            ..Rates::light()
        }
    }
}

/// A cluster of the initial world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterPlan {
    pub name: String,
    pub instances: usize,
    /// Initial tasks in the cluster, spread over its instances; `None`: the scenario's
    /// `tasks_per_instance` on each.
    #[serde(default)]
    pub tasks: Option<usize>,
}

/// A task definition family of the initial world: revision 1 (one container: CPU units, MiB, a
/// static host port), which the world's own tasks run, and later revisions for deployments to try.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FamilyPlan {
    pub family: String,
    pub cpu: i64,
    pub memory: i64,
    pub host_port: Option<i64>,
    /// Revisions 2, 3, … in order, registered with the first. Nothing in the scenario starts them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub later_revisions: Vec<RevisionPlan>,
}

/// A later revision of a family: its one container's size, port, health check and fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionPlan {
    pub cpu: i64,
    pub memory: i64,
    pub host_port: Option<i64>,
    #[serde(default)]
    pub health_check: Option<SimHealthCheck>,
    #[serde(default)]
    pub fault: Option<SimFault>,
}

impl FamilyPlan {
    /// `FAMILY:1`: what the world's own tasks run, whatever the latest revision is.
    pub fn first_revision(&self) -> String {
        format!("{}:1", self.family)
    }

    /// Every revision's container, in registration order.
    fn containers(&self) -> impl Iterator<Item = SimContainer> + '_ {
        let first = RevisionPlan {
            cpu: self.cpu,
            memory: self.memory,
            host_port: self.host_port,
            health_check: None,
            fault: None,
        };
        std::iter::once(first)
            .chain(self.later_revisions.iter().cloned())
            .map(|r| SimContainer {
                name: self.family.clone(),
                cpu: r.cpu,
                memory: Some(r.memory),
                essential: true,
                host_ports: r.host_port.into_iter().collect(),
                health_check: r.health_check,
                fault: r.fault,
            })
    }
}

/// An initial world and its churn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub clusters: Vec<ClusterPlan>,
    pub availability_zones: Vec<String>,
    pub instance_types: Vec<String>,
    pub families: Vec<FamilyPlan>,
    /// Tasks started on each instance at the start (as long as they fit).
    pub tasks_per_instance: usize,
    pub rates: Rates,
}

impl Scenario {
    /// `blox up`'s account: three clusters across three zones and a few instance types, two tasks on
    /// most instances, light churn. `log-router` is the daemon to deploy: besides revision 1, which
    /// the world runs, `log-router:2` is good and health-checked (HEALTHY about 2 s after RUNNING),
    /// `log-router:3` is the same but crashes about 3 s after RUNNING (a bad release: a failed
    /// deployment and its rollback), and `log-router:4` is its fix, so that the bare family name
    /// resolves to a good revision. `web:1` is refused (`RESOURCE:PORTS`) on the demo-prod instances
    /// already running a `web` task on its host port, which is most of them.
    pub fn demo() -> Scenario {
        let log_router = RevisionPlan {
            cpu: 128,
            memory: 256,
            host_port: None,
            health_check: None,
            fault: None,
        };
        Scenario {
            clusters: vec![
                ClusterPlan {
                    name: "demo-prod".into(),
                    instances: 12,
                    tasks: None,
                },
                ClusterPlan {
                    name: "demo-staging".into(),
                    instances: 5,
                    tasks: None,
                },
                ClusterPlan {
                    name: "demo-batch".into(),
                    instances: 4,
                    tasks: None,
                },
            ],
            availability_zones: zones(3),
            instance_types: vec!["m5.large".into(), "c5.xlarge".into(), "t3.medium".into()],
            families: vec![
                family("web", 256, 512, Some(8080)),
                family("worker", 512, 1024, None),
                FamilyPlan {
                    later_revisions: vec![
                        RevisionPlan {
                            health_check: Some(DEMO_HEALTH_CHECK),
                            ..log_router.clone()
                        },
                        RevisionPlan {
                            health_check: Some(DEMO_HEALTH_CHECK),
                            fault: Some(SimFault::Crash {
                                after_ms: 3_000,
                                exit_code: 1,
                            }),
                            ..log_router.clone()
                        },
                        RevisionPlan {
                            health_check: Some(DEMO_HEALTH_CHECK),
                            ..log_router
                        },
                    ],
                    ..family("log-router", 128, 256, None)
                },
                family("metrics-agent", 128, 128, None),
            ],
            tasks_per_instance: 2,
            rates: Rates::light(),
        }
    }

    /// A large account: `instances` over `clusters` clusters with `tasks` tasks in all (small
    /// tasks on large instances, so that they fit).
    pub fn scale(clusters: usize, instances: usize, tasks: usize, rates: Rates) -> Scenario {
        let clusters = clusters.max(1);
        let per_instance = tasks.div_ceil(instances.max(1));
        let mut plans = Vec::with_capacity(clusters);
        let mut before = 0;
        for n in 0..clusters {
            let here = instances / clusters + usize::from(n < instances % clusters);
            // Tasks in proportion to instances, so that exactly `tasks` are started in all.
            let share = |upto: usize| (tasks * upto).checked_div(instances).unwrap_or(0);
            plans.push(ClusterPlan {
                name: format!("scale-{n:02}"),
                instances: here,
                tasks: Some(share(before + here) - share(before)),
            });
            before += here;
        }
        Scenario {
            clusters: plans,
            availability_zones: zones(3),
            instance_types: vec!["c5.2xlarge".into(), "m5.xlarge".into()],
            families: vec![family("app", 64, 128, None), family("sidecar", 32, 64, None)],
            tasks_per_instance: per_instance,
            rates,
        }
    }

    /// Builds the world at `now`: clusters, task definitions, instances, and the initial tasks
    /// already RUNNING. Emits no events (nobody was listening yet); blox learns it by reconciling.
    pub fn populate(&self, ecs: &mut Ecs, seed: u64, now: u64) -> Result<(), SimError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0000_5ce4_a210);
        ecs.set_quiet(true);
        for f in &self.families {
            for container in f.containers() {
                ecs.register_task_definition(&f.family, None, None, vec![container])?;
            }
        }
        // Tasks start far enough in the past to be RUNNING by `now`.
        let config = ecs.config();
        let started = now.saturating_sub(config.provisioning_ms + config.pending_ms + 1_000);
        let failure = config.start_failure;
        ecs.set_start_failure(0.0);
        let mut families = self.families.iter().cycle();
        for plan in &self.clusters {
            ecs.create_cluster(&plan.name)?;
            let mut instances = Vec::with_capacity(plan.instances);
            for _ in 0..plan.instances {
                let instance = ecs.register_instance(&plan.name, self.new_instance(&mut rng), started)?;
                instances.push(instance.container_instance_arn.clone());
            }
            let mut left = plan.tasks.unwrap_or(plan.instances * self.tasks_per_instance);
            if instances.is_empty() || self.families.is_empty() {
                left = 0;
            }
            while left > 0 {
                for batch in instances.chunks(blox_aws::START_TASK_BATCH) {
                    if left == 0 {
                        break;
                    }
                    let batch = &batch[..batch.len().min(left)];
                    let Some(f) = families.next() else { break };
                    ecs.start(
                        &StartTask {
                            cluster: plan.name.clone(),
                            task_definition: f.first_revision(),
                            container_instances: batch.to_vec(),
                            started_by: None,
                            group: None,
                        },
                        started,
                    )?;
                    left -= batch.len();
                }
            }
        }
        ecs.advance(now);
        ecs.set_start_failure(failure);
        ecs.set_quiet(false);
        ecs.drain_events();
        Ok(())
    }

    fn new_instance(&self, rng: &mut ChaCha8Rng) -> NewInstance {
        let zone = self
            .availability_zones
            .choose(rng)
            .map_or("us-east-1a", String::as_str);
        let kind = self.instance_types.choose(rng).map_or("m5.large", String::as_str);
        NewInstance::ec2(kind, zone)
    }
}

fn zones(n: usize) -> Vec<String> {
    ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"]
        .iter()
        .take(n)
        .map(|z| (*z).to_owned())
        .collect()
}

fn family(name: &str, cpu: i64, memory: i64, host_port: Option<i64>) -> FamilyPlan {
    FamilyPlan {
        family: name.into(),
        cpu,
        memory,
        host_port,
        later_revisions: Vec::new(),
    }
}

/// The demo's health check: HEALTHY about 2 s after RUNNING, so that a deployment and its rollback
/// can be watched in the first minute.
const DEMO_HEALTH_CHECK: SimHealthCheck = SimHealthCheck {
    healthy_after_ms: 2_000,
};

#[derive(Debug, Clone, Copy)]
enum Action {
    Join,
    Leave,
    Drain,
    Disconnect,
    Start,
    Crash,
    Stop,
}

const ACTIONS: [Action; 7] = [
    Action::Join,
    Action::Leave,
    Action::Drain,
    Action::Disconnect,
    Action::Start,
    Action::Crash,
    Action::Stop,
];

/// How far a random pick looks for a match before giving up on this step.
const PICK_LIMIT: usize = 2_000;

/// Applies a scenario's churn, step by step.
#[derive(Debug, Serialize, Deserialize)]
pub struct Driver {
    scenario: Scenario,
    rng: ChaCha8Rng,
    /// Fractional actions carried over between steps, per action.
    owed: [f64; ACTIONS.len()],
    /// Instances to terminate after draining: (due, cluster, instance ARN).
    draining: VecDeque<(u64, String, String)>,
    /// Agents to reconnect: (due, cluster, instance ARN).
    disconnected: VecDeque<(u64, String, String)>,
    /// Actions taken, for tests and reports.
    pub actions: u64,
}

impl Driver {
    pub fn new(scenario: Scenario, seed: u64) -> Driver {
        Driver {
            scenario,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xd21e_0000),
            owed: [0.0; ACTIONS.len()],
            draining: VecDeque::new(),
            disconnected: VecDeque::new(),
            actions: 0,
        }
    }

    pub fn rates(&self) -> &Rates {
        &self.scenario.rates
    }

    pub fn set_rates(&mut self, rates: Rates) {
        self.scenario.rates = rates;
    }

    /// Acts for `elapsed_ms` of churn ending at `now`. Errors of single actions (an instance that
    /// left meanwhile) are part of life and skipped.
    pub fn step(&mut self, ecs: &mut Ecs, now: u64, elapsed_ms: u64) {
        while self.draining.front().is_some_and(|d| d.0 <= now) {
            if let Some((_, cluster, arn)) = self.draining.pop_front() {
                let _ = ecs.terminate_instance(&cluster, &arn, now);
                self.actions += 1;
            }
        }
        while self.disconnected.front().is_some_and(|d| d.0 <= now) {
            if let Some((_, cluster, arn)) = self.disconnected.pop_front() {
                let _ = ecs.set_agent_connected(&cluster, &arn, true, now);
                self.actions += 1;
            }
        }
        let seconds = elapsed_ms as f64 / 1000.0;
        let rates = &self.scenario.rates;
        let per_second = [
            rates.instance_joins,
            rates.instance_leaves,
            rates.drains,
            rates.agent_disconnects,
            rates.task_starts,
            rates.task_crashes,
            rates.task_stops,
        ];
        for (k, action) in ACTIONS.into_iter().enumerate() {
            self.owed[k] += per_second[k] * seconds;
            while self.owed[k] >= 1.0 {
                self.owed[k] -= 1.0;
                self.act(ecs, action, now);
            }
        }
    }

    fn act(&mut self, ecs: &mut Ecs, action: Action, now: u64) {
        let Some(cluster) = self
            .scenario
            .clusters
            .choose(&mut self.rng)
            .map(|c| c.name.clone())
        else {
            return;
        };
        let probe: u128 = self.rng.random();
        let acted = match action {
            Action::Join => {
                let new = self.scenario.new_instance(&mut self.rng);
                ecs.register_instance(&cluster, new, now).is_ok()
            }
            Action::Leave => self
                .instance(ecs, &cluster, probe, |i| i.status == "ACTIVE")
                .is_some_and(|arn| ecs.terminate_instance(&cluster, &arn, now).is_ok()),
            Action::Drain => match self.instance(ecs, &cluster, probe, |i| i.status == "ACTIVE") {
                Some(arn) => {
                    let ok = ecs
                        .update_instances_state(&cluster, std::slice::from_ref(&arn), "DRAINING", now)
                        .is_ok();
                    self.draining
                        .push_back((now + self.scenario.rates.drain_ms, cluster.clone(), arn));
                    ok
                }
                None => false,
            },
            Action::Disconnect => {
                match self.instance(ecs, &cluster, probe, |i| {
                    i.status != "INACTIVE" && i.agent_connected
                }) {
                    Some(arn) => {
                        let ok = ecs.set_agent_connected(&cluster, &arn, false, now).is_ok();
                        self.disconnected.push_back((
                            now + self.scenario.rates.disconnect_ms,
                            cluster.clone(),
                            arn,
                        ));
                        ok
                    }
                    None => false,
                }
            }
            Action::Start => {
                let Some(f) = self.scenario.families.choose(&mut self.rng).cloned() else {
                    return;
                };
                match self.instance(ecs, &cluster, probe, |i| {
                    i.status == "ACTIVE" && i.agent_connected
                }) {
                    Some(arn) => ecs
                        .start(
                            &StartTask {
                                cluster: cluster.clone(),
                                task_definition: f.first_revision(),
                                container_instances: vec![arn],
                                started_by: None,
                                group: None,
                            },
                            now,
                        )
                        .is_ok_and(|s| !s.tasks.is_empty()),
                    None => false,
                }
            }
            Action::Crash => {
                let code = *[1, 137, 139].choose(&mut self.rng).unwrap_or(&1);
                // Any running task can crash, a scheduler's daemons included.
                self.running_task(ecs, &cluster, probe, false)
                    .is_some_and(|arn| ecs.crash_task(&cluster, &arn, code, now).is_ok())
            }
            Action::Stop => self
                .running_task(ecs, &cluster, probe, true)
                .is_some_and(|arn| ecs.stop(&cluster, &arn, "Scaled down by its owner", now).is_ok()),
        };
        if acted {
            self.actions += 1;
        }
    }

    fn instance(
        &self,
        ecs: &Ecs,
        cluster: &str,
        probe: u128,
        want: impl Fn(&ContainerInstance) -> bool,
    ) -> Option<String> {
        ecs.pick_instance(cluster, probe, PICK_LIMIT, want)
            .map(|i| i.container_instance_arn.clone())
    }

    /// A running task; `unowned` only: one no scheduler started (owners stop only their own tasks).
    fn running_task(&self, ecs: &Ecs, cluster: &str, probe: u128, unowned: bool) -> Option<String> {
        let want = |t: &Task| {
            t.last_status == "RUNNING"
                && t.desired_status == "RUNNING"
                && (!unowned || t.started_by.is_none())
        };
        ecs.pick_task(cluster, probe, PICK_LIMIT, want)
            .map(|t| t.task_arn.clone())
    }
}
