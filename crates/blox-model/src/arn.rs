//! Structural parsing of the ECS identifiers blox deals in.
//!
//! Blox v0.3 validated ARNs with regexes that accepted only the `aws` partition and the old short
//! resource format; here every partition and both formats parse, and cluster names follow ECS's own rule
//! (1–255 letters, digits, `-`, `_`).

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a string is not the identifier it was expected to be.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ArnError {
    #[error("{value:?} is not an ARN: expected arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE")]
    NotAnArn { value: String },
    #[error("{value:?} has unknown partition {partition:?}")]
    Partition { value: String, partition: String },
    #[error("{value:?} is not an ECS ARN (service {service:?})")]
    Service { value: String, service: String },
    #[error("{value:?} has an invalid region")]
    Region { value: String },
    #[error("{value:?} has an invalid account id: expected 12 digits")]
    Account { value: String },
    #[error("{value:?} is not a {expected} ARN")]
    ResourceType { value: String, expected: &'static str },
    #[error("{value:?} has an invalid resource id")]
    ResourceId { value: String },
    #[error("{value:?} is not a valid cluster name: 1 to 255 letters, digits, '-' or '_'")]
    ClusterName { value: String },
}

/// The six fields of an ARN, borrowed from the string they were parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arn<'a> {
    pub partition: &'a str,
    pub service: &'a str,
    pub region: &'a str,
    pub account: &'a str,
    pub resource: &'a str,
}

impl<'a> Arn<'a> {
    /// Parses any well-formed ARN of any AWS partition.
    pub fn parse(value: &'a str) -> Result<Self, ArnError> {
        let mut parts = value.splitn(6, ':');
        let (Some("arn"), Some(partition), Some(service), Some(region), Some(account), Some(resource)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(ArnError::NotAnArn {
                value: value.to_owned(),
            });
        };
        let is_lower_word = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !(partition == "aws" || partition.starts_with("aws-") && is_lower_word(partition)) {
            return Err(ArnError::Partition {
                value: value.to_owned(),
                partition: partition.to_owned(),
            });
        }
        if service.is_empty() || !is_lower_word(service) {
            return Err(ArnError::Service {
                value: value.to_owned(),
                service: service.to_owned(),
            });
        }
        if region.is_empty() || !is_lower_word(region) {
            return Err(ArnError::Region {
                value: value.to_owned(),
            });
        }
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ArnError::Account {
                value: value.to_owned(),
            });
        }
        if resource.is_empty() {
            return Err(ArnError::NotAnArn {
                value: value.to_owned(),
            });
        }
        Ok(Arn {
            partition,
            service,
            region,
            account,
            resource,
        })
    }

    fn ecs(value: &'a str) -> Result<Self, ArnError> {
        let arn = Self::parse(value)?;
        if arn.service != "ecs" {
            return Err(ArnError::Service {
                value: value.to_owned(),
                service: arn.service.to_owned(),
            });
        }
        Ok(arn)
    }
}

/// An ECS cluster name: 1 to 255 letters, digits, hyphens and underscores.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterName(String);

impl ClusterName {
    pub fn new(value: impl Into<String>) -> Result<Self, ArnError> {
        let value = value.into();
        let valid = (1..=255).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if valid {
            Ok(ClusterName(value))
        } else {
            Err(ArnError::ClusterName { value })
        }
    }

    /// The name out of a cluster ARN (`arn:…:ecs:…:cluster/NAME`).
    pub fn from_arn(value: &str) -> Result<Self, ArnError> {
        let arn = Arn::ecs(value)?;
        let name = arn
            .resource
            .strip_prefix("cluster/")
            .ok_or_else(|| ArnError::ResourceType {
                value: value.to_owned(),
                expected: "cluster",
            })?;
        Self::new(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClusterName {
    type Error = ArnError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<ClusterName> for String {
    fn from(name: ClusterName) -> String {
        name.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cluster as an API caller names it: by name or by ARN. Both resolve to the name, which is what
/// blox keys cluster state by (one blox serves one account and region).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRef {
    pub name: ClusterName,
    /// The ARN when the caller gave one.
    pub arn: Option<String>,
}

impl ClusterRef {
    pub fn parse(value: &str) -> Result<Self, ArnError> {
        if value.starts_with("arn:") {
            Ok(ClusterRef {
                name: ClusterName::from_arn(value)?,
                arn: Some(value.to_owned()),
            })
        } else {
            Ok(ClusterRef {
                name: ClusterName::new(value)?,
                arn: None,
            })
        }
    }
}

/// A task or container-instance ARN in either format: the short `task/ID` or the long
/// `task/CLUSTER/ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceArn {
    pub kind: ResourceKind,
    /// Present in the long format only.
    pub cluster: Option<ClusterName>,
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Task,
    ContainerInstance,
}

impl ResourceKind {
    fn prefix(self) -> &'static str {
        match self {
            ResourceKind::Task => "task/",
            ResourceKind::ContainerInstance => "container-instance/",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ResourceKind::Task => "task",
            ResourceKind::ContainerInstance => "container instance",
        }
    }
}

impl ResourceArn {
    pub fn parse(value: &str, kind: ResourceKind) -> Result<Self, ArnError> {
        let arn = Arn::ecs(value)?;
        let rest = arn
            .resource
            .strip_prefix(kind.prefix())
            .ok_or_else(|| ArnError::ResourceType {
                value: value.to_owned(),
                expected: kind.describe(),
            })?;
        let (cluster, id) = match rest.split_once('/') {
            Some((cluster, id)) => (Some(ClusterName::new(cluster)?), id),
            None => (None, rest),
        };
        let valid_id = (1..=255).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_id {
            return Err(ArnError::ResourceId {
                value: value.to_owned(),
            });
        }
        Ok(ResourceArn {
            kind,
            cluster,
            id: id.to_owned(),
        })
    }

    pub fn task(value: &str) -> Result<Self, ArnError> {
        Self::parse(value, ResourceKind::Task)
    }

    pub fn container_instance(value: &str) -> Result<Self, ArnError> {
        Self::parse(value, ResourceKind::ContainerInstance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_task(input: &str, expected: Result<(Option<&str>, &str), ()>) {
        let got = ResourceArn::task(input)
            .map(|a| (a.cluster.map(String::from), a.id))
            .map_err(|_| ());
        let expected = expected.map(|(c, id)| (c.map(String::from), id.to_owned()));
        assert_eq!(got, expected, "{input}");
    }

    #[test]
    fn task_arns() {
        check_task(
            "arn:aws:ecs:us-east-1:123456789012:task/0b69d5c0-d655-4695-98cd-5d2d526d9d5a",
            Ok((None, "0b69d5c0-d655-4695-98cd-5d2d526d9d5a")),
        );
        check_task(
            "arn:aws:ecs:us-east-1:123456789012:task/prod/7d3f1b0b4d0a4a8c9e2f3a4b5c6d7e8f",
            Ok((Some("prod"), "7d3f1b0b4d0a4a8c9e2f3a4b5c6d7e8f")),
        );
        check_task(
            "arn:aws-cn:ecs:cn-north-1:123456789012:task/c/abc",
            Ok((Some("c"), "abc")),
        );
        check_task(
            "arn:aws-us-gov:ecs:us-gov-west-1:123456789012:task/9_lives/abc",
            Ok((Some("9_lives"), "abc")),
        );
        check_task(
            "arn:aws:ecs:us-east-1:123456789012:container-instance/abc",
            Err(()),
        );
        check_task("arn:aws:ec2:us-east-1:123456789012:task/abc", Err(()));
        check_task("arn:aws:ecs:us-east-1:12345:task/abc", Err(()));
        check_task("arn:azure:ecs:us-east-1:123456789012:task/abc", Err(()));
        check_task("arn:aws:ecs:us-east-1:123456789012:task/", Err(()));
        check_task("arn:aws:ecs:us-east-1:123456789012:task/bad cluster/abc", Err(()));
        check_task("arn:aws:ecs:us-east-1:123456789012:task/a/b/c", Err(()));
        check_task("task/abc", Err(()));
        check_task("", Err(()));
    }

    #[test]
    fn container_instance_arns() {
        let long = ResourceArn::container_instance(
            "arn:aws:ecs:eu-west-1:123456789012:container-instance/c1/f9cc75bb0c5f4f1a9e1c2b0b8a7d6e5f",
        )
        .unwrap();
        assert_eq!(long.cluster.unwrap().as_str(), "c1");
        let short = ResourceArn::container_instance(
            "arn:aws:ecs:eu-west-1:123456789012:container-instance/5f0b8bb4-3d4b-4a8b-8b1d-1b2c3d4e5f60",
        )
        .unwrap();
        assert_eq!(short.cluster, None);
    }

    #[test]
    fn cluster_names_and_refs() {
        for ok in ["a", "1", "default", "my-cluster_2", &"x".repeat(255)] {
            assert!(ClusterName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "slash/", "dot.", &"x".repeat(256), "ünï"] {
            assert!(ClusterName::new(bad).is_err(), "{bad}");
        }
        assert_eq!(ClusterRef::parse("prod").unwrap().name.as_str(), "prod");
        let by_arn = ClusterRef::parse("arn:aws-cn:ecs:cn-north-1:123456789012:cluster/prod").unwrap();
        assert_eq!(by_arn.name.as_str(), "prod");
        assert!(ClusterRef::parse("arn:aws:ecs:us-east-1:123456789012:task/prod").is_err());
        assert!(ClusterRef::parse("arn:aws:ecs:us-east-1:123456789012:cluster/").is_err());
    }
}
