//! CloudWatch alarms for the simulator: their states are set by hand (a test, or whoever drives
//! `blox up`) and read through [`AlarmReader`], as a deployment reads CloudWatch's.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use blox_aws::{AlarmError, AlarmReader, AlarmState, AlarmStateValue};

use crate::live::Clock;

/// Named alarms and their states. Clones share the alarms.
#[derive(Debug, Clone)]
pub struct SimAlarms {
    alarms: Arc<RwLock<HashMap<String, AlarmState>>>,
    /// Stamps state changes (give it the simulator's clock, so that they line up with its events).
    clock: Clock,
}

impl SimAlarms {
    pub fn new(clock: Clock) -> SimAlarms {
        SimAlarms {
            alarms: Arc::default(),
            clock,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, AlarmState>> {
        self.alarms.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, AlarmState>> {
        self.alarms.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the alarm or sets its state, as SetAlarmState does (which also needs a reason).
    pub fn set_state(&self, name: impl Into<String>, state: AlarmStateValue, reason: impl Into<String>) {
        let name = name.into();
        let alarm = AlarmState {
            name: name.clone(),
            state,
            reason: Some(reason.into()),
            updated_at_ms: Some(self.clock.now_ms()),
        };
        tracing::debug!(alarm = %name, state = %alarm.state, "simulated alarm set");
        self.write().insert(name, alarm);
    }

    /// Deletes the alarm; returns whether there was one.
    pub fn remove(&self, name: &str) -> bool {
        self.write().remove(name).is_some()
    }
}

#[async_trait]
impl AlarmReader for SimAlarms {
    async fn alarm_states(&self, names: &[String]) -> Result<Vec<AlarmState>, AlarmError> {
        let alarms = self.read();
        let mut seen = HashSet::with_capacity(names.len());
        Ok(names
            .iter()
            .filter(|name| seen.insert(name.as_str()))
            .filter_map(|name| alarms.get(name).cloned())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn names(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn set_states_are_read_in_asked_order_and_unknown_names_are_absent() {
        let clock = Clock::manual(1_000);
        let alarms = SimAlarms::new(clock.clone());
        assert!(alarms.alarm_states(&names(&["cpu"])).await.unwrap().is_empty());

        alarms.set_state("cpu", AlarmStateValue::Ok, "fine");
        alarms.set_state("5xx", AlarmStateValue::InsufficientData, "no data");
        let states = alarms
            .alarm_states(&names(&["5xx", "nope", "cpu", "5xx"]))
            .await
            .unwrap();
        assert_eq!(
            states,
            [
                AlarmState {
                    name: "5xx".to_owned(),
                    state: AlarmStateValue::InsufficientData,
                    reason: Some("no data".to_owned()),
                    updated_at_ms: Some(1_000),
                },
                AlarmState {
                    name: "cpu".to_owned(),
                    state: AlarmStateValue::Ok,
                    reason: Some("fine".to_owned()),
                    updated_at_ms: Some(1_000),
                },
            ]
        );

        // A clone shares the alarms; a change is stamped with the clock's time.
        clock.advance(Duration::from_secs(5));
        alarms
            .clone()
            .set_state("cpu", AlarmStateValue::Alarm, "CPU above 90%");
        let cpu = alarms.alarm_states(&names(&["cpu"])).await.unwrap();
        assert_eq!(cpu[0].state, AlarmStateValue::Alarm);
        assert_eq!(cpu[0].reason.as_deref(), Some("CPU above 90%"));
        assert_eq!(cpu[0].updated_at_ms, Some(6_000));

        assert!(alarms.remove("cpu"));
        assert!(!alarms.remove("cpu"));
        let left = alarms.alarm_states(&names(&["cpu", "5xx"])).await.unwrap();
        assert_eq!(left.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["5xx"]);
        assert!(alarms.alarm_states(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn alarms_are_shared_across_threads() {
        let alarms = SimAlarms::new(Clock::manual(0));
        std::thread::scope(|s| {
            for i in 0..4 {
                let alarms = alarms.clone();
                s.spawn(move || alarms.set_state(format!("a{i}"), AlarmStateValue::Ok, "r"));
            }
        });
        let all = names(&["a0", "a1", "a2", "a3"]);
        let states = alarms.alarm_states(&all).await.unwrap();
        assert_eq!(states.len(), 4);
    }
}
