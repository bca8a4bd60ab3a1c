//! How a revision is rolled out: the method and its configuration, their defaults and limits, and the
//! numbers derived from them (the healthy floor, the surge budget, the failure threshold).

use serde::{Deserialize, Serialize};

use crate::cql::Query;
use crate::entity::FieldError;

/// How old daemons give way to new ones on an instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeploymentMethod {
    /// Stop the old task, then start the new one: never two versions on an instance, a short gap in
    /// coverage on each instance, at most as many gaps at once as `minHealthyPercent` allows.
    #[default]
    TerminateThenReplace,
    /// Start the new task beside the old one, stop the old once the new is healthy: never zero
    /// copies on an instance, two copies on at most `maxOverPercent` of the instances at once.
    ReplaceThenTerminate,
}

impl DeploymentMethod {
    pub const ALL: [DeploymentMethod; 2] = [
        DeploymentMethod::TerminateThenReplace,
        DeploymentMethod::ReplaceThenTerminate,
    ];

    /// The wire name (`TerminateThenReplace`, `ReplaceThenTerminate`).
    pub fn name(self) -> &'static str {
        match self {
            DeploymentMethod::TerminateThenReplace => "TerminateThenReplace",
            DeploymentMethod::ReplaceThenTerminate => "ReplaceThenTerminate",
        }
    }

    /// Parses a wire name; the error names the field and the accepted values.
    pub fn parse(field: &'static str, text: &str) -> Result<DeploymentMethod, FieldError> {
        DeploymentMethod::ALL
            .into_iter()
            .find(|m| m.name() == text)
            .ok_or_else(|| {
                FieldError::new(
                    field,
                    format!(
                        "{text:?} is not a deployment method: TerminateThenReplace or ReplaceThenTerminate"
                    ),
                )
            })
    }
}

/// Defaults of a new environment (the same through both APIs).
pub const DEFAULT_MIN_HEALTHY_PERCENT: u8 = 90;
pub const DEFAULT_MAX_OVER_PERCENT: u8 = 10;
pub const DEFAULT_MIN_HEALTHY_SECONDS: u64 = 0;
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: u64 = 600;
pub const DEFAULT_COVERAGE_GRACE_SECONDS: u64 = 60;
/// CloudWatch alarms a deployment watches, at most (DescribeAlarms takes 100 names a call).
pub const MAX_ALARMS: usize = 100;
pub const MAX_CANARY_INSTANCES: u64 = 100_000;
/// A bake time or a deadline longer than a week is a mistake, not a choice.
pub const MAX_SECONDS: u64 = 7 * 24 * 3600;
pub const MAX_FAILURE_THRESHOLD: u64 = 100_000;

/// A revision's rollout configuration. Stored with every revision (immutable with it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentConfiguration {
    /// TerminateThenReplace never stops a healthy daemon when that would leave fewer than
    /// ceil(minHealthyPercent × eligible / 100) instances with a healthy one. 0–100.
    #[serde(default = "default_min_healthy_percent")]
    pub min_healthy_percent: u8,
    /// ReplaceThenTerminate runs two tasks on at most ceil(maxOverPercent × eligible / 100) instances
    /// at once. 1–100.
    #[serde(default = "default_max_over_percent")]
    pub max_over_percent: u8,
    /// How long a task must have been healthy to count as healthy (bake time).
    #[serde(default)]
    pub min_healthy_seconds: u64,
    /// Failed start attempts after which the deployment fails; `None`: 10% of the eligible
    /// instances, at least 3, at most 200 (ECS's circuit-breaker bounds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u64>,
    /// The deployment fails when the healthy count of its revision has not grown for this long.
    #[serde(default = "default_progress_deadline_seconds")]
    pub progress_deadline_seconds: u64,
    /// A failed deployment starts a deployment of the last completed revision by itself.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
    /// Stop the daemon when its instance starts draining (ECS DAEMON services do). By default it is
    /// kept until the instance leaves, so that log and metric agents outlive the tasks they serve.
    #[serde(default)]
    pub stop_on_drain: bool,
    /// The wait before retrying a start that failed on an instance, doubled per failure...
    #[serde(default = "default_backoff_initial")]
    pub start_backoff_initial_ms: u64,
    /// ...up to this.
    #[serde(default = "default_backoff_max")]
    pub start_backoff_max_ms: u64,
    /// Roll out to these instances first, then wait for promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// CloudWatch alarms watched while a deployment of the revision is in progress (not a rollback's:
    /// `Deployment::watches_alarms`): one in ALARM fails the deployment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alarms: Vec<String>,
    /// An instance that should run the active revision and has had no healthy task of it for longer
    /// than this is uncovered.
    #[serde(default = "default_coverage_grace_seconds")]
    pub coverage_grace_seconds: u64,
}

/// A canary: which instances a deployment rolls out to first. Exactly one of `instances`,
/// `percent` and `query` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Canary {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<Query>,
    /// Promote by itself once the canary has been healthy for `minHealthySeconds`, instead of
    /// waiting in `awaiting-promotion`.
    #[serde(default)]
    pub auto_promote: bool,
}

impl Canary {
    /// Whether picking it reads the groups of the instances' tasks (`task:group`).
    pub fn reads_task_groups(&self) -> bool {
        self.query.as_ref().is_some_and(Query::reads_task_groups)
    }

    /// How many of `eligible` instances the canary takes, when it is sized by a number (at least
    /// one for a percentage of a non-empty fleet); `None` for a query, which takes every eligible
    /// instance it matches.
    pub fn count(&self, eligible: u64) -> Option<u64> {
        match (self.instances, self.percent) {
            (Some(n), _) => Some(n.min(eligible)),
            (None, Some(p)) => Some(ceil_percent(p, eligible).max(u64::from(eligible > 0))),
            (None, None) => None,
        }
    }
}

/// A request's canary, each field optional; checked by [`ConfigPatch::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CanaryPatch {
    pub instances: Option<i64>,
    pub percent: Option<i64>,
    pub query: Option<Query>,
    pub auto_promote: Option<bool>,
}

fn default_min_healthy_percent() -> u8 {
    DEFAULT_MIN_HEALTHY_PERCENT
}
fn default_max_over_percent() -> u8 {
    DEFAULT_MAX_OVER_PERCENT
}
fn default_progress_deadline_seconds() -> u64 {
    DEFAULT_PROGRESS_DEADLINE_SECONDS
}
fn default_true() -> bool {
    true
}
fn default_backoff_initial() -> u64 {
    5_000
}
fn default_backoff_max() -> u64 {
    300_000
}
fn default_coverage_grace_seconds() -> u64 {
    DEFAULT_COVERAGE_GRACE_SECONDS
}

impl Default for DeploymentConfiguration {
    fn default() -> Self {
        DeploymentConfiguration {
            min_healthy_percent: DEFAULT_MIN_HEALTHY_PERCENT,
            max_over_percent: DEFAULT_MAX_OVER_PERCENT,
            min_healthy_seconds: DEFAULT_MIN_HEALTHY_SECONDS,
            failure_threshold: None,
            progress_deadline_seconds: DEFAULT_PROGRESS_DEADLINE_SECONDS,
            auto_rollback: true,
            stop_on_drain: false,
            start_backoff_initial_ms: default_backoff_initial(),
            start_backoff_max_ms: default_backoff_max(),
            canary: None,
            alarms: Vec::new(),
            coverage_grace_seconds: DEFAULT_COVERAGE_GRACE_SECONDS,
        }
    }
}

/// The fields a request may set, each optional: applied over the defaults (create) or over the
/// latest revision's configuration (update). Numbers are wide so that an out-of-range value is
/// reported by [`ConfigPatch::apply`] with its field, not lost in a parse error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigPatch {
    pub min_healthy_percent: Option<i64>,
    pub max_over_percent: Option<i64>,
    pub min_healthy_seconds: Option<i64>,
    pub failure_threshold: Option<i64>,
    pub progress_deadline_seconds: Option<i64>,
    pub auto_rollback: Option<bool>,
    pub stop_on_drain: Option<bool>,
    /// `{"instances": 0}` removes the canary.
    pub canary: Option<CanaryPatch>,
    /// Replaces the list (an empty one removes every alarm).
    pub alarms: Option<Vec<String>>,
    pub coverage_grace_seconds: Option<i64>,
}

impl ConfigPatch {
    pub fn is_empty(&self) -> bool {
        *self == ConfigPatch::default()
    }

    /// `base` with the patch's fields, each checked against its range. Field names in errors are the
    /// wire names under `deploymentConfiguration.`.
    pub fn apply(&self, base: DeploymentConfiguration) -> Result<DeploymentConfiguration, FieldError> {
        let mut config = base;
        if let Some(v) = self.min_healthy_percent {
            config.min_healthy_percent =
                in_range("deploymentConfiguration.minHealthyPercent", v, 0, 100)? as u8;
        }
        if let Some(v) = self.max_over_percent {
            config.max_over_percent = in_range("deploymentConfiguration.maxOverPercent", v, 1, 100)? as u8;
        }
        if let Some(v) = self.min_healthy_seconds {
            config.min_healthy_seconds =
                in_range("deploymentConfiguration.minHealthySeconds", v, 0, MAX_SECONDS)?;
        }
        if let Some(v) = self.failure_threshold {
            config.failure_threshold = Some(in_range(
                "deploymentConfiguration.failureThreshold",
                v,
                1,
                MAX_FAILURE_THRESHOLD,
            )?);
        }
        if let Some(v) = self.progress_deadline_seconds {
            config.progress_deadline_seconds = in_range(
                "deploymentConfiguration.progressDeadlineSeconds",
                v,
                1,
                MAX_SECONDS,
            )?;
        }
        if let Some(v) = self.auto_rollback {
            config.auto_rollback = v;
        }
        if let Some(v) = self.stop_on_drain {
            config.stop_on_drain = v;
        }
        if let Some(v) = self.coverage_grace_seconds {
            config.coverage_grace_seconds =
                in_range("deploymentConfiguration.coverageGraceSeconds", v, 0, MAX_SECONDS)?;
        }
        if let Some(canary) = &self.canary {
            config.canary = canary.apply()?;
        }
        if let Some(alarms) = &self.alarms {
            config.alarms = check_alarms(alarms)?;
        }
        // A deadline no longer than the bake time fails every deployment before its first
        // replacement can count as healthy.
        if config.progress_deadline_seconds <= config.min_healthy_seconds {
            let field = if self.progress_deadline_seconds.is_some() {
                "deploymentConfiguration.progressDeadlineSeconds"
            } else {
                "deploymentConfiguration.minHealthySeconds"
            };
            return Err(FieldError::new(
                field,
                format!(
                    "progressDeadlineSeconds ({}) must be longer than minHealthySeconds ({})",
                    config.progress_deadline_seconds, config.min_healthy_seconds
                ),
            ));
        }
        Ok(config)
    }
}

impl CanaryPatch {
    /// The canary, or none for `{"instances": 0}`.
    fn apply(&self) -> Result<Option<Canary>, FieldError> {
        let given = [
            self.instances.is_some(),
            self.percent.is_some(),
            self.query.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(FieldError::new(
                "deploymentConfiguration.canary",
                "give exactly one of instances, percent and query",
            ));
        }
        let instances = self
            .instances
            .map(|n| {
                in_range(
                    "deploymentConfiguration.canary.instances",
                    n,
                    0,
                    MAX_CANARY_INSTANCES,
                )
            })
            .transpose()?;
        if instances == Some(0) {
            return Ok(None);
        }
        let percent = self
            .percent
            .map(|p| in_range("deploymentConfiguration.canary.percent", p, 1, 100).map(|p| p as u8))
            .transpose()?;
        Ok(Some(Canary {
            instances,
            percent,
            query: self.query.clone(),
            auto_promote: self.auto_promote.unwrap_or(false),
        }))
    }
}

/// Alarm names as CloudWatch takes them: 1 to 255 characters, no control characters; duplicates
/// dropped, at most [`MAX_ALARMS`].
fn check_alarms(alarms: &[String]) -> Result<Vec<String>, FieldError> {
    if alarms.len() > MAX_ALARMS {
        return Err(FieldError::new(
            "deploymentConfiguration.alarms",
            format!("{} alarms: at most {MAX_ALARMS}", alarms.len()),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(alarms.len());
    for name in alarms {
        if name.is_empty() || name.chars().count() > 255 || name.chars().any(char::is_control) {
            return Err(FieldError::new(
                "deploymentConfiguration.alarms",
                format!(
                    "{name:?} is not a CloudWatch alarm name: 1 to 255 characters, no control characters"
                ),
            ));
        }
        if !out.contains(name) {
            out.push(name.clone());
        }
    }
    Ok(out)
}

fn in_range(field: &'static str, value: i64, min: u64, max: u64) -> Result<u64, FieldError> {
    match u64::try_from(value) {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(FieldError::new(
            field,
            format!("{value} is out of range: {min} to {max}"),
        )),
    }
}

/// ceil(percent × n / 100) without floating point.
pub fn ceil_percent(percent: u8, n: u64) -> u64 {
    (u64::from(percent) * n).div_ceil(100)
}

impl DeploymentConfiguration {
    /// The fewest eligible instances that must keep a healthy daemon: ceil(minHealthyPercent ×
    /// eligible / 100), but below 100% never all of them: on a small fleet (90% of 9 rounds up to 9)
    /// TerminateThenReplace could otherwise replace nothing at all. At 100% nothing is stopped
    /// before its replacement is healthy elsewhere, which only ReplaceThenTerminate can do.
    pub fn healthy_floor(&self, eligible: u64) -> u64 {
        let floor = ceil_percent(self.min_healthy_percent, eligible);
        if self.min_healthy_percent < 100 {
            floor.min(eligible.saturating_sub(1))
        } else {
            floor
        }
    }

    /// How many instances may carry two tasks at once under ReplaceThenTerminate:
    /// ceil(maxOverPercent × eligible / 100), at least 1 when there is any instance.
    pub fn surge(&self, eligible: u64) -> u64 {
        ceil_percent(self.max_over_percent, eligible).max(u64::from(eligible > 0))
    }

    /// Failed start attempts that fail a deployment over `eligible` instances.
    pub fn failure_threshold(&self, eligible: u64) -> u64 {
        self.failure_threshold
            .unwrap_or_else(|| eligible.div_ceil(10).clamp(3, 200))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_and_budgets_round_up() {
        let config = DeploymentConfiguration::default();
        let check =
            |percent: u8, n: u64, want: u64| assert_eq!(ceil_percent(percent, n), want, "{percent}% of {n}");
        check(90, 12, 11);
        check(90, 10, 9);
        check(0, 12, 0);
        check(100, 12, 12);
        check(10, 12, 2);
        check(10, 5_000, 500);
        check(1, 1, 1);
        assert_eq!(config.healthy_floor(12), 11);
        assert_eq!(
            config.healthy_floor(9),
            8,
            "below 100%, one instance at a time at least"
        );
        assert_eq!(config.healthy_floor(1), 0);
        assert_eq!(config.healthy_floor(0), 0);
        let all = DeploymentConfiguration {
            min_healthy_percent: 100,
            ..config.clone()
        };
        assert_eq!(all.healthy_floor(9), 9);
        assert_eq!(config.surge(12), 2);
        assert_eq!(config.surge(0), 0);
        let one = DeploymentConfiguration {
            max_over_percent: 1,
            ..config.clone()
        };
        assert_eq!(one.surge(5), 1);
        for (eligible, want) in [(0, 3), (12, 3), (30, 3), (31, 4), (100, 10), (5_000, 200)] {
            assert_eq!(config.failure_threshold(eligible), want, "{eligible}");
        }
        let fixed = DeploymentConfiguration {
            failure_threshold: Some(1),
            ..config.clone()
        };
        assert_eq!(fixed.failure_threshold(5_000), 1);
    }

    #[test]
    fn patches_name_the_field_out_of_range() {
        let check = |patch: ConfigPatch, field: Option<&str>| {
            let result = patch.apply(DeploymentConfiguration::default());
            match (result, field) {
                (Ok(_), None) => {}
                (Err(e), Some(field)) => assert_eq!(e.field, field, "{patch:?}: {e}"),
                (other, _) => panic!("{patch:?}: {other:?}"),
            }
        };
        check(ConfigPatch::default(), None);
        for ok in [0, 50, 100] {
            check(
                ConfigPatch {
                    min_healthy_percent: Some(ok),
                    ..ConfigPatch::default()
                },
                None,
            );
        }
        for bad in [-1, 101, i64::MAX] {
            check(
                ConfigPatch {
                    min_healthy_percent: Some(bad),
                    ..ConfigPatch::default()
                },
                Some("deploymentConfiguration.minHealthyPercent"),
            );
        }
        for bad in [0, 101, -5] {
            check(
                ConfigPatch {
                    max_over_percent: Some(bad),
                    ..ConfigPatch::default()
                },
                Some("deploymentConfiguration.maxOverPercent"),
            );
        }
        check(
            ConfigPatch {
                min_healthy_seconds: Some(-1),
                ..ConfigPatch::default()
            },
            Some("deploymentConfiguration.minHealthySeconds"),
        );
        check(
            ConfigPatch {
                failure_threshold: Some(0),
                ..ConfigPatch::default()
            },
            Some("deploymentConfiguration.failureThreshold"),
        );
        check(
            ConfigPatch {
                progress_deadline_seconds: Some(0),
                ..ConfigPatch::default()
            },
            Some("deploymentConfiguration.progressDeadlineSeconds"),
        );
        check(
            ConfigPatch {
                min_healthy_seconds: Some(600),
                ..ConfigPatch::default()
            },
            Some("deploymentConfiguration.minHealthySeconds"),
        );
        check(
            ConfigPatch {
                min_healthy_seconds: Some(60),
                progress_deadline_seconds: Some(60),
                ..ConfigPatch::default()
            },
            Some("deploymentConfiguration.progressDeadlineSeconds"),
        );
        check(
            ConfigPatch {
                min_healthy_seconds: Some(60),
                progress_deadline_seconds: Some(61),
                ..ConfigPatch::default()
            },
            None,
        );
        let applied = ConfigPatch {
            min_healthy_percent: Some(50),
            auto_rollback: Some(false),
            ..ConfigPatch::default()
        }
        .apply(DeploymentConfiguration::default())
        .unwrap();
        assert_eq!(applied.min_healthy_percent, 50);
        assert!(!applied.auto_rollback);
        assert_eq!(applied.max_over_percent, DEFAULT_MAX_OVER_PERCENT, "untouched");
    }

    #[test]
    fn methods_parse_by_their_wire_names() {
        for method in DeploymentMethod::ALL {
            assert_eq!(DeploymentMethod::parse("m", method.name()).unwrap(), method);
            assert_eq!(serde_json::to_value(method).unwrap(), method.name());
        }
        let err = DeploymentMethod::parse("deploymentMethod", "ReplaceAfterTerminate").unwrap_err();
        assert_eq!(err.field, "deploymentMethod");
        assert_eq!(
            DeploymentMethod::default(),
            DeploymentMethod::TerminateThenReplace
        );
    }

    #[test]
    fn stored_configurations_fill_in_defaults() {
        let config: DeploymentConfiguration = serde_json::from_str(r#"{"stopOnDrain": true}"#).unwrap();
        assert_eq!(
            config,
            DeploymentConfiguration {
                stop_on_drain: true,
                ..DeploymentConfiguration::default()
            }
        );
    }
}
