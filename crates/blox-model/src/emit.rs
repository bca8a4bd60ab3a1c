//! ECS events as EventBridge delivers them to SQS, built from blox's model types: the inverse of
//! [`crate::event`]. The simulator emits these, and tests publish them to moto (which emits none).
//! Time is an argument, so the same entity at the same version and time is the same event.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::entity::{ContainerInstance, Resource, Task};
use crate::event::{CONTAINER_INSTANCE_STATE_CHANGE, TASK_STATE_CHANGE};

/// Milliseconds since the Unix epoch as RFC 3339 with milliseconds, UTC: how ECS writes times.
pub fn rfc3339_millis(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

/// The body of an "ECS Task State Change" event for `task`, with `detail.version = version`, sent
/// at `time` (RFC 3339).
pub fn task_event(task: &Task, version: u64, time: &str) -> String {
    let mut d = Map::new();
    d.insert("clusterArn".into(), json!(task.cluster_arn));
    put_opt(&mut d, "containerInstanceArn", &task.container_instance_arn);
    let containers: Vec<Value> = task
        .containers
        .iter()
        .map(|c| {
            let mut o = Map::new();
            o.insert("containerArn".into(), json!(c.container_arn));
            o.insert("lastStatus".into(), json!(c.last_status));
            o.insert("name".into(), json!(c.name));
            o.insert("taskArn".into(), json!(task.task_arn));
            if let Some(code) = c.exit_code {
                o.insert("exitCode".into(), json!(code));
            }
            let bindings: Vec<Value> = c
                .network_bindings
                .iter()
                .map(|b| {
                    let mut o = Map::new();
                    o.insert("bindIP".into(), json!(b.bind_ip));
                    o.insert("containerPort".into(), json!(b.container_port));
                    o.insert("hostPort".into(), json!(b.host_port));
                    put_opt(&mut o, "protocol", &b.protocol);
                    Value::Object(o)
                })
                .collect();
            if !bindings.is_empty() {
                o.insert("networkBindings".into(), Value::Array(bindings));
            }
            put_opt(&mut o, "reason", &c.reason);
            put_opt(&mut o, "healthStatus", &c.health_status);
            Value::Object(o)
        })
        .collect();
    d.insert("containers".into(), Value::Array(containers));
    put_opt(&mut d, "createdAt", &task.created_at);
    d.insert("desiredStatus".into(), json!(task.desired_status));
    d.insert("lastStatus".into(), json!(task.last_status));
    let overrides: Vec<Value> = task
        .overrides
        .container_overrides
        .iter()
        .map(|o| {
            let mut m = Map::new();
            m.insert("name".into(), json!(o.name));
            if !o.command.is_empty() {
                m.insert("command".into(), json!(o.command));
            }
            if !o.environment.is_empty() {
                let env: Vec<Value> = o
                    .environment
                    .iter()
                    .map(|e| json!({"name": e.name, "value": e.value}))
                    .collect();
                m.insert("environment".into(), Value::Array(env));
            }
            Value::Object(m)
        })
        .collect();
    let mut o = Map::new();
    o.insert("containerOverrides".into(), Value::Array(overrides));
    put_opt(&mut o, "taskRoleArn", &task.overrides.task_role_arn);
    d.insert("overrides".into(), Value::Object(o));
    put_opt(&mut d, "startedAt", &task.started_at);
    put_opt(&mut d, "startedBy", &task.started_by);
    put_opt(&mut d, "stoppedAt", &task.stopped_at);
    put_opt(&mut d, "stoppedReason", &task.stopped_reason);
    put_opt(&mut d, "group", &task.group);
    put_opt(&mut d, "healthStatus", &task.health_status);
    put_opt(&mut d, "launchType", &task.launch_type);
    d.insert("taskArn".into(), json!(task.task_arn));
    d.insert("taskDefinitionArn".into(), json!(task.task_definition_arn));
    put_opt(&mut d, "updatedAt", &task.updated_at);
    d.insert("version".into(), json!(version));
    envelope(TASK_STATE_CHANGE, &task.task_arn, version, time, Value::Object(d))
}

/// The body of an "ECS Container Instance State Change" event for `instance`, with
/// `detail.version = version` and resources in ECS's typed form.
pub fn instance_event(instance: &ContainerInstance, version: u64, time: &str) -> String {
    let mut d = Map::new();
    d.insert("agentConnected".into(), json!(instance.agent_connected));
    put_opt(&mut d, "agentUpdateStatus", &instance.agent_update_status);
    let attributes: Vec<Value> = instance
        .attributes
        .iter()
        .map(|a| {
            let mut o = Map::new();
            o.insert("name".into(), json!(a.name));
            put_opt(&mut o, "value", &a.value);
            Value::Object(o)
        })
        .collect();
    d.insert("attributes".into(), Value::Array(attributes));
    d.insert("clusterArn".into(), json!(instance.cluster_arn));
    d.insert(
        "containerInstanceArn".into(),
        json!(instance.container_instance_arn),
    );
    put_opt(&mut d, "ec2InstanceId", &instance.ec2_instance_id);
    d.insert(
        "registeredResources".into(),
        typed_resources(&instance.registered_resources),
    );
    d.insert(
        "remainingResources".into(),
        typed_resources(&instance.remaining_resources),
    );
    d.insert("status".into(), json!(instance.status));
    put_opt(&mut d, "statusReason", &instance.status_reason);
    let mut v = Map::new();
    put_opt(&mut v, "agentHash", &instance.version_info.agent_hash);
    put_opt(&mut v, "agentVersion", &instance.version_info.agent_version);
    put_opt(&mut v, "dockerVersion", &instance.version_info.docker_version);
    d.insert("versionInfo".into(), Value::Object(v));
    if let Some(n) = instance.running_tasks_count {
        d.insert("runningTasksCount".into(), json!(n));
    }
    if let Some(n) = instance.pending_tasks_count {
        d.insert("pendingTasksCount".into(), json!(n));
    }
    put_opt(&mut d, "registeredAt", &instance.registered_at);
    put_opt(&mut d, "updatedAt", &instance.updated_at);
    d.insert("version".into(), json!(version));
    envelope(
        CONTAINER_INSTANCE_STATE_CHANGE,
        &instance.container_instance_arn,
        version,
        time,
        Value::Object(d),
    )
}

fn put_opt(map: &mut Map<String, Value>, key: &str, value: &Option<String>) {
    if let Some(v) = value {
        map.insert(key.to_owned(), json!(v));
    }
}

/// ECS sends typed values (`integerValue`, ...); ours are rendered strings, parsed back here. A value
/// that does not parse as its type is sent rendered, which blox also accepts.
fn typed_resources(resources: &[Resource]) -> Value {
    let typed = resources
        .iter()
        .map(|r| {
            let typed = match r.kind.as_str() {
                "INTEGER" => r.value.parse::<i64>().ok().map(|v| ("integerValue", json!(v))),
                "LONG" => r.value.parse::<i64>().ok().map(|v| ("longValue", json!(v))),
                "DOUBLE" => r.value.parse::<f64>().ok().map(|v| ("doubleValue", json!(v))),
                "STRINGSET" => {
                    let set: Vec<&str> = if r.value.is_empty() {
                        Vec::new()
                    } else {
                        r.value.split(',').collect()
                    };
                    Some(("stringSetValue", json!(set)))
                }
                _ => None,
            };
            let (key, value) = typed.unwrap_or(("value", json!(r.value)));
            json!({"name": r.name, "type": r.kind, key: value})
        })
        .collect();
    Value::Array(typed)
}

/// The EventBridge envelope, its fields in EventBridge's order (`detail` last, after `detail-type`,
/// which lets `EcsEvent::parse` read the detail in the same pass). Region and account come from the
/// resource's ARN; the id is derived from the resource and version so that the same event built
/// twice is the same event.
fn envelope(detail_type: &str, arn: &str, version: u64, time: &str, detail: Value) -> String {
    #[derive(serde::Serialize)]
    struct Envelope<'a> {
        version: &'a str,
        id: String,
        #[serde(rename = "detail-type")]
        detail_type: &'a str,
        source: &'a str,
        account: &'a str,
        time: &'a str,
        region: &'a str,
        resources: [&'a str; 1],
        detail: Value,
    }
    let mut parts = arn.split(':');
    let region = parts.nth(3).unwrap_or("us-east-1");
    let account = parts.next().unwrap_or("123456789012");
    let envelope = Envelope {
        version: "0",
        id: event_id(detail_type, arn, version),
        detail_type,
        source: "aws.ecs",
        account,
        time,
        region,
        resources: [arn],
        detail,
    };
    serde_json::to_string(&envelope)
        .unwrap_or_else(|_| unreachable!("an envelope of strings and a JSON value"))
}

fn event_id(detail_type: &str, arn: &str, version: u64) -> String {
    let half = |seed: u8| {
        let mut h = DefaultHasher::new();
        (seed, detail_type, arn, version).hash(&mut h);
        h.finish()
    };
    let (a, b) = (half(1), half(2));
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_look_like_uuids_and_differ_per_version() {
        let a = event_id(TASK_STATE_CHANGE, "arn:x", 1);
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
        assert_ne!(a, event_id(TASK_STATE_CHANGE, "arn:x", 2));
        assert_eq!(a, event_id(TASK_STATE_CHANGE, "arn:x", 1));
    }

    #[test]
    fn times_render_as_ecs_writes_them() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(1_764_072_000_123), "2025-11-25T12:00:00.123Z");
    }
}
