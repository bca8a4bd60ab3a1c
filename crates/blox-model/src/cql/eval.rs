//! Evaluating a predicate against an instance.

use super::value::{Compiled, compare_text, compare_version, parse_instant};
use super::{Operator, Predicate, Property};
use crate::entity::{Attribute, ContainerInstance};

/// What a query can ask of an instance. Values are borrowed so that evaluation allocates nothing.
pub trait Subject {
    fn agent_connected(&self) -> bool;
    fn agent_version(&self) -> Option<&str>;
    fn ec2_instance_id(&self) -> Option<&str>;
    /// The attribute ECS derives it from.
    fn ec2_instance_type(&self) -> Option<&str> {
        self.attribute(INSTANCE_TYPE_ATTRIBUTE).flatten()
    }
    /// As ECS writes it: `2018-06-18T22:28:28+00:00`, `…Z`, `…28` (UTC) or `2018-06-18`
    /// (midnight UTC), seconds maybe with a fraction. Another form matches no predicate.
    fn registered_at(&self) -> Option<&str>;
    fn running_tasks_count(&self) -> Option<i64>;
    /// `None`: no such attribute; `Some(None)`: present without a value.
    fn attribute(&self, name: &str) -> Option<Option<&str>>;
    /// The groups of the tasks on the instance (tasks without a group left out).
    fn task_groups(&self) -> impl Iterator<Item = &str>;
}

/// A container instance record as a query sees it, with what the record does not carry: the groups
/// of its tasks. (The scheduler's view answers queries itself, from memory.)
#[derive(Clone, Copy, Debug)]
pub struct InstanceFacts<'a> {
    instance: &'a ContainerInstance,
    task_groups: &'a [&'a str],
}

impl<'a> InstanceFacts<'a> {
    /// Facts of an instance with no tasks.
    pub fn new(instance: &'a ContainerInstance) -> Self {
        InstanceFacts {
            instance,
            task_groups: &[],
        }
    }

    pub fn with_task_groups(self, task_groups: &'a [&'a str]) -> Self {
        InstanceFacts { task_groups, ..self }
    }
}

/// The value of the attribute `name` among `attributes`: `None` without it, `Some(None)` when it has
/// no value. What every [`Subject`] answers `attribute` with.
pub fn attribute<'a>(attributes: &'a [Attribute], name: &str) -> Option<Option<&'a str>> {
    attributes
        .iter()
        .find(|attribute| attribute.name == name)
        .map(|attribute| attribute.value.as_deref())
}

/// The attribute ECS derives `ec2InstanceType` from.
const INSTANCE_TYPE_ATTRIBUTE: &str = "ecs.instance-type";

impl Subject for InstanceFacts<'_> {
    fn agent_connected(&self) -> bool {
        self.instance.agent_connected
    }

    fn agent_version(&self) -> Option<&str> {
        self.instance.version_info.agent_version.as_deref()
    }

    fn ec2_instance_id(&self) -> Option<&str> {
        self.instance.ec2_instance_id.as_deref()
    }

    fn registered_at(&self) -> Option<&str> {
        self.instance.registered_at.as_deref()
    }

    fn running_tasks_count(&self) -> Option<i64> {
        self.instance.running_tasks_count
    }

    fn attribute(&self, name: &str) -> Option<Option<&str>> {
        attribute(&self.instance.attributes, name)
    }

    fn task_groups(&self) -> impl Iterator<Item = &str> {
        self.task_groups.iter().copied()
    }
}

impl Operator {
    /// `!=`, `not_in` and `!~`: the negations of `==`, `in` and `=~`.
    fn is_negative(self) -> bool {
        matches!(self, Operator::NotEquals | Operator::NotIn | Operator::NotMatches)
    }
}

impl Predicate {
    /// Whether `subject` satisfies this predicate. A value the subject lacks (or that does not
    /// parse as the subject's type) satisfies nothing, not even `!=`.
    pub(super) fn matches(&self, subject: &impl Subject) -> bool {
        match &self.property {
            Property::AgentConnected => self.matches_text(if subject.agent_connected() {
                "true"
            } else {
                "false"
            }),
            Property::AgentVersion => match &self.compiled {
                Compiled::Version(version) => subject
                    .agent_version()
                    .and_then(|value| compare_version(value, version))
                    .is_some_and(|ordering| self.operator.accepts(ordering)),
                _ => false,
            },
            Property::RunningTasksCount => match self.compiled {
                Compiled::Count(count) => subject
                    .running_tasks_count()
                    .is_some_and(|value| self.operator.accepts(value.cmp(&count))),
                _ => false,
            },
            Property::RegisteredAt => match self.compiled {
                Compiled::Instant(instant) => subject
                    .registered_at()
                    .and_then(parse_instant)
                    .is_some_and(|value| self.operator.accepts(value.cmp(&instant))),
                _ => false,
            },
            Property::Ec2InstanceId => subject
                .ec2_instance_id()
                .is_some_and(|value| self.matches_text(value)),
            Property::Ec2InstanceType => subject
                .ec2_instance_type()
                .is_some_and(|value| self.matches_text(value)),
            // ECS only places on an instance that has the attribute, whatever the operator: a
            // missing attribute satisfies `!=`, `not_in` and `!~` no more than `==`.
            Property::Attribute(name) => match (subject.attribute(name), self.operator) {
                (None, operator) => operator == Operator::NotExists,
                (Some(_), Operator::Exists) => true,
                (Some(_), Operator::NotExists) => false,
                (Some(value), _) => self.matches_text(value.unwrap_or("")),
            },
            // An instance matches when any of its tasks' groups does; the negative operators
            // negate the positive one, so `task:group != web` means "no task of group web here"
            // (true on an instance without tasks), not "some task of another group".
            Property::TaskGroup => match self.operator {
                Operator::Exists => subject.task_groups().next().is_some(),
                Operator::NotExists => subject.task_groups().next().is_none(),
                operator if operator.is_negative() => {
                    !subject.task_groups().any(|group| self.matches_positive(group))
                }
                _ => subject.task_groups().any(|group| self.matches_positive(group)),
            },
        }
    }

    fn matches_text(&self, value: &str) -> bool {
        self.matches_positive(value) != self.operator.is_negative()
    }

    /// The positive form of the operator (`==` for `!=`, ...) applied to a present value.
    fn matches_positive(&self, value: &str) -> bool {
        match &self.compiled {
            Compiled::Pattern(pattern) => pattern.is_match(value),
            Compiled::Bools(bools) => {
                let value = value == "true";
                bools.contains(&value)
            }
            Compiled::Text => self.arguments.iter().any(|argument| argument == value),
            Compiled::Ordered(number) => compare_text(value, &self.arguments[0], *number)
                .is_some_and(|ordering| self.operator.accepts(ordering)),
            Compiled::Nothing | Compiled::Version(_) | Compiled::Count(_) | Compiled::Instant(_) => false,
        }
    }
}
