//! The cluster query language: parsing (every operator spelling for every subject, errors and
//! their columns), evaluation case by case, and two properties: printing a parsed query parses
//! back to it, and evaluation agrees with a reference evaluator written from the semantics.

use std::cmp::Ordering;

use blox_model::cql::{InstanceFacts, Operator, Property, Query};
use blox_model::{Attribute, ContainerInstance, VersionInfo};
use proptest::prelude::*;
use regex::Regex;

/// An instance's facts as plain data, turned into a [`ContainerInstance`] for evaluation.
#[derive(Clone, Debug, Default)]
struct Facts {
    connected: bool,
    version: Option<String>,
    id: Option<String>,
    count: Option<i64>,
    attributes: Vec<(String, Option<String>)>,
    groups: Vec<String>,
    registered_at: Option<String>,
}

impl Facts {
    fn instance(&self) -> ContainerInstance {
        ContainerInstance {
            agent_connected: self.connected,
            agent_update_status: None,
            attributes: self
                .attributes
                .iter()
                .map(|(name, value)| Attribute {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            cluster_arn: "arn:aws:ecs:us-east-1:123456789012:cluster/c".to_owned(),
            container_instance_arn: "arn:aws:ecs:us-east-1:123456789012:container-instance/c/i".to_owned(),
            ec2_instance_id: self.id.clone(),
            registered_resources: Vec::new(),
            remaining_resources: Vec::new(),
            status: "ACTIVE".to_owned(),
            status_reason: None,
            version_info: VersionInfo {
                agent_version: self.version.clone(),
                ..VersionInfo::default()
            },
            running_tasks_count: self.count,
            pending_tasks_count: None,
            registered_at: self.registered_at.clone(),
            version: 0,
            updated_at: None,
        }
    }

    fn attribute(&self, name: &str) -> Option<Option<&str>> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_deref())
    }

    fn evaluate(&self, query: &Query) -> bool {
        let instance = self.instance();
        let groups: Vec<&str> = self.groups.iter().map(String::as_str).collect();
        let facts = InstanceFacts::new(&instance).with_task_groups(&groups);
        query.matches(&facts)
    }
}

// ---------------------------------------------------------------------------------------------
// The reference evaluator: the semantics read straight off the AST, nothing precompiled.

fn reference(query: &Query, facts: &Facts) -> bool {
    match query {
        Query::Or(left, right) => reference(left, facts) || reference(right, facts),
        Query::And(left, right) => reference(left, facts) && reference(right, facts),
        Query::Not(inner) => !reference(inner, facts),
        Query::Predicate(predicate) => {
            let operator = predicate.operator();
            let arguments = predicate.arguments();
            match predicate.property() {
                Property::AgentConnected => reference_text(
                    operator,
                    arguments,
                    if facts.connected { "true" } else { "false" },
                ),
                Property::AgentVersion => facts.version.as_deref().is_some_and(|version| {
                    match (reference_version(version), reference_version(&arguments[0])) {
                        (Some(mut ours), Some(mut theirs)) => {
                            let length = ours.len().max(theirs.len());
                            ours.resize(length, 0);
                            theirs.resize(length, 0);
                            reference_order(operator, ours.cmp(&theirs))
                        }
                        _ => false,
                    }
                }),
                Property::RunningTasksCount => facts.count.is_some_and(|count| {
                    reference_order(operator, count.cmp(&arguments[0].parse::<i64>().unwrap()))
                }),
                Property::RegisteredAt => facts.registered_at.as_deref().is_some_and(|at| {
                    match (reference_instant(at), reference_instant(&arguments[0])) {
                        (Some(ours), Some(theirs)) => reference_order(operator, ours.cmp(&theirs)),
                        _ => false,
                    }
                }),
                Property::Ec2InstanceId => facts
                    .id
                    .as_deref()
                    .is_some_and(|id| reference_text(operator, arguments, id)),
                Property::Ec2InstanceType => facts
                    .attribute("ecs.instance-type")
                    .flatten()
                    .is_some_and(|value| reference_text(operator, arguments, value)),
                Property::Attribute(name) => match facts.attribute(name) {
                    None => operator == Operator::NotExists,
                    Some(value) => match operator {
                        Operator::Exists => true,
                        Operator::NotExists => false,
                        _ => reference_text(operator, arguments, value.unwrap_or("")),
                    },
                },
                Property::TaskGroup => {
                    let groups = &facts.groups;
                    let any = |operator| {
                        groups
                            .iter()
                            .any(|group| reference_text(operator, arguments, group))
                    };
                    match operator {
                        Operator::Exists => !groups.is_empty(),
                        Operator::NotExists => groups.is_empty(),
                        Operator::NotEquals => !any(Operator::Equals),
                        Operator::NotIn => !any(Operator::In),
                        Operator::NotMatches => !any(Operator::Matches),
                        _ => any(operator),
                    }
                }
            }
        }
    }
}

fn reference_text(operator: Operator, arguments: &[String], value: &str) -> bool {
    let full_match = || {
        Regex::new(&format!("^(?:{})$", arguments[0]))
            .unwrap()
            .is_match(value)
    };
    match operator {
        Operator::Equals => value == arguments[0],
        Operator::NotEquals => value != arguments[0],
        Operator::In => arguments.iter().any(|argument| argument == value),
        Operator::NotIn => !arguments.iter().any(|argument| argument == value),
        Operator::Matches => full_match(),
        Operator::NotMatches => !full_match(),
        Operator::Exists | Operator::NotExists => unreachable!(),
        _ => {
            let ordering = match (value.parse::<f64>(), arguments[0].parse::<f64>()) {
                (Ok(ours), Ok(theirs)) => ours.partial_cmp(&theirs),
                _ => Some(value.cmp(&arguments[0])),
            };
            ordering.is_some_and(|ordering| reference_order(operator, ordering))
        }
    }
}

fn reference_order(operator: Operator, ordering: Ordering) -> bool {
    match operator {
        Operator::Equals => ordering == Ordering::Equal,
        Operator::NotEquals => ordering != Ordering::Equal,
        Operator::GreaterThan => ordering == Ordering::Greater,
        Operator::GreaterThanEqual => ordering != Ordering::Less,
        Operator::LessThan => ordering == Ordering::Less,
        Operator::LessThanEqual => ordering != Ordering::Greater,
        _ => unreachable!(),
    }
}

/// Seconds since the epoch by counting days year by year (the formats of the tables only).
fn reference_instant(text: &str) -> Option<i64> {
    let text = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    let (date_time, offset) = if let Some(date_time) = text.strip_suffix('Z') {
        (date_time, 0)
    } else if text.len() == 25 {
        let (date_time, zone) = text.split_at(19);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let hours: i64 = zone[1..3].parse().ok()?;
        let minutes: i64 = zone[4..6].parse().ok()?;
        (date_time, sign * (hours * 3600 + minutes * 60))
    } else {
        (text.as_str(), 0)
    };
    let number = |range: std::ops::Range<usize>| date_time.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let leap = |year: i64| year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let mut days: i64 = (1970..year).map(|y| if leap(y) { 366 } else { 365 }).sum();
    let month_lengths = [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    days += month_lengths[..(month - 1) as usize].iter().sum::<i64>() + day - 1;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

fn reference_version(text: &str) -> Option<Vec<u64>> {
    text.split('.')
        .map(|part| {
            if part.chars().all(|c| c.is_ascii_digit()) {
                part.parse().ok()
            } else {
                None
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The tables.

enum Expect {
    /// Parses, and prints to a form that parses back to the same query.
    Parses,
    /// Fails at this 1-based column with a message containing this text.
    Fails(usize, &'static str),
    /// Parses and evaluates to this on the facts given (and so does the reference evaluator).
    Matches(bool),
}

fn check(query: &str, facts: &Facts, expect: Expect) {
    let parsed = Query::parse(query);
    if let Expect::Fails(column, text) = expect {
        let error = parsed.expect_err(query);
        assert_eq!(error.position + 1, column, "{query}: {error}");
        assert!(
            error.message.contains(text),
            "{query}: {error} (expected {text:?})"
        );
        assert!(
            error.to_string().starts_with(&format!("at column {column}: ")),
            "{error}"
        );
        return;
    }
    let parsed = parsed.unwrap_or_else(|error| panic!("{query}: {error}"));
    let printed = parsed.to_string();
    assert_eq!(
        Query::parse(&printed).as_ref(),
        Ok(&parsed),
        "{query} printed as {printed}"
    );
    if let Expect::Matches(expected) = expect {
        assert_eq!(
            facts.evaluate(&parsed),
            expected,
            "{query} (printed {printed}) on {facts:?}"
        );
        assert_eq!(
            reference(&parsed, facts),
            expected,
            "reference: {query} on {facts:?}"
        );
    }
}

const SPELLINGS: [(Operator, &[&str]); 12] = [
    (Operator::Equals, &["==", "equals"]),
    (Operator::NotEquals, &["!=", "not_equals"]),
    (Operator::GreaterThan, &[">", "greater_than"]),
    (Operator::GreaterThanEqual, &[">=", "greater_than_equal"]),
    (Operator::LessThan, &["<", "less_than"]),
    (Operator::LessThanEqual, &["<=", "less_than_equal"]),
    (Operator::In, &["in"]),
    (Operator::NotIn, &["!in", "not_in"]),
    (Operator::Matches, &["=~", "matches"]),
    (Operator::NotMatches, &["!~", "not_matches"]),
    (Operator::Exists, &["exists"]),
    (Operator::NotExists, &["!exists", "not_exists"]),
];

/// Each subject with a valid argument for each kind of operator: (plain, list, regex).
const SUBJECTS: [(&str, &str, &str, &str); 8] = [
    ("agentConnected", "true", "[true, false]", "tr.*"),
    ("agentVersion", "1.14.5", "", ""),
    (
        "ec2InstanceId",
        "i-abcd1234",
        "['i-abcd1234', 'i-wxyx7890']",
        "i-.*",
    ),
    ("ec2InstanceType", "t2.micro", "[t2.micro, g2.2xlarge]", "g2.*"),
    ("registeredAt", "2018-06-18T22:28:28+00:00", "", ""),
    ("runningTasksCount", "3", "", ""),
    ("task:group", "database", "[database, web]", "data.*"),
    ("attribute:ecs.instance-type", "g2.2xlarge", "[a, b]", "g2.*"),
];

fn takes(subject: &str, operator: Operator) -> bool {
    use Operator::*;
    match subject {
        "agentConnected" | "ec2InstanceId" | "ec2InstanceType" => {
            matches!(operator, Equals | NotEquals | In | NotIn | Matches | NotMatches)
        }
        "agentVersion" | "registeredAt" | "runningTasksCount" => {
            matches!(
                operator,
                Equals | NotEquals | GreaterThan | GreaterThanEqual | LessThan | LessThanEqual
            )
        }
        _ => true,
    }
}

#[test]
fn every_operator_spelling_for_every_subject() {
    let none = Facts::default();
    for (subject, plain, list, pattern) in SUBJECTS {
        for (operator, spellings) in SPELLINGS {
            for spelling in spellings {
                let argument = match operator {
                    Operator::Exists | Operator::NotExists => "",
                    Operator::In | Operator::NotIn => list,
                    Operator::Matches | Operator::NotMatches => pattern,
                    _ => plain,
                };
                let argument = if argument.is_empty() { "x" } else { argument };
                let argument = if matches!(operator, Operator::Exists | Operator::NotExists) {
                    ""
                } else {
                    argument
                };
                let query = format!("{subject} {spelling} {argument}");
                if takes(subject, operator) {
                    check(&query, &none, Expect::Parses);
                    let parsed = Query::parse(&query).unwrap();
                    let Query::Predicate(predicate) = &parsed else {
                        panic!("{query}")
                    };
                    assert_eq!(predicate.operator(), operator, "{query}");
                } else {
                    check(&query, &none, Expect::Fails(subject.len() + 2, "does not take"));
                }
            }
        }
    }
}

#[test]
fn examples_from_the_reference_parse() {
    let none = Facts::default();
    for query in [
        "attribute:ecs.instance-type =~ g2.* and attribute:ecs.availability-zone != us-east-1d",
        "ec2InstanceId in ['i-abcd1234', 'i-wxyx7890']",
        "agentVersion < 1.14.5",
        "not(task:group == database)",
        "attribute:stack == prod",
        "attribute:gpu exists",
        "runningTasksCount >= 3 || !(attribute:az in [a, b])",
        "registeredAt < 2018-06-18T22:28:28Z",
        "registeredAt >= 2018-06-18T22:28:28",
        "registeredAt == 2018-06-18",
        "attribute:a/b:c_d-e.f == 'x y'",
        "attribute:x == ''",
        "attribute:x in a",
        "attribute:x not_in [ a ,b,  c ]",
        "runningTasksCount>=3 &&agentConnected==true",
        "not not attribute:x exists",
        "!!attribute:x exists",
        "((attribute:x exists))",
        "attribute:x == '(not) a, [list]'",
        "task:group =~ '[a-z]+' or task:group in[web]",
    ] {
        check(query, &none, Expect::Parses);
    }
}

#[test]
fn errors_name_their_column() {
    let none = Facts::default();
    for (query, column, message) in [
        ("", 1, "end of the query"),
        ("   ", 4, "end of the query"),
        ("foo == bar", 1, "unknown subject `foo`"),
        ("agentconnected == true", 1, "unknown subject"),
        ("attribute: == x", 11, "attribute name"),
        ("attribute:(x) == y", 11, "can't contain parentheses"),
        ("attribute:x (== y)", 13, "can't contain parentheses"),
        ("attribute:x == (y)", 16, "can't contain parentheses"),
        ("attribute:x == f(y)", 17, "can't contain parentheses"),
        ("(attribute:x == f(y))", 18, "can't contain parentheses"),
        ("attribute:x == [a, b]", 16, "single value, not a list"),
        ("attribute:x in []", 16, "empty list"),
        ("attribute:x in [ ]", 16, "empty list"),
        ("attribute:x in [a b]", 19, "expected `,` or `]`"),
        ("attribute:x in [a, b", 21, "unclosed list"),
        ("attribute:x in [a,]", 19, "missing argument"),
        ("attribute:x ==", 15, "missing argument"),
        ("attribute:x == ", 16, "missing argument"),
        ("(attribute:x == )", 17, "missing argument"),
        ("attribute:x", 12, "expected an operator"),
        ("attribute:x ~= y", 13, "expected an operator"),
        (
            "attribute:x contains y",
            13,
            "expected an operator, found `contains`",
        ),
        ("attribute:x == 'y", 16, "unclosed quote"),
        ("attribute:x == it's", 18, "expected `&&`"),
        ("attribute:x == 'it's'", 20, "expected `&&`"),
        ("(attribute:x exists", 20, "not closed"),
        ("((attribute:x exists)", 22, "not closed"),
        ("attribute:x exists)", 19, "unbalanced parentheses"),
        ("attribute:x exists y", 20, "expected `&&`"),
        ("attribute:x exists AND attribute:y exists", 20, "expected `&&`"),
        ("attribute:x exists andattribute:y exists", 20, "expected `&&`"),
        ("(attribute:x exists y)", 21, "expected `)`"),
        ("attribute:x exists &&", 22, "end of the query"),
        ("attribute:x exists || ", 23, "end of the query"),
        ("NOT attribute:x exists", 1, "unknown subject `NOT`"),
        ("! == x", 3, "expected a subject"),
        ("agentConnected == yes", 19, "true or false, not `yes`"),
        ("agentConnected in [true, maybe]", 26, "true or false"),
        ("agentVersion > 1.x", 16, "not a version"),
        ("agentVersion > 'v1'", 16, "not a version"),
        ("runningTasksCount > three", 21, "not an integer"),
        ("registeredAt > yesterday", 16, "not a date"),
        ("registeredAt > 2018-02-30", 16, "not a date"),
        ("attribute:x =~ '('", 16, "invalid regular expression"),
        (
            "attribute:a exists && attribute:x !~ g2.*(",
            42,
            "can't contain parentheses",
        ),
        ("ec2InstanceType > t2", 17, "does not take `>`"),
        ("agentVersion =~ 1.*", 14, "does not take `=~`"),
        ("runningTasksCount exists", 19, "does not take `exists`"),
        ("registeredAt in [2018-06-18]", 14, "does not take `in`"),
    ] {
        check(query, &none, Expect::Fails(column, message));
    }
}

fn full() -> Facts {
    let attribute = |name: &str, value: Option<&str>| (name.to_owned(), value.map(str::to_owned));
    Facts {
        connected: true,
        version: Some("1.14.5".to_owned()),
        id: Some("i-abcd1234".to_owned()),
        count: Some(3),
        attributes: vec![
            attribute("ecs.instance-type", Some("g2.2xlarge")),
            attribute("ecs.availability-zone", Some("us-east-1a")),
            attribute("stack", Some("prod")),
            attribute("gpu", None),
            attribute("cores", Some("10")),
            attribute("ratio", Some("1.5")),
        ],
        groups: vec!["web".to_owned(), "database".to_owned()],
        registered_at: Some("2018-06-18T22:28:28Z".to_owned()),
    }
}

#[test]
fn evaluation() {
    let full = full();
    let bare = Facts::default();
    let idle = Facts {
        groups: Vec::new(),
        ..full.clone()
    };
    let at = |registered_at: &str| Facts {
        registered_at: Some(registered_at.to_owned()),
        ..full.clone()
    };
    let version = |version: &str| Facts {
        version: Some(version.to_owned()),
        ..full.clone()
    };
    let cases: Vec<(&str, Facts, bool)> = vec![
        // agentConnected
        ("agentConnected == true", full.clone(), true),
        ("agentConnected == false", full.clone(), false),
        ("agentConnected != true", bare.clone(), true),
        ("agentConnected in [false]", bare.clone(), true),
        ("agentConnected not_in [true, false]", full.clone(), false),
        ("agentConnected =~ t.*", full.clone(), true),
        ("agentConnected !~ t.*", bare.clone(), true),
        // agentVersion
        ("agentVersion == 1.14.5", full.clone(), true),
        ("agentVersion > 1.9.0", full.clone(), true),
        ("agentVersion < 1.9.0", full.clone(), false),
        ("agentVersion >= 1.14.5", full.clone(), true),
        ("agentVersion <= 1.14.4", full.clone(), false),
        ("agentVersion != 1.14.5", full.clone(), false),
        ("agentVersion == 1.14", version("1.14.0"), true),
        ("agentVersion > 1.14", version("1.14.0.1"), true),
        ("agentVersion == 1.14.0", version("1.14"), true),
        ("agentVersion > 1", version("garbage"), false),
        ("agentVersion != 1", version("garbage"), false),
        ("agentVersion != 1", bare.clone(), false),
        // ec2InstanceId and ec2InstanceType (the attribute ecs.instance-type)
        ("ec2InstanceId == i-abcd1234", full.clone(), true),
        (
            "ec2InstanceId in ['i-abcd1234', 'i-wxyx7890']",
            full.clone(),
            true,
        ),
        ("ec2InstanceId not_in ['i-wxyx7890']", full.clone(), true),
        ("ec2InstanceId != i-abcd1234", full.clone(), false),
        ("ec2InstanceId =~ 'i-[a-z0-9]+'", full.clone(), true),
        ("ec2InstanceId =~ i-abcd", full.clone(), false),
        ("ec2InstanceId !~ i-abcd", full.clone(), true),
        ("ec2InstanceId != x", bare.clone(), false),
        ("ec2InstanceType == g2.2xlarge", full.clone(), true),
        ("ec2InstanceType =~ g2.*", full.clone(), true),
        ("ec2InstanceType in [t2.micro]", full.clone(), false),
        ("ec2InstanceType !~ t2.*", bare.clone(), false),
        // runningTasksCount
        ("runningTasksCount == 3", full.clone(), true),
        ("runningTasksCount > 2", full.clone(), true),
        ("runningTasksCount >= 4", full.clone(), false),
        ("runningTasksCount < 10", full.clone(), true),
        ("runningTasksCount <= 3", full.clone(), true),
        ("runningTasksCount != 3", full.clone(), false),
        ("runningTasksCount >= 0", bare.clone(), false),
        // registeredAt, the instance's time in each format and the argument's
        ("registeredAt == 2018-06-18T22:28:28+00:00", full.clone(), true),
        (
            "registeredAt == 2018-06-18T22:28:28Z",
            at("2018-06-18T22:28:28"),
            true,
        ),
        (
            "registeredAt == 2018-06-19T00:28:28+02:00",
            at("2018-06-18T22:28:28+00:00"),
            true,
        ),
        ("registeredAt > 2018-06-18", full.clone(), true),
        ("registeredAt < 2018-06-18", at("2018-06-17T23:59:59Z"), true),
        ("registeredAt == 2018-06-18", at("2018-06-18"), true),
        ("registeredAt >= 2018-06-18T22:28:29", full.clone(), false),
        ("registeredAt <= 2018-06-18T22:28:28", full.clone(), true),
        ("registeredAt != 2018-06-18T22:28:28", full.clone(), false),
        ("registeredAt < 2030-01-01", bare.clone(), false),
        ("registeredAt < 2030-01-01", at("not a date"), false),
        // attributes: present, valueless, missing
        ("attribute:stack == prod", full.clone(), true),
        ("attribute:stack equals prod", full.clone(), true),
        ("attribute:stack != prod", full.clone(), false),
        ("attribute:stack != test", full.clone(), true),
        ("attribute:stack != test", bare.clone(), false),
        ("attribute:stack not_in [test]", bare.clone(), false),
        ("attribute:stack !~ test", bare.clone(), false),
        ("attribute:stack == prod", bare.clone(), false),
        ("attribute:stack exists", bare.clone(), false),
        ("attribute:stack !exists", bare.clone(), true),
        ("attribute:stack not_exists", full.clone(), false),
        ("attribute:gpu exists", full.clone(), true),
        ("attribute:gpu == ''", full.clone(), true),
        ("attribute:gpu != ''", full.clone(), false),
        ("attribute:gpu =~ '.*'", full.clone(), true),
        ("attribute:gpu in ['', x]", full.clone(), true),
        (
            "attribute:ecs.instance-type =~ g2.* and attribute:ecs.availability-zone != us-east-1d",
            full.clone(),
            true,
        ),
        ("attribute:ecs.instance-type =~ g2", full.clone(), false),
        (
            "attribute:ecs.availability-zone in [us-east-1a, us-east-1b]",
            full.clone(),
            true,
        ),
        (
            "attribute:ecs.availability-zone not_in [us-east-1a, us-east-1b]",
            full.clone(),
            false,
        ),
        // comparisons: numeric when both are numbers, else lexicographic
        ("attribute:cores > 9", full.clone(), true),
        ("attribute:cores > 9.5", full.clone(), true),
        ("attribute:cores < 9", full.clone(), false),
        ("attribute:cores >= 10.0", full.clone(), true),
        ("attribute:ratio <= 1.5", full.clone(), true),
        ("attribute:stack > pre", full.clone(), true),
        ("attribute:stack < 9", full.clone(), false),
        ("attribute:cores < abc", full.clone(), true),
        ("attribute:stack greater_than_equal prod", full.clone(), true),
        ("attribute:stack less_than prod", full.clone(), false),
        // task groups: any group for the positive operators, no group for the negative ones
        ("task:group == database", full.clone(), true),
        ("task:group == web", full.clone(), true),
        ("task:group == cache", full.clone(), false),
        ("task:group != database", full.clone(), false),
        ("task:group != cache", full.clone(), true),
        ("task:group != cache", idle.clone(), true),
        ("task:group == cache", idle.clone(), false),
        ("task:group in [cache, web]", full.clone(), true),
        ("task:group not_in [cache, web]", full.clone(), false),
        ("task:group not_in [cache]", full.clone(), true),
        ("task:group =~ data.*", full.clone(), true),
        ("task:group !~ data.*", full.clone(), false),
        ("task:group !~ cache.*", idle.clone(), true),
        ("task:group exists", full.clone(), true),
        ("task:group exists", idle.clone(), false),
        ("task:group !exists", idle.clone(), true),
        ("task:group > w", full.clone(), true),
        ("task:group < a", full.clone(), false),
        ("not(task:group == database)", full.clone(), false),
        ("not(task:group == database)", idle.clone(), true),
        // precedence: `||` loosest, then `&&`, then `!`
        (
            "attribute:stack == prod || attribute:x exists && attribute:y exists",
            full.clone(),
            true,
        ),
        (
            "(attribute:stack == prod || attribute:x exists) && attribute:y exists",
            full.clone(),
            false,
        ),
        (
            "attribute:x exists && attribute:y exists || attribute:stack == prod",
            full.clone(),
            true,
        ),
        (
            "!attribute:stack exists && attribute:gpu exists",
            full.clone(),
            false,
        ),
        (
            "not attribute:x exists and attribute:gpu exists",
            full.clone(),
            true,
        ),
        (
            "!(attribute:x exists && attribute:gpu exists)",
            full.clone(),
            true,
        ),
        (
            "not attribute:x exists or attribute:gpu exists",
            bare.clone(),
            true,
        ),
        ("!!attribute:gpu exists", full.clone(), true),
        (
            "runningTasksCount >= 3 || !(attribute:az in [a, b])",
            bare.clone(),
            true,
        ),
        (
            "runningTasksCount >= 3 || !(attribute:az in [a, b])",
            full.clone(),
            true,
        ),
        (
            "runningTasksCount > 3 or attribute:cores == 10 and agentConnected == true",
            full.clone(),
            true,
        ),
        (
            "(runningTasksCount > 3 or attribute:cores == 10) and agentConnected == true",
            bare.clone(),
            false,
        ),
    ];
    for (query, facts, expected) in cases {
        check(query, &facts, Expect::Matches(expected));
    }
}

#[test]
fn canonical_form() {
    for (query, printed) in [
        (
            "attribute:a exists and attribute:b exists or attribute:c exists",
            "attribute:a exists && attribute:b exists || attribute:c exists",
        ),
        (
            "attribute:a exists and (attribute:b exists or attribute:c exists)",
            "attribute:a exists && (attribute:b exists || attribute:c exists)",
        ),
        (
            "attribute:a exists or (attribute:b exists or attribute:c exists)",
            "attribute:a exists || (attribute:b exists || attribute:c exists)",
        ),
        (
            "((attribute:a exists or attribute:b exists)) or attribute:c exists",
            "attribute:a exists || attribute:b exists || attribute:c exists",
        ),
        ("not (attribute:a not_exists)", "!attribute:a !exists"),
        ("not(task:group equals database)", "!task:group == database"),
        (
            "not (attribute:a exists and attribute:b exists)",
            "!(attribute:a exists && attribute:b exists)",
        ),
        ("ec2InstanceId in 'i-1'", "ec2InstanceId in [i-1]"),
        (
            "attribute:x !in [ 'a b' , '', c ]",
            "attribute:x not_in ['a b', '', c]",
        ),
        ("attribute:x matches '[0-9]+'", "attribute:x =~ '[0-9]+'"),
        ("attribute:x not_matches 'a,b'", "attribute:x !~ 'a,b'"),
        ("agentVersion less_than_equal '1.2'", "agentVersion <= 1.2"),
    ] {
        assert_eq!(Query::parse(query).unwrap().to_string(), printed, "{query}");
    }
}

#[test]
fn serde_as_a_string() {
    let query: Query = "attribute:stack == prod and not task:group in [web, 'a b']"
        .parse()
        .unwrap();
    let json = serde_json::to_string(&query).unwrap();
    assert_eq!(
        json,
        r#""attribute:stack == prod && !task:group in [web, 'a b']""#
    );
    assert_eq!(serde_json::from_str::<Query>(&json).unwrap(), query);
    let error = serde_json::from_str::<Query>(r#""attribute:x ==""#).unwrap_err();
    assert!(
        error.to_string().contains("at column 15: missing argument"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// Properties.

/// Picks from small pools with the bits of a seed, so that a generated query stays valid.
struct Picker(u64);

impl Picker {
    fn index(&mut self, length: usize) -> usize {
        let choice = (self.0 % length as u64) as usize;
        self.0 = (self.0 / length as u64) ^ self.0.rotate_left(29).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        choice
    }

    fn pick<'a>(&mut self, pool: &[&'a str]) -> &'a str {
        pool[self.index(pool.len())]
    }
}

const VALUES: [&str; 10] = ["1", "2", "10", "1.5", "-3", "x", "web", "db", "''", "'x y'"];
const PATTERNS: [&str; 8] = ["g2.*", "'[0-9]+'", "'.*'", "'x|1'", "'1\\.5'", "w.b", "t.*", "''"];

/// The text of a random valid predicate, with a random spelling of its operator.
fn predicate_text(seed: u64) -> String {
    let mut picker = Picker(seed);
    let subject = picker.pick(&[
        "agentConnected",
        "agentVersion",
        "ec2InstanceId",
        "ec2InstanceType",
        "runningTasksCount",
        "task:group",
        "attribute:a",
        "attribute:b",
        "attribute:gpu",
        "attribute:ecs.instance-type",
    ]);
    let operators: Vec<(Operator, &[&str])> = SPELLINGS
        .iter()
        .copied()
        .filter(|(operator, _)| takes(subject, *operator))
        .collect();
    let (operator, spellings) = operators[picker.index(operators.len())];
    let spelling = picker.pick(spellings);
    let mut value = || match subject {
        "agentConnected" => picker.pick(&["true", "false"]),
        "agentVersion" => picker.pick(&["1", "1.14", "1.14.5", "1.9.0", "2.0.0", "'1.10'"]),
        "ec2InstanceId" => picker.pick(&["i-1", "i-2", "'i-3'"]),
        "ec2InstanceType" => picker.pick(&["g2.2xlarge", "t2.micro"]),
        "runningTasksCount" => picker.pick(&["0", "1", "3", "-1", "10"]),
        _ => picker.pick(&VALUES),
    };
    let argument = match operator {
        Operator::Exists | Operator::NotExists => String::new(),
        Operator::Matches | Operator::NotMatches => match subject {
            "agentConnected" => "'t.*'".to_owned(),
            "ec2InstanceId" => "'i-[12]'".to_owned(),
            _ => PATTERNS[(seed >> 40) as usize % PATTERNS.len()].to_owned(),
        },
        Operator::In | Operator::NotIn => match seed >> 60 {
            0..4 => value().to_owned(),
            4..10 => format!("[{}, {}]", value(), value()),
            _ => format!("[{}]", value()),
        },
        _ => value().to_owned(),
    };
    format!("{subject} {spelling} {argument}")
}

/// The text of a random valid query: predicates joined with random spellings of the
/// connectives, with or without parentheses.
fn query_text() -> impl Strategy<Value = String> {
    any::<u64>()
        .prop_map(predicate_text)
        .prop_recursive(4, 24, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone(), any::<u8>()).prop_map(|(left, right, style)| {
                    let connective = ["&&", "and", "||", "or"][usize::from(style % 4)];
                    let wrap = |text: String, bit: u8| {
                        if style & bit != 0 {
                            format!("({text})")
                        } else {
                            text
                        }
                    };
                    format!("{} {connective} {}", wrap(left, 4), wrap(right, 8))
                }),
                (inner, any::<u8>()).prop_map(|(inner, style)| {
                    match style % 6 {
                        0 => format!("!({inner})"),
                        1 => format!("not({inner})"),
                        2 => format!("not ( {inner} )"),
                        3 => format!("!{inner}"),
                        4 => format!("not {inner}"),
                        _ => format!("! {inner}"),
                    }
                }),
            ]
        })
}

fn facts() -> impl Strategy<Value = Facts> {
    let value = prop::sample::select(vec![
        None,
        Some("1"),
        Some("2"),
        Some("10"),
        Some("1.5"),
        Some("-3"),
        Some("x"),
        Some(""),
        Some("x y"),
        Some("web"),
    ]);
    let attribute = (
        prop::sample::select(vec!["a", "b", "gpu", "ecs.instance-type"]),
        value,
    )
        .prop_map(|(name, value)| (name.to_owned(), value.map(str::to_owned)));
    (
        any::<bool>(),
        prop::sample::select(vec![
            None,
            Some("1.14.5"),
            Some("1.9"),
            Some("1.14.5.1"),
            Some("2"),
            Some("1.10"),
            Some("bad"),
            Some("1.x"),
        ]),
        prop::sample::select(vec![None, Some("i-1"), Some("i-2")]),
        prop::option::of(-1..6_i64),
        prop::collection::vec(attribute, 0..4),
        prop::collection::vec(prop::sample::select(vec!["web", "db", "10", "2", "x y"]), 0..3),
    )
        .prop_map(|(connected, version, id, count, attributes, groups)| Facts {
            connected,
            version: version.map(str::to_owned),
            id: id.map(str::to_owned),
            count,
            attributes,
            groups: groups.into_iter().map(str::to_owned).collect(),
            registered_at: None,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn printing_parses_back(text in query_text()) {
        let query = Query::parse(&text).map_err(|error| TestCaseError::fail(format!("{text}: {error}")))?;
        let printed = query.to_string();
        let reparsed = Query::parse(&printed).map_err(|error| TestCaseError::fail(format!("{printed}: {error}")))?;
        prop_assert_eq!(&reparsed, &query, "{} printed as {}", text, printed);
        prop_assert_eq!(reparsed.to_string(), printed);
    }

    #[test]
    fn evaluation_agrees_with_the_reference(text in query_text(), facts in facts()) {
        let query = Query::parse(&text).map_err(|error| TestCaseError::fail(format!("{text}: {error}")))?;
        prop_assert_eq!(facts.evaluate(&query), reference(&query, &facts), "{} on {:?}", query, facts);
    }
}
