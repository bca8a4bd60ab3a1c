//! [`AlarmReader`] on the AWS SDK: DescribeAlarms by name.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatch::types::{AlarmType, StateValue};
use aws_smithy_types::DateTime;

use crate::ecs::Classified;
use crate::{ALARM_BATCH, AlarmError, AlarmErrorKind, AlarmReader, AlarmState, AlarmStateValue};

/// [`ALARM_BATCH`] as the SDK takes it (MaxRecords is at most 100 too).
const PAGE_SIZE: i32 = ALARM_BATCH as i32;

/// Codes with which CloudWatch refuses a request as invalid.
const REJECTED_CODES: &[&str] = &[
    "InvalidNextToken",
    "InvalidParameterValue",
    "InvalidParameterCombination",
    "MissingParameter",
    "ValidationError",
];

/// The alarm reads of a deployment ([`AlarmReader`]) on an `aws_sdk_cloudwatch::Client`.
#[derive(Debug, Clone)]
pub struct SdkAlarms {
    client: Client,
}

impl SdkAlarms {
    pub fn new(config: &SdkConfig) -> SdkAlarms {
        SdkAlarms {
            client: Client::new(config),
        }
    }

    /// Over a client configured by the caller (e.g. with interceptors, as the tests use to see the
    /// calls made).
    pub fn from_client(client: Client) -> SdkAlarms {
        SdkAlarms { client }
    }

    /// The underlying client, for calls the [`AlarmReader`] trait does not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// One DescribeAlarms of at most [`ALARM_BATCH`] names, every page.
    async fn describe_batch(
        &self,
        names: &[String],
        found: &mut HashMap<String, AlarmState>,
    ) -> Result<(), AlarmError> {
        const OP: &str = "DescribeAlarms";
        let mut pages = self
            .client
            .describe_alarms()
            .set_alarm_names(Some(names.to_vec()))
            // Without AlarmTypes, CloudWatch describes metric alarms only.
            .alarm_types(AlarmType::MetricAlarm)
            .alarm_types(AlarmType::CompositeAlarm)
            .into_paginator()
            .page_size(PAGE_SIZE)
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error(OP, e))?;
            let metric = page.metric_alarms().iter().map(|a| {
                state(
                    a.alarm_name(),
                    a.state_value(),
                    a.state_reason(),
                    a.state_updated_timestamp(),
                )
            });
            let composite = page.composite_alarms().iter().map(|a| {
                state(
                    a.alarm_name(),
                    a.state_value(),
                    a.state_reason(),
                    a.state_updated_timestamp(),
                )
            });
            for alarm in metric.chain(composite).flatten() {
                found.insert(alarm.name.clone(), alarm);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl AlarmReader for SdkAlarms {
    async fn alarm_states(&self, names: &[String]) -> Result<Vec<AlarmState>, AlarmError> {
        let names = unique(names);
        // DescribeAlarms without names describes every alarm of the account.
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut found = HashMap::with_capacity(names.len());
        for chunk in names.chunks(ALARM_BATCH) {
            self.describe_batch(chunk, &mut found).await?;
        }
        let states: Vec<AlarmState> = names.iter().filter_map(|name| found.remove(name)).collect();
        tracing::debug!(asked = names.len(), found = states.len(), "described alarms");
        Ok(states)
    }
}

/// `names` without repeats, first occurrences in order.
fn unique(names: &[String]) -> Vec<String> {
    let mut seen = HashSet::with_capacity(names.len());
    names
        .iter()
        .filter(|n| seen.insert(n.as_str()))
        .cloned()
        .collect()
}

/// An alarm as blox sees it; `None` for one without a name (CloudWatch always sends it).
fn state(
    name: Option<&str>,
    value: Option<&StateValue>,
    reason: Option<&str>,
    updated: Option<&DateTime>,
) -> Option<AlarmState> {
    let name = name.filter(|n| !n.is_empty())?;
    Some(AlarmState {
        name: name.to_owned(),
        // An alarm always has a state; a missing one is not ALARM, so it cannot fail a deployment.
        state: value.map_or(AlarmStateValue::Other(String::new()), |v| {
            AlarmStateValue::parse(v.as_str())
        }),
        reason: reason.filter(|r| !r.is_empty()).map(str::to_owned),
        updated_at_ms: updated
            .and_then(|t| t.to_millis().ok())
            .and_then(|ms| u64::try_from(ms).ok()),
    })
}

fn sdk_error<E, R>(operation: &'static str, err: SdkError<E, R>) -> AlarmError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let kind = match Classified::of(&err) {
        Classified::Throttled => AlarmErrorKind::Throttled,
        Classified::Coded { code, message } if REJECTED_CODES.contains(&code.as_str()) => {
            AlarmErrorKind::Rejected { code, message }
        }
        Classified::Coded { code, message } => AlarmErrorKind::Other(format!("{code}: {message}")),
        Classified::Uncoded(chain) => AlarmErrorKind::Other(chain),
    };
    tracing::debug!(operation, error = %kind, "CloudWatch call failed");
    AlarmError { operation, kind }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_parsed_and_unknown_values_kept() {
        let at = DateTime::from_millis(1_481_042_465_702);
        let alarm = state(
            Some("cpu"),
            Some(&StateValue::Alarm),
            Some("Threshold crossed"),
            Some(&at),
        )
        .unwrap();
        assert_eq!(
            alarm,
            AlarmState {
                name: "cpu".to_owned(),
                state: AlarmStateValue::Alarm,
                reason: Some("Threshold crossed".to_owned()),
                updated_at_ms: Some(1_481_042_465_702),
            }
        );
        let odd = state(Some("x"), Some(&StateValue::from("MUTED")), Some(""), None).unwrap();
        assert_eq!(odd.state, AlarmStateValue::Other("MUTED".to_owned()));
        assert_eq!((odd.reason, odd.updated_at_ms), (None, None));
        assert_eq!(
            state(Some("y"), None, None, None).unwrap().state,
            AlarmStateValue::Other(String::new())
        );
        assert_eq!(state(None, Some(&StateValue::Ok), None, None), None);
        assert_eq!(state(Some(""), Some(&StateValue::Ok), None, None), None);
    }

    #[test]
    fn state_values_round_trip() {
        for value in ["OK", "ALARM", "INSUFFICIENT_DATA", "SOMETHING_NEW"] {
            assert_eq!(AlarmStateValue::parse(value).as_str(), value);
        }
        assert_eq!(AlarmStateValue::parse("ALARM"), AlarmStateValue::Alarm);
        assert_eq!(
            AlarmStateValue::parse("ok"),
            AlarmStateValue::Other("ok".to_owned())
        );
    }

    #[test]
    fn errors_are_classified_by_code() {
        use aws_sdk_cloudwatch::error::ErrorMetadata;
        use aws_sdk_cloudwatch::operation::describe_alarms::DescribeAlarmsError;
        // The classification, as the kind's Debug (AlarmErrorKind has no PartialEq: it is an error).
        let check = |code: &str, message: Option<&str>, want: &str| {
            let mut meta = ErrorMetadata::builder().code(code);
            if let Some(message) = message {
                meta = meta.message(message);
            }
            let err = sdk_error(
                "DescribeAlarms",
                SdkError::service_error(DescribeAlarmsError::generic(meta.build()), ()),
            );
            assert_eq!(format!("{:?}", err.kind), want, "{code}");
        };
        // CloudWatch's own throttling code (the query protocol's, which the CBOR answers keep).
        check("Throttling", Some("Rate exceeded"), "Throttled");
        check("ThrottlingException", None, "Throttled");
        check(
            "InvalidNextToken",
            Some("The service couldn't process the token."),
            r#"Rejected { code: "InvalidNextToken", message: "The service couldn't process the token." }"#,
        );
        check(
            "InvalidParameterValue",
            None,
            r#"Rejected { code: "InvalidParameterValue", message: "no message" }"#,
        );
        check("AccessDenied", Some("m"), r#"Other("AccessDenied: m")"#);
        let err = sdk_error(
            "DescribeAlarms",
            SdkError::service_error(
                DescribeAlarmsError::generic(ErrorMetadata::builder().code("Throttling").build()),
                (),
            ),
        );
        assert_eq!(err.to_string(), "CloudWatch DescribeAlarms failed: throttled");
    }

    #[test]
    fn names_are_asked_once_in_order() {
        let names = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            unique(&names(&["b", "a", "b", "c", "a"])),
            names(&["b", "a", "c"])
        );
    }
}
