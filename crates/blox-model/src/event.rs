//! ECS events as EventBridge delivers them (to SQS, unwrapped): the envelope and the two detail types
//! blox consumes. Unknown fields are ignored, as AWS asks of consumers; unknown detail types are
//! reported as [`EcsEvent::Other`] so that the caller can count and drop them.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use thiserror::Error;

use crate::arn::ClusterName;
use crate::entity::{ContainerInstance, FieldError, Task};
use crate::scope::Origin;

pub const TASK_STATE_CHANGE: &str = "ECS Task State Change";
pub const CONTAINER_INSTANCE_STATE_CHANGE: &str = "ECS Container Instance State Change";

/// An event, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
pub enum EcsEvent {
    Task {
        cluster: ClusterName,
        task: Task,
    },
    ContainerInstance {
        cluster: ClusterName,
        instance: ContainerInstance,
    },
    /// Another ECS detail type (deployment, service action, ...), which blox does not mirror.
    Other {
        detail_type: String,
    },
}

/// Why a message is not an ECS event blox can apply. The message is parked, never retried.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventError {
    #[error("not a JSON EventBridge envelope: {0}")]
    Envelope(String),
    #[error("detail of {detail_type:?} does not parse: {reason}")]
    Detail { detail_type: String, reason: String },
    #[error("detail.version is missing: events cannot be ordered without it")]
    MissingVersion,
    #[error("detail.version must be a non-negative integer")]
    BadVersion,
    #[error("detail.{0}")]
    Field(#[from] FieldError),
    /// The envelope's `account` or `region` is not the one its resources' ARNs name (EventBridge
    /// keeps the source's in both, also when it forwards events between accounts or regions).
    #[error("the envelope's {field} {envelope:?} is not the {field} of detail.clusterArn ({resource:?})")]
    EnvelopeMismatch {
        field: &'static str,
        envelope: String,
        resource: String,
    },
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "detail-type")]
    detail_type: String,
    #[serde(borrow)]
    detail: &'a RawValue,
    #[serde(default)]
    account: Option<String>,
    #[serde(default)]
    region: Option<String>,
}

/// Reads only `detail.version`, skipping the rest of the detail.
#[derive(Deserialize)]
struct VersionProbe {
    version: Option<serde_json::Value>,
}

impl EcsEvent {
    /// Parses an SQS message body holding one EventBridge event.
    pub fn parse(body: &str) -> Result<EcsEvent, EventError> {
        // Anything the one pass does not settle (an error, a version read as 0) is read again the
        // two-pass way, whose answers and errors are the contract.
        serde_json::from_str::<OnePass<'_>>(body)
            .ok()
            .and_then(OnePass::event)
            .unwrap_or_else(|| Self::parse_two_pass(body))
    }

    /// The envelope first, its detail kept raw, then the detail: every event reads its detail twice
    /// (once to delimit it), which [`OnePass`] avoids.
    fn parse_two_pass(body: &str) -> Result<EcsEvent, EventError> {
        let envelope: Envelope<'_> =
            serde_json::from_str(body).map_err(|e| EventError::Envelope(e.to_string()))?;
        let claimed = Claimed {
            account: envelope.account.as_deref(),
            region: envelope.region.as_deref(),
        };
        Self::from_raw_detail(&envelope.detail_type, envelope.detail.get(), claimed)
    }

    fn from_raw_detail(
        detail_type: &str,
        detail: &str,
        claimed: Claimed<'_>,
    ) -> Result<EcsEvent, EventError> {
        let detail_error = |e: serde_json::Error| EventError::Detail {
            detail_type: detail_type.to_owned(),
            reason: e.to_string(),
        };
        match detail_type {
            TASK_STATE_CHANGE => {
                let task = parse_versioned(detail, |task: &mut Task| &mut task.version, detail_error)?;
                Self::task(task, claimed)
            }
            CONTAINER_INSTANCE_STATE_CHANGE => {
                let instance = parse_versioned(
                    detail,
                    |instance: &mut ContainerInstance| &mut instance.version,
                    detail_error,
                )?;
                Self::instance(instance, claimed)
            }
            other => Ok(EcsEvent::Other {
                detail_type: other.to_owned(),
            }),
        }
    }

    fn task(mut task: Task, claimed: Claimed<'_>) -> Result<EcsEvent, EventError> {
        let cluster = task.validate()?;
        check_envelope(claimed, &task.cluster_arn)?;
        Ok(EcsEvent::Task { cluster, task })
    }

    fn instance(mut instance: ContainerInstance, claimed: Claimed<'_>) -> Result<EcsEvent, EventError> {
        let cluster = instance.validate()?;
        check_envelope(claimed, &instance.cluster_arn)?;
        Ok(EcsEvent::ContainerInstance { cluster, instance })
    }
}

/// The envelope's own `account` and `region`, when it has them.
#[derive(Clone, Copy)]
struct Claimed<'a> {
    account: Option<&'a str>,
    region: Option<&'a str>,
}

/// An envelope read in one pass: when `detail-type` comes before `detail`, as EventBridge writes it,
/// the detail is deserialized straight into its entity. Delimiting the detail first (as
/// [`Envelope`] does) cost as much as parsing it.
struct OnePass<'a> {
    detail_type: String,
    detail: OnePassDetail<'a>,
    account: Option<String>,
    region: Option<String>,
}

enum OnePassDetail<'a> {
    Task(Task),
    Instance(ContainerInstance),
    /// Of a detail type blox does not mirror: skipped.
    Other,
    /// It came before `detail-type`: read once the type is known.
    Raw(&'a RawValue),
}

impl OnePass<'_> {
    /// The event, or `None` when only the raw detail can tell: a version read as 0 is explicit or
    /// missing (an error).
    fn event(self) -> Option<Result<EcsEvent, EventError>> {
        let claimed = Claimed {
            account: self.account.as_deref(),
            region: self.region.as_deref(),
        };
        match self.detail {
            OnePassDetail::Task(task) if task.version != 0 => Some(EcsEvent::task(task, claimed)),
            OnePassDetail::Instance(instance) if instance.version != 0 => {
                Some(EcsEvent::instance(instance, claimed))
            }
            OnePassDetail::Task(_) | OnePassDetail::Instance(_) => None,
            OnePassDetail::Other => Some(Ok(EcsEvent::Other {
                detail_type: self.detail_type,
            })),
            OnePassDetail::Raw(detail) => Some(EcsEvent::from_raw_detail(
                &self.detail_type,
                detail.get(),
                claimed,
            )),
        }
    }
}

/// The envelope's fields [`OnePass`] reads.
enum EnvelopeField {
    DetailType,
    Detail,
    Account,
    Region,
    Ignored,
}

impl<'de> Deserialize<'de> for EnvelopeField {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = EnvelopeField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an envelope field")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<EnvelopeField, E> {
                Ok(match name {
                    "detail-type" => EnvelopeField::DetailType,
                    "detail" => EnvelopeField::Detail,
                    "account" => EnvelopeField::Account,
                    "region" => EnvelopeField::Region,
                    _ => EnvelopeField::Ignored,
                })
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for OnePass<'a> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OnePassVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for OnePassVisitor<'a> {
            type Value = OnePass<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an EventBridge envelope")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<OnePass<'a>, M::Error> {
                let (mut detail_type, mut detail) = (None::<String>, None);
                let (mut account, mut region) = (None, None);
                // A field twice is an error here, as in `Envelope`; the two-pass parse says which.
                while let Some(field) = map.next_key::<EnvelopeField>()? {
                    match field {
                        EnvelopeField::DetailType if detail_type.is_none() => {
                            detail_type = Some(map.next_value()?);
                        }
                        EnvelopeField::Detail if detail.is_none() => {
                            detail = Some(match detail_type.as_deref() {
                                Some(TASK_STATE_CHANGE) => OnePassDetail::Task(map.next_value()?),
                                Some(CONTAINER_INSTANCE_STATE_CHANGE) => {
                                    OnePassDetail::Instance(map.next_value()?)
                                }
                                Some(_) => {
                                    map.next_value::<IgnoredAny>()?;
                                    OnePassDetail::Other
                                }
                                None => OnePassDetail::Raw(map.next_value()?),
                            });
                        }
                        EnvelopeField::Account if account.is_none() => account = Some(map.next_value()?),
                        EnvelopeField::Region if region.is_none() => region = Some(map.next_value()?),
                        EnvelopeField::Ignored => {
                            map.next_value::<IgnoredAny>()?;
                        }
                        _ => return Err(de::Error::custom("a duplicate envelope field")),
                    }
                }
                Ok(OnePass {
                    detail_type: detail_type.ok_or_else(|| de::Error::missing_field("detail-type"))?,
                    detail: detail.ok_or_else(|| de::Error::missing_field("detail"))?,
                    account: account.flatten(),
                    region: region.flatten(),
                })
            }
        }
        deserializer.deserialize_map(OnePassVisitor(std::marker::PhantomData))
    }
}

impl EcsEvent {
    /// The account and region of the event's resource (from its cluster ARN); `None` for
    /// [`EcsEvent::Other`].
    pub fn origin(&self) -> Option<Origin> {
        let cluster_arn = match self {
            EcsEvent::Task { task, .. } => &task.cluster_arn,
            EcsEvent::ContainerInstance { instance, .. } => &instance.cluster_arn,
            EcsEvent::Other { .. } => return None,
        };
        // Validated when parsed, so it parses.
        Origin::of_arn(cluster_arn).ok()
    }
}

/// The envelope's account and region, when given, must be those of the resource.
fn check_envelope(claimed: Claimed<'_>, cluster_arn: &str) -> Result<(), EventError> {
    let Ok(origin) = Origin::of_arn(cluster_arn) else {
        return Ok(());
    };
    for (field, given, resource) in [
        ("account", claimed.account, origin.account),
        ("region", claimed.region, origin.region),
    ] {
        if let Some(given) = given
            && given != resource
        {
            return Err(EventError::EnvelopeMismatch {
                field,
                envelope: given.to_owned(),
                resource,
            });
        }
    }
    Ok(())
}

/// An entity with a `version` field (0 when absent; `version` reaches it), parsed from `detail` in
/// one pass; the detail is read again only when the version may be missing or wrong (an entity read
/// 0, or none), so that the version's own errors are still the ones reported, ahead of the other
/// fields'.
fn parse_versioned<T: serde::de::DeserializeOwned>(
    detail: &str,
    version: impl FnOnce(&mut T) -> &mut u64,
    detail_error: impl FnOnce(serde_json::Error) -> EventError,
) -> Result<T, EventError> {
    match serde_json::from_str::<T>(detail) {
        Ok(mut entity) => {
            let read = version(&mut entity);
            if *read == 0 {
                *read = detail_version(detail)?;
            }
            Ok(entity)
        }
        Err(error) => {
            detail_version(detail)?;
            Err(detail_error(error))
        }
    }
}

fn detail_version(detail: &str) -> Result<u64, EventError> {
    let probe: VersionProbe = serde_json::from_str(detail)
        .map_err(|_| EventError::Envelope("detail is not a JSON object".to_owned()))?;
    match probe.version {
        None | Some(serde_json::Value::Null) => Err(EventError::MissingVersion),
        Some(version) => version.as_u64().ok_or(EventError::BadVersion),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const TASK: &str = r#"{
      "version": "0", "id": "9bcdac79-b31f-4d3d-9410-fbd727c29fab", "detail-type": "ECS Task State Change",
      "source": "aws.ecs", "account": "111122223333", "time": "2016-12-06T16:41:06Z", "region": "us-east-1",
      "resources": ["arn:aws:ecs:us-east-1:111122223333:task/b99d40b3-5176-4f71-9a52-9dbd6f1cebef"],
      "detail": {
        "clusterArn": "arn:aws:ecs:us-east-1:111122223333:cluster/default",
        "containerInstanceArn": "arn:aws:ecs:us-east-1:111122223333:container-instance/b54a2a04-046f-4331-9d74-3f6d7f6ca315",
        "containers": [{"containerArn": "arn:aws:ecs:us-east-1:111122223333:container/3305bea1-bd16-4217-803d-3e0482170a17",
          "exitCode": 1, "lastStatus": "STOPPED", "name": "xray", "healthStatus": "UNHEALTHY",
          "taskArn": "arn:aws:ecs:us-east-1:111122223333:task/b99d40b3-5176-4f71-9a52-9dbd6f1cebef",
          "networkBindings": [{"bindIP": "0.0.0.0", "containerPort": 80, "hostPort": 8080, "protocol": "tcp"}]}],
        "createdAt": "2016-12-06T16:41:05.702Z", "desiredStatus": "RUNNING", "lastStatus": "RUNNING",
        "overrides": {"containerOverrides": [{"name": "xray", "command": ["run"], "environment": [{"name": "A", "value": "1"}]}]},
        "startedAt": "2016-12-06T16:41:06.8Z", "startedBy": "ecs-svc/9223370556150183303",
        "updatedAt": "2016-12-06T16:41:06.975Z",
        "taskArn": "arn:aws:ecs:us-east-1:111122223333:task/b99d40b3-5176-4f71-9a52-9dbd6f1cebef",
        "taskDefinitionArn": "arn:aws:ecs:us-east-1:111122223333:task-definition/xray:2",
        "version": 4, "launchType": "EC2", "healthStatus": "UNHEALTHY", "someNewField": {"x": 1}
      }
    }"#;

    pub(super) const INSTANCE: &str = r#"{
      "version": "0", "id": "8952ba83-7be2-4ab5-9c32-6687532d15a2", "detail-type": "ECS Container Instance State Change",
      "source": "aws.ecs", "account": "111122223333", "time": "2016-12-06T16:41:06Z", "region": "us-east-1",
      "resources": ["arn:aws:ecs:us-east-1:111122223333:container-instance/default/b54a2a04046f43319d743f6d7f6ca315"],
      "detail": {
        "agentConnected": true,
        "attributes": [{"name": "com.amazonaws.ecs.capability.logging-driver.syslog"}, {"name": "ecs.instance-type", "value": "t2.micro"}],
        "clusterArn": "arn:aws:ecs:us-east-1:111122223333:cluster/default",
        "containerInstanceArn": "arn:aws:ecs:us-east-1:111122223333:container-instance/default/b54a2a04046f43319d743f6d7f6ca315",
        "ec2InstanceId": "i-f3a8506b",
        "registeredResources": [{"name": "CPU", "type": "INTEGER", "integerValue": 2048},
          {"name": "PORTS", "type": "STRINGSET", "stringSetValue": ["22", "2376"]}],
        "remainingResources": [{"name": "MEMORY", "type": "INTEGER", "integerValue": 3767}],
        "status": "ACTIVE", "version": 14801,
        "versionInfo": {"agentHash": "aebcbca", "agentVersion": "1.13.0", "dockerVersion": "DockerVersion: 1.11.2"},
        "updatedAt": "2016-12-06T16:41:06.991Z"
      }
    }"#;

    #[test]
    fn task_event_parses_into_the_v03_shape() {
        let EcsEvent::Task { cluster, task } = EcsEvent::parse(TASK).unwrap() else {
            panic!("not a task")
        };
        assert_eq!(cluster.as_str(), "default");
        assert_eq!(task.version, 4);
        insta::assert_json_snapshot!(task);
    }

    #[test]
    fn instance_event_parses_into_the_v03_shape() {
        let EcsEvent::ContainerInstance { cluster, instance } = EcsEvent::parse(INSTANCE).unwrap() else {
            panic!("not an instance")
        };
        assert_eq!(cluster.as_str(), "default");
        assert_eq!(instance.version, 14801);
        insta::assert_json_snapshot!(instance);
    }

    fn check_rejected(body: &str, want: &str) {
        let err = EcsEvent::parse(body).unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} should mention {want:?}");
    }

    fn task_with(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut v: serde_json::Value = serde_json::from_str(TASK).unwrap();
        edit(&mut v);
        v.to_string()
    }

    #[test]
    fn malformed_events_say_why() {
        check_rejected("not json", "not a JSON EventBridge envelope");
        check_rejected("{}", "missing field `detail-type`");
        check_rejected(
            r#"{"detail-type":"ECS Task State Change"}"#,
            "missing field `detail`",
        );
        check_rejected(
            r#"{"detail-type":"ECS Task State Change","detail":[]}"#,
            "not a JSON object",
        );
        check_rejected(
            &task_with(|v| drop(v["detail"].as_object_mut().unwrap().remove("version"))),
            "detail.version is missing",
        );
        check_rejected(
            &task_with(|v| v["detail"]["version"] = "4".into()),
            "non-negative integer",
        );
        check_rejected(
            &task_with(|v| v["detail"]["version"] = (-1).into()),
            "non-negative integer",
        );
        check_rejected(
            &task_with(|v| drop(v["detail"].as_object_mut().unwrap().remove("taskArn"))),
            "missing field `taskARN`",
        );
        check_rejected(
            &task_with(|v| v["detail"]["taskArn"] = "nope".into()),
            "detail.taskArn",
        );
        check_rejected(
            &task_with(|v| {
                v["detail"]["clusterArn"] = "arn:aws:ecs:us-east-1:111122223333:cluster/bad name".into()
            }),
            "detail.clusterArn",
        );
        check_rejected(
            &task_with(|v| {
                v["detail"]["taskArn"] = "arn:aws:ecs:us-east-1:111122223333:task/other/abc".into()
            }),
            "names cluster \"other\"",
        );
        check_rejected(
            &task_with(|v| v["detail"]["lastStatus"] = "".into()),
            "detail.lastStatus",
        );
    }

    /// The version is read with the entity; a detail is read again only to say what is wrong with
    /// its version, which is reported ahead of the other fields' problems, as when it was read first.
    #[test]
    fn version_errors_come_first_and_an_explicit_zero_is_a_version() {
        let version_of = |body: &str| match EcsEvent::parse(body).unwrap() {
            EcsEvent::Task { task, .. } => task.version,
            other => panic!("not a task: {other:?}"),
        };
        assert_eq!(version_of(&task_with(|v| v["detail"]["version"] = 0.into())), 0);
        assert_eq!(version_of(&task_with(|v| v["detail"]["version"] = 7.into())), 7);
        check_rejected(
            &task_with(|v| v["detail"]["version"] = serde_json::Value::Null),
            "detail.version is missing",
        );
        check_rejected(
            &task_with(|v| {
                let detail = v["detail"].as_object_mut().unwrap();
                detail.remove("version");
                detail.remove("taskArn");
            }),
            "detail.version is missing",
        );
        check_rejected(
            &task_with(|v| {
                v["detail"]["version"] = 1.5.into();
                v["detail"]["lastStatus"] = 3.into();
            }),
            "non-negative integer",
        );
    }

    /// What the store would refuse (a NUL in a key or an indexed field) is refused here, naming the
    /// field, so that such a message is parked on its own instead of failing its batch's commit.
    #[test]
    fn what_the_store_cannot_key_or_index_is_rejected_naming_the_field() {
        let nul = r"a\u0000b";
        let cases: [(&str, &str); 5] = [
            ("startedBy", "detail.startedBy: contains a NUL byte"),
            ("lastStatus", "detail.lastStatus: contains a NUL byte"),
            ("taskArn", "detail.taskArn: contains a NUL byte"),
            ("clusterArn", "detail.clusterArn: contains a NUL byte"),
            (
                "containerInstanceArn",
                "detail.containerInstanceArn: contains a NUL byte",
            ),
        ];
        for (field, want) in cases {
            // As SQS carries it: JSON's \u0000 escape (SQS refuses a raw NUL in a body).
            let body = task_with(|v| v["detail"][field] = "PLACEHOLDER".into()).replace("PLACEHOLDER", nul);
            check_rejected(&body, want);
        }
        let mut instance: serde_json::Value = serde_json::from_str(INSTANCE).unwrap();
        instance["detail"]["status"] = "PLACEHOLDER".into();
        check_rejected(
            &instance.to_string().replace("PLACEHOLDER", nul),
            "detail.status: contains a NUL byte",
        );
        // Other fields are only stored in the body: a NUL there is fine.
        let body =
            task_with(|v| v["detail"]["stoppedReason"] = "PLACEHOLDER".into()).replace("PLACEHOLDER", nul);
        let EcsEvent::Task { task, .. } = EcsEvent::parse(&body).unwrap() else {
            panic!("not a task")
        };
        assert_eq!(task.stopped_reason.as_deref(), Some("a\0b"));
    }

    #[test]
    fn account_and_region_are_the_resources_own() {
        let EcsEvent::Task { .. } = EcsEvent::parse(TASK).unwrap() else {
            panic!("not a task")
        };
        assert_eq!(
            EcsEvent::parse(TASK).unwrap().origin(),
            Some(Origin {
                account: "111122223333".into(),
                region: "us-east-1".into()
            })
        );
        assert_eq!(
            EcsEvent::parse(r#"{"detail-type":"ECS Service Action","detail":{}}"#)
                .unwrap()
                .origin(),
            None
        );
        // Resources of one event are in one account and region, the envelope's.
        check_rejected(
            &task_with(|v| {
                v["detail"]["taskArn"] =
                    "arn:aws:ecs:us-east-1:444455556666:task/b99d40b3-5176-4f71-9a52-9dbd6f1cebef".into()
            }),
            "detail.taskArn: is in aws:us-east-1:444455556666 but clusterArn in aws:us-east-1:111122223333",
        );
        check_rejected(
            &task_with(|v| {
                v["detail"]["containerInstanceArn"] =
                    "arn:aws:ecs:eu-west-1:111122223333:container-instance/b54a2a04".into()
            }),
            "detail.containerInstanceArn: is in aws:eu-west-1:111122223333",
        );
        check_rejected(
            &task_with(|v| v["account"] = "444455556666".into()),
            "the envelope's account \"444455556666\" is not the account of detail.clusterArn",
        );
        check_rejected(
            &task_with(|v| v["region"] = "eu-west-1".into()),
            "the envelope's region \"eu-west-1\" is not the region of detail.clusterArn",
        );
        // An envelope without them is taken at its resources' word.
        let bare = task_with(|v| {
            let envelope = v.as_object_mut().unwrap();
            envelope.remove("account");
            envelope.remove("region");
        });
        assert!(EcsEvent::parse(&bare).is_ok());
    }

    #[test]
    fn a_missing_cluster_arn_comes_from_a_long_resource_arn() {
        let mut v: serde_json::Value = serde_json::from_str(INSTANCE).unwrap();
        v["detail"].as_object_mut().unwrap().remove("clusterArn");
        let EcsEvent::ContainerInstance { cluster, instance } = EcsEvent::parse(&v.to_string()).unwrap()
        else {
            panic!("not an instance")
        };
        assert_eq!(cluster.as_str(), "default");
        assert_eq!(
            instance.cluster_arn,
            "arn:aws:ecs:us-east-1:111122223333:cluster/default"
        );
        // A short task ARN names no cluster: without clusterArn the event cannot be placed.
        check_rejected(
            &task_with(|v| drop(v["detail"].as_object_mut().unwrap().remove("clusterArn"))),
            "detail.clusterArn",
        );
    }

    #[test]
    fn other_detail_types_are_reported_not_rejected() {
        let body = r#"{"detail-type":"ECS Service Action","source":"aws.ecs","detail":{"eventName":"SERVICE_STEADY_STATE"}}"#;
        assert_eq!(
            EcsEvent::parse(body).unwrap(),
            EcsEvent::Other {
                detail_type: "ECS Service Action".into()
            }
        );
    }
}

/// The one-pass parse answers exactly what the two-pass one does (errors included), whichever of
/// `detail-type` and `detail` comes first, for any value in place of any field.
#[cfg(test)]
mod one_pass {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// `envelope` as JSON with `detail-type` first and `detail` last (EventBridge's order, read in
    /// one pass), or with `detail` first (the detail kept raw until its type is read). Ordered here,
    /// not left to `Value`, whose key order depends on serde_json's features.
    fn ordered(envelope: &Value, type_first: bool) -> String {
        let Value::Object(fields) = envelope else {
            return envelope.to_string();
        };
        let rank = |key: &str| match (key, type_first) {
            ("detail-type", true) | ("detail", false) => 0,
            ("detail", true) | ("detail-type", false) => 2,
            _ => 1,
        };
        let mut keys: Vec<&String> = fields.keys().collect();
        keys.sort_by_key(|key| rank(key));
        let members: Vec<String> = keys
            .iter()
            .map(|key| format!("{}:{}", Value::from(key.as_str()), fields[key.as_str()]))
            .collect();
        format!("{{{}}}", members.join(","))
    }

    fn check(body: &str) {
        assert_eq!(
            EcsEvent::parse(body),
            EcsEvent::parse_two_pass(body),
            "one pass and two passes differ on {body}"
        );
    }

    fn check_both_orders(envelope: &Value) {
        check(&ordered(envelope, true));
        check(&ordered(envelope, false));
    }

    fn events() -> [Value; 2] {
        [
            serde_json::from_str(tests::TASK).unwrap(),
            serde_json::from_str(tests::INSTANCE).unwrap(),
        ]
    }

    #[test]
    fn known_cases_agree() {
        for event in events() {
            // EventBridge's order is settled in the one pass, without falling back.
            let settled = serde_json::from_str::<OnePass<'_>>(&ordered(&event, true))
                .ok()
                .and_then(OnePass::event);
            assert!(matches!(settled, Some(Ok(_))), "{event} took the two passes");
            check_both_orders(&event);
            for version in [json!(0), json!(7), json!(null), json!("4"), json!(-1), json!(1.5)] {
                let mut edited = event.clone();
                edited["detail"]["version"] = version;
                check_both_orders(&edited);
            }
            let mut edited = event.clone();
            edited["detail"].as_object_mut().unwrap().remove("version");
            check_both_orders(&edited);
            for (field, value) in [
                ("detail", json!([])),
                ("detail", json!({})),
                ("detail-type", json!("ECS Service Action")),
                ("detail-type", json!(3)),
                ("account", json!(null)),
                ("account", json!("444455556666")),
                ("region", json!("eu-west-1")),
                ("region", json!(["us-east-1"])),
            ] {
                let mut edited = event.clone();
                edited[field] = value;
                check_both_orders(&edited);
            }
        }
        // What `Value` cannot hold: a field twice, trailing text, not an object.
        for body in [
            r#"{"detail-type":"ECS Task State Change","detail-type":"x","detail":{}}"#,
            r#"{"detail-type":"ECS Service Action","detail":{},"detail":{}}"#,
            r#"{"detail-type":"ECS Service Action","detail":{},"account":"1","account":"2"}"#,
            r#"{"detail-type":"ECS Service Action","detail":{}} x"#,
            r#"{"detail-type":"ECS Service Action"}"#,
            r#"{"detail":{}}"#,
            "[]",
            "not json",
        ] {
            check(body);
        }
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (0u64..3).prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-zA-Z0-9:/ _-]{0,12}".prop_map(Value::from),
            Just(Value::from("arn:aws:ecs:us-east-1:111122223333:cluster/other")),
            Just(Value::from("RUNNING")),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..3)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any value in place of any field of either event's envelope or detail (or that field
        /// removed): the same answer both ways, in both orders.
        #[test]
        fn any_field_any_value_agrees(
            which in 0usize..2,
            field in 0usize..64,
            in_detail in any::<bool>(),
            value in prop::option::of(any_json()),
        ) {
            let mut event = events()[which].clone();
            let target = if in_detail { &mut event["detail"] } else { &mut event };
            let fields = target.as_object_mut().unwrap();
            let name = fields.keys().nth(field % fields.len()).unwrap().clone();
            match value {
                Some(value) => fields.insert(name, value),
                None => fields.remove(&name),
            };
            check_both_orders(&event);
        }
    }
}
