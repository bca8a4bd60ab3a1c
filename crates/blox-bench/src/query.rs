//! The cluster query language's cost: a three-clause query matched against every instance of the
//! workload (parsed from its instance events), as instance groups by query will match them.

use std::hint::black_box;

use anyhow::{Result, bail};
use blox_model::cql::{InstanceFacts, Query};
use blox_model::{ContainerInstance, EcsEvent};

use super::report::Goal;
use super::{Bench, now};

/// An attribute regex, a version comparison and a task-group negation: one clause of each kind of
/// work a query does.
const QUERY: &str = "attribute:ecs.instance-type =~ m5.* and agentVersion >= 1.14.0 and task:group != batch";
/// Evaluations measured in all (over every instance, as many rounds as that takes).
const EVALUATIONS: usize = 2_000_000;

pub(crate) fn run(bench: &mut Bench) -> Result<()> {
    let instances = (0..bench.params.instances)
        .map(|i| match EcsEvent::parse(&bench.workload.instance_event(i, 1))? {
            EcsEvent::ContainerInstance { instance, .. } => Ok(instance),
            _ => bail!("the workload's instance event {i} is not one"),
        })
        .collect::<Result<Vec<ContainerInstance>>>()?;
    let query: Query = QUERY.parse()?;
    let groups = ["web", "database"];
    let facts: Vec<InstanceFacts> = instances
        .iter()
        .map(|instance| InstanceFacts::new(instance).with_task_groups(&groups))
        .collect();
    let rounds = (EVALUATIONS / facts.len().max(1)).max(1);
    let started = now();
    let mut matched = 0_usize;
    for _ in 0..rounds {
        for subject in &facts {
            matched += usize::from(black_box(&query).matches(black_box(subject)));
        }
    }
    let per_evaluation = started.elapsed().as_secs_f64() * 1e9 / (rounds * facts.len()) as f64;
    let w = "cluster query";
    bench.report.add(
        w,
        "instances matched",
        (matched / rounds) as f64,
        "instances",
        None,
    );
    bench.report.add(
        w,
        "three-clause query, per instance",
        per_evaluation,
        "ns",
        Some(Goal::AtMost(1000.0)),
    );
    Ok(())
}
