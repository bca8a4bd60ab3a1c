//! The ECS cluster query language (CQL): the expressions ECS placement constraints use to pick
//! container instances, e.g. `attribute:ecs.instance-type =~ g2.* and agentVersion >= 1.14.5`.
//!
//! [`Query::parse`] checks a query once and precompiles its arguments (regexes, versions, counts,
//! instants), so that [`Query::matches`] is cheap and allocation-free: it runs once per instance
//! per scheduling decision.
//!
//! Grammar:
//! ```text
//! expr      := term { ("||" | "or") term }
//! term      := factor { ("&&" | "and") factor }
//! factor    := ("!" | "not") factor | "(" expr ")" | predicate
//! predicate := subject op argument | subject ("exists" | "!exists" | "not_exists")
//! argument  := literal | "[" literal { "," literal } "]"     (lists only for in / not_in)
//! literal   := bare-word | 'single-quoted'
//! ```
//! A bare word is a run of characters other than whitespace, `,`, `[`, `]`, `(`, `)` and `'`.
//! A single-quoted literal holds anything but `'`: there are no escapes, so no literal can
//! contain `'`.
//!
//! Semantics, in short (the details sit with the evaluation): `agentVersion` compares as dotted
//! numbers, `runningTasksCount` as integers, `registeredAt` as instants; other comparisons are
//! numeric when both sides are numbers, else lexicographic; `=~` must match the whole value. A
//! value an instance lacks satisfies no predicate but `!exists`, not even `!=`. `task:group`
//! holds when any task group on the instance satisfies the predicate, and `!=`, `not_in`, `!~`
//! when none satisfies its positive form.

mod eval;
mod parse;
mod value;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use eval::{InstanceFacts, Subject, attribute};

/// A parsed query: its syntax tree with each predicate's arguments precompiled.
///
/// `a && b && c` parses as `And(And(a, b), c)`; [`Display`](fmt::Display) prints the canonical
/// form, which parses back to the same tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    Or(Box<Query>, Box<Query>),
    And(Box<Query>, Box<Query>),
    Not(Box<Query>),
    Predicate(Predicate),
}

/// What a predicate looks at on an instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Property {
    AgentConnected,
    AgentVersion,
    Ec2InstanceId,
    Ec2InstanceType,
    RegisteredAt,
    RunningTasksCount,
    TaskGroup,
    Attribute(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operator {
    Equals,
    NotEquals,
    GreaterThan,
    GreaterThanEqual,
    LessThan,
    LessThanEqual,
    In,
    NotIn,
    Matches,
    NotMatches,
    Exists,
    NotExists,
}

/// One `subject op argument` clause. Its arguments are kept as written (for printing and
/// equality) next to their compiled form (for evaluation), which is derived from them.
#[derive(Clone, Debug)]
pub struct Predicate {
    property: Property,
    operator: Operator,
    arguments: Vec<String>,
    compiled: value::Compiled,
}

/// Why a query did not parse. `position` is a byte offset into the query.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at column {}: {message}", .position + 1)]
pub struct ParseError {
    pub position: usize,
    pub message: String,
}

impl Query {
    pub fn parse(input: &str) -> Result<Query, ParseError> {
        parse::parse(input)
    }

    /// Whether `subject` satisfies the query.
    /// Whether any predicate reads `task:group`: what the groups of every task on an instance must be
    /// known for.
    pub fn reads_task_groups(&self) -> bool {
        match self {
            Query::Or(left, right) | Query::And(left, right) => {
                left.reads_task_groups() || right.reads_task_groups()
            }
            Query::Not(inner) => inner.reads_task_groups(),
            Query::Predicate(p) => p.property == Property::TaskGroup,
        }
    }

    pub fn matches(&self, subject: &impl Subject) -> bool {
        match self {
            Query::Or(left, right) => left.matches(subject) || right.matches(subject),
            Query::And(left, right) => left.matches(subject) && right.matches(subject),
            Query::Not(inner) => !inner.matches(subject),
            Query::Predicate(predicate) => predicate.matches(subject),
        }
    }
}

impl Predicate {
    pub fn property(&self) -> &Property {
        &self.property
    }

    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The arguments as written: one for most operators, one or more for `in` / `not_in`, none
    /// for `exists` / `not_exists`.
    pub fn arguments(&self) -> &[String] {
        &self.arguments
    }
}

// The compiled form is a function of the arguments, so it takes no part in equality (and a
// `Regex` has no `Eq` anyway).
impl PartialEq for Predicate {
    fn eq(&self, other: &Self) -> bool {
        self.property == other.property
            && self.operator == other.operator
            && self.arguments == other.arguments
    }
}

impl Eq for Predicate {}

impl Property {
    /// The operators a subject takes, as ECS documents them.
    pub fn takes(&self, operator: Operator) -> bool {
        use Operator::*;
        match self {
            Property::AgentConnected | Property::Ec2InstanceId | Property::Ec2InstanceType => {
                matches!(operator, Equals | NotEquals | In | NotIn | Matches | NotMatches)
            }
            Property::AgentVersion | Property::RegisteredAt | Property::RunningTasksCount => {
                matches!(
                    operator,
                    Equals | NotEquals | GreaterThan | GreaterThanEqual | LessThan | LessThanEqual
                )
            }
            Property::TaskGroup | Property::Attribute(_) => true,
        }
    }
}

impl Operator {
    pub const ALL: [Operator; 12] = [
        Operator::Equals,
        Operator::NotEquals,
        Operator::GreaterThan,
        Operator::GreaterThanEqual,
        Operator::LessThan,
        Operator::LessThanEqual,
        Operator::In,
        Operator::NotIn,
        Operator::Matches,
        Operator::NotMatches,
        Operator::Exists,
        Operator::NotExists,
    ];

    /// The canonical spelling.
    pub fn symbol(self) -> &'static str {
        match self {
            Operator::Equals => "==",
            Operator::NotEquals => "!=",
            Operator::GreaterThan => ">",
            Operator::GreaterThanEqual => ">=",
            Operator::LessThan => "<",
            Operator::LessThanEqual => "<=",
            Operator::In => "in",
            Operator::NotIn => "not_in",
            Operator::Matches => "=~",
            Operator::NotMatches => "!~",
            Operator::Exists => "exists",
            Operator::NotExists => "!exists",
        }
    }

    fn takes_list(self) -> bool {
        matches!(self, Operator::In | Operator::NotIn)
    }

    fn takes_argument(self) -> bool {
        !matches!(self, Operator::Exists | Operator::NotExists)
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Property::AgentConnected => f.write_str("agentConnected"),
            Property::AgentVersion => f.write_str("agentVersion"),
            Property::Ec2InstanceId => f.write_str("ec2InstanceId"),
            Property::Ec2InstanceType => f.write_str("ec2InstanceType"),
            Property::RegisteredAt => f.write_str("registeredAt"),
            Property::RunningTasksCount => f.write_str("runningTasksCount"),
            Property::TaskGroup => f.write_str("task:group"),
            Property::Attribute(name) => write!(f, "attribute:{name}"),
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// A literal prints bare when it reads back as the same bare word, else single-quoted (which
/// always works: no literal contains `'`).
struct Literal<'a>(&'a str);

impl fmt::Display for Literal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.is_empty() && self.0.chars().all(parse::is_bare_word_char) {
            f.write_str(self.0)
        } else {
            write!(f, "'{}'", self.0)
        }
    }
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.property, self.operator)?;
        if self.operator.takes_list() {
            f.write_str(" [")?;
            for (index, argument) in self.arguments.iter().enumerate() {
                if index > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{}", Literal(argument))?;
            }
            f.write_str("]")
        } else if let Some(argument) = self.arguments.first() {
            write!(f, " {}", Literal(argument))
        } else {
            Ok(())
        }
    }
}

impl Query {
    /// Binding strength, loosest first: what needs parentheses where.
    fn precedence(&self) -> u8 {
        match self {
            Query::Or(..) => 0,
            Query::And(..) => 1,
            Query::Not(_) | Query::Predicate(_) => 2,
        }
    }

    /// Prints `self`, in parentheses when it binds looser than `at_least` requires.
    fn fmt_at(&self, f: &mut fmt::Formatter<'_>, at_least: u8) -> fmt::Result {
        if self.precedence() < at_least {
            write!(f, "({self})")
        } else {
            write!(f, "{self}")
        }
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Both connectives associate to the left, so a right operand of the same kind needs
        // parentheses to keep its shape.
        match self {
            Query::Or(left, right) => {
                left.fmt_at(f, 0)?;
                f.write_str(" || ")?;
                right.fmt_at(f, 1)
            }
            Query::And(left, right) => {
                left.fmt_at(f, 1)?;
                f.write_str(" && ")?;
                right.fmt_at(f, 2)
            }
            Query::Not(inner) => {
                f.write_str("!")?;
                inner.fmt_at(f, 2)
            }
            Query::Predicate(predicate) => write!(f, "{predicate}"),
        }
    }
}

impl FromStr for Query {
    type Err = ParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Query::parse(input)
    }
}

impl Serialize for Query {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Query {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Query::parse(&text).map_err(serde::de::Error::custom)
    }
}
