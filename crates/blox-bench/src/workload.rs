//! The synthetic cluster: deterministic names and ARNs, and ECS events shaped like the ones EventBridge
//! delivers ("ECS Task State Change", "ECS Container Instance State Change"), written straight into a
//! string so that generating a million of them costs little next to applying them.
//!
//! Everything derives from a seed: the same sizes and seed give byte-identical events, so runs compare.

use std::fmt::Write as _;

const ACCOUNT: &str = "123456789012";
const REGION: &str = "us-east-1";

/// The statuses a task's events walk through, in ECS's lifecycle order. RUNNING repeats because tasks
/// spend most of their events there (container health, instance changes), and a task that reached
/// STOPPED starts over, standing for its replacement under the same identity.
const LIFECYCLE: [&str; 12] = [
    "PROVISIONING",
    "PENDING",
    "ACTIVATING",
    "RUNNING",
    "RUNNING",
    "RUNNING",
    "RUNNING",
    "RUNNING",
    "DEACTIVATING",
    "STOPPING",
    "DEPROVISIONING",
    "STOPPED",
];

/// Services the tasks belong to; a task of a service has `startedBy` and a `group`.
const SERVICES: u64 = 50;

/// SplitMix64: small, fast and good enough to draw a benchmark's choices reproducibly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant at these sizes.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The SplitMix64 finaliser: a stateless hash used to derive ids from indexes.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The shape of the synthetic cluster.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub clusters: u64,
    pub instances: u64,
    pub tasks: u64,
    pub seed: u64,
}

/// Builds event bodies and names for a [`Shape`]. Task `t` runs on instance `t % instances`, and
/// instance `i` belongs to cluster `i % clusters`, so tasks spread evenly over instances and clusters.
#[derive(Debug, Clone)]
pub struct Workload {
    pub shape: Shape,
}

impl Workload {
    pub fn new(shape: Shape) -> Workload {
        Workload {
            shape: Shape {
                clusters: shape.clusters.max(1),
                instances: shape.instances.max(1),
                tasks: shape.tasks.max(1),
                seed: shape.seed,
            },
        }
    }

    pub fn cluster_name(&self, cluster: u64) -> String {
        format!("bench-{cluster:03}")
    }

    fn cluster_of_instance(&self, instance: u64) -> u64 {
        instance % self.shape.clusters
    }

    pub fn instance_of_task(&self, task: u64) -> u64 {
        task % self.shape.instances
    }

    pub fn cluster_of_task(&self, task: u64) -> u64 {
        self.cluster_of_instance(self.instance_of_task(task))
    }

    /// A 32-hex-digit id, like the ones ECS puts in new-format ARNs.
    fn hex_id(&self, domain: u64, index: u64) -> String {
        let a = mix(self.shape.seed ^ mix(domain.wrapping_mul(0x1000_0000_0000_0001) ^ index));
        let b = mix(a ^ 0x5bd1_e995);
        format!("{a:016x}{b:016x}")
    }

    pub fn cluster_arn(&self, cluster: u64) -> String {
        format!(
            "arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{}",
            self.cluster_name(cluster)
        )
    }

    pub fn instance_arn(&self, instance: u64) -> String {
        format!(
            "arn:aws:ecs:{REGION}:{ACCOUNT}:container-instance/{}/{}",
            self.cluster_name(self.cluster_of_instance(instance)),
            self.hex_id(1, instance)
        )
    }

    pub fn task_arn(&self, task: u64) -> String {
        format!(
            "arn:aws:ecs:{REGION}:{ACCOUNT}:task/{}/{}",
            self.cluster_name(self.cluster_of_task(task)),
            self.hex_id(2, task)
        )
    }

    /// The group of a task: two tasks in five are run by hand (`family:batch`), the rest belong to
    /// a service (`service:svc-N`, with its `startedBy`).
    pub fn task_group(&self, task: u64) -> String {
        if self.by_service(task) {
            format!("service:svc-{}", task % SERVICES)
        } else {
            "family:batch".to_owned()
        }
    }

    fn by_service(&self, task: u64) -> bool {
        task % 5 >= 2
    }

    /// The `ecs.availability-zone` attribute of an instance: zones a, b and c in turn.
    pub fn availability_zone(&self, instance: u64) -> String {
        format!("{REGION}{}", ["a", "b", "c"][(instance % 3) as usize])
    }

    /// The status a task has at `version`: its place in [`LIFECYCLE`], offset per task so that the
    /// first events already give a mix of statuses.
    pub fn task_status(&self, task: u64, version: u64) -> &'static str {
        LIFECYCLE[((task + version) % LIFECYCLE.len() as u64) as usize]
    }

    /// The body of an "ECS Task State Change" event of task `task` at `version`: one or two
    /// containers with a port binding, overrides, and for service tasks `startedBy` and `group`.
    pub fn task_event(&self, task: u64, version: u64) -> String {
        let arn = self.task_arn(task);
        let task_id = arn.rsplit('/').next().unwrap_or_default().to_owned();
        let cluster = self.cluster_of_task(task);
        let cluster_name = self.cluster_name(cluster);
        let status = self.task_status(task, version);
        let stopped = matches!(status, "DEACTIVATING" | "STOPPING" | "DEPROVISIONING" | "STOPPED");
        let desired = if stopped { "STOPPED" } else { "RUNNING" };
        let container_status = match status {
            "RUNNING" => "RUNNING",
            "STOPPED" | "DEPROVISIONING" | "STOPPING" | "DEACTIVATING" => "STOPPED",
            _ => "PENDING",
        };
        let service = task % SERVICES;
        let by_service = self.by_service(task);
        let created = timestamp(task * 7);
        let updated = timestamp(task * 7 + version * 13);

        let mut d = String::with_capacity(1400);
        let _ = write!(
            d,
            r#"{{"clusterArn":"{}","containerInstanceArn":"{}","containers":["#,
            self.cluster_arn(cluster),
            self.instance_arn(self.instance_of_task(task)),
        );
        let containers: &[&str] = if task.is_multiple_of(3) {
            &["app", "log-router"]
        } else {
            &["app"]
        };
        for (n, name) in containers.iter().enumerate() {
            if n > 0 {
                d.push(',');
            }
            let _ = write!(
                d,
                r#"{{"containerArn":"arn:aws:ecs:{REGION}:{ACCOUNT}:container/{cluster_name}/{task_id}/{}","lastStatus":"{container_status}","name":"{name}","taskArn":"{arn}""#,
                self.hex_id(3 + n as u64, task),
            );
            if *name == "app" && container_status != "PENDING" {
                let _ = write!(
                    d,
                    r#","networkBindings":[{{"bindIP":"0.0.0.0","containerPort":8080,"hostPort":{},"protocol":"tcp"}}]"#,
                    32768 + (task * 31 + version) % 28000
                );
            }
            if container_status == "STOPPED" {
                d.push_str(r#","exitCode":0,"reason":"Essential container in task exited""#);
            }
            d.push('}');
        }
        let _ = write!(
            d,
            r#"],"createdAt":"{created}","desiredStatus":"{desired}","lastStatus":"{status}","overrides":{{"containerOverrides":[{{"name":"app","command":["/bin/server","--port","8080"],"environment":[{{"name":"DEPLOYMENT","value":"blue"}},{{"name":"SHARD","value":"{}"}}]}}],"taskRoleArn":"arn:aws:iam::{ACCOUNT}:role/svc-{service}-task"}}"#,
            task % 16,
        );
        if status != "PROVISIONING" && status != "PENDING" {
            let _ = write!(d, r#","startedAt":"{}""#, timestamp(task * 7 + 5));
        }
        if by_service {
            let _ = write!(
                d,
                r#","startedBy":"ecs-svc/{}""#,
                9_223_370_000_000_000_000_u64 + mix(service) % 1_000_000_000_000
            );
        }
        let _ = write!(d, r#","group":"{}""#, self.task_group(task));
        if stopped {
            let _ = write!(
                d,
                r#","stoppedAt":"{updated}","stoppedReason":"Scaling activity initiated by deployment""#
            );
        }
        let _ = write!(
            d,
            r#","launchType":"EC2","taskArn":"{arn}","taskDefinitionArn":"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/svc-{service}:{}","updatedAt":"{updated}","version":{version}}}"#,
            1 + service % 7,
        );
        self.envelope("ECS Task State Change", &arn, 2, task, version, &updated, &d)
    }

    /// The body of an "ECS Container Instance State Change" event of `instance` at `version`, with
    /// resources in ECS's typed form.
    pub fn instance_event(&self, instance: u64, version: u64) -> String {
        let arn = self.instance_arn(instance);
        let cluster = self.cluster_of_instance(instance);
        // One instance in twenty is draining at any time.
        let status = if (instance + version).is_multiple_of(20) {
            "DRAINING"
        } else {
            "ACTIVE"
        };
        let running = (version * 7 + instance) % 12;
        let updated = timestamp(instance * 11 + version * 17);
        let mut d = String::with_capacity(1600);
        let _ = write!(
            d,
            concat!(
                r#"{{"agentConnected":true,"agentUpdateStatus":"UPDATED","attributes":["#,
                r#"{{"name":"ecs.capability.execution-role-awslogs"}},{{"name":"ecs.availability-zone","value":"{az}"}},"#,
                r#"{{"name":"ecs.instance-type","value":"m5.xlarge"}},{{"name":"ecs.os-type","value":"linux"}},"#,
                r#"{{"name":"ecs.ami-id","value":"ami-0{ami:016x}"}}],"#,
                r#""clusterArn":"{cluster_arn}","containerInstanceArn":"{arn}","ec2InstanceId":"i-0{ec2:016x}","#,
                r#""registeredResources":[{{"name":"CPU","type":"INTEGER","integerValue":4096}},"#,
                r#"{{"name":"MEMORY","type":"INTEGER","integerValue":15576}},"#,
                r#"{{"name":"PORTS","type":"STRINGSET","stringSetValue":["22","2375","2376","51678","51679"]}},"#,
                r#"{{"name":"PORTS_UDP","type":"STRINGSET","stringSetValue":[]}}],"#,
                r#""remainingResources":[{{"name":"CPU","type":"INTEGER","integerValue":{cpu}}},"#,
                r#"{{"name":"MEMORY","type":"INTEGER","integerValue":{mem}}},"#,
                r#"{{"name":"PORTS","type":"STRINGSET","stringSetValue":["22","2375","2376","51678","51679"]}},"#,
                r#"{{"name":"PORTS_UDP","type":"STRINGSET","stringSetValue":[]}}],"#,
                r#""status":"{status}","versionInfo":{{"agentHash":"4023248","agentVersion":"1.79.2","#,
                r#""dockerVersion":"DockerVersion: 20.10.25"}},"runningTasksCount":{running},"#,
                r#""pendingTasksCount":{pending},"updatedAt":"{updated}","version":{version}}}"#,
            ),
            az = self.availability_zone(instance),
            ami = mix(cluster),
            cluster_arn = self.cluster_arn(cluster),
            arn = arn,
            ec2 = mix(instance ^ 0xec2),
            cpu = 4096 - running * 256,
            mem = 15576 - running * 1024,
            status = status,
            running = running,
            pending = version % 2,
            updated = updated,
            version = version,
        );
        self.envelope(
            "ECS Container Instance State Change",
            &arn,
            1,
            instance,
            version,
            &updated,
            &d,
        )
    }

    /// The EventBridge envelope around a detail.
    #[allow(clippy::too_many_arguments)] // Private, with two call sites; a struct would only rename them.
    fn envelope(
        &self,
        detail_type: &str,
        arn: &str,
        domain: u64,
        index: u64,
        version: u64,
        time: &str,
        detail: &str,
    ) -> String {
        let id = self.hex_id(domain + 100, index ^ (version << 40));
        let mut out = String::with_capacity(detail.len() + 300);
        let _ = write!(
            out,
            r#"{{"version":"0","id":"{}-{}-{}-{}-{}","detail-type":"{detail_type}","source":"aws.ecs","account":"{ACCOUNT}","time":"{}Z","region":"{REGION}","resources":["{arn}"],"detail":{detail}}}"#,
            &id[0..8],
            &id[8..12],
            &id[12..16],
            &id[16..20],
            &id[20..32],
            // EventBridge's `time` has whole seconds.
            &time[..19],
        );
        out
    }
}

/// An RFC 3339 time in May 2024, `seconds` after its start (wrapping within the month).
fn timestamp(seconds: u64) -> String {
    let s = seconds % (28 * 86_400);
    format!(
        "2024-05-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        1 + s / 86_400,
        s / 3600 % 24,
        s / 60 % 60,
        s % 60,
        seconds % 1000
    )
}

#[cfg(test)]
mod tests {
    use blox_model::EcsEvent;

    use super::*;

    fn workload() -> Workload {
        Workload::new(Shape {
            clusters: 3,
            instances: 30,
            tasks: 300,
            seed: 7,
        })
    }

    #[test]
    fn task_events_parse_as_their_task_at_their_version() {
        let w = workload();
        for task in 0..40 {
            for version in 1..14 {
                let body = w.task_event(task, version);
                let event = EcsEvent::parse(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
                let EcsEvent::Task {
                    cluster,
                    task: parsed,
                } = event
                else {
                    panic!("not a task event: {body}");
                };
                assert_eq!(cluster.as_str(), w.cluster_name(w.cluster_of_task(task)));
                assert_eq!(parsed.task_arn, w.task_arn(task));
                assert_eq!(parsed.version, version);
                assert_eq!(parsed.last_status, w.task_status(task, version));
                assert_eq!(parsed.started_by.is_some(), task % 5 >= 2);
                assert!(!parsed.containers.is_empty());
            }
        }
    }

    #[test]
    fn instance_events_parse() {
        let w = workload();
        for instance in 0..30 {
            let body = w.instance_event(instance, 3);
            let event = EcsEvent::parse(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
            let EcsEvent::ContainerInstance { instance: parsed, .. } = event else {
                panic!("not an instance event: {body}");
            };
            assert_eq!(parsed.container_instance_arn, w.instance_arn(instance));
            assert_eq!(parsed.version, 3);
        }
    }

    #[test]
    fn events_are_reproducible_and_about_a_kilobyte() {
        let (a, b) = (workload(), workload());
        assert_eq!(a.task_event(5, 2), b.task_event(5, 2));
        assert_ne!(a.task_arn(1), a.task_arn(2));
        let sizes: Vec<usize> = (0..30).map(|t| a.task_event(t, 4).len()).collect();
        let mean = sizes.iter().sum::<usize>() / sizes.len();
        assert!((800..2000).contains(&mean), "mean task event size {mean}");
        let other_seed = Workload::new(Shape { seed: 8, ..a.shape });
        assert_ne!(a.task_arn(1), other_seed.task_arn(1));
    }
}
