//! The built-in ECS simulator's flags, shared by `blox server --ecs sim` and `blox up`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use blox_sim::{Clock, Faults, Rates, Scenario, SimConfig, SimOptions, Simulator, ThrottleConfig};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct SimArgs {
    /// The simulated account built on first start: `demo` (3 clusters, 21 instances, tasks on
    /// them), `scale` (sized by --sim-clusters/--sim-instances/--sim-tasks) or `empty`.
    #[arg(long, env = "BLOX_SIM_SCENARIO", default_value = "demo")]
    pub sim_scenario: String,
    /// Clusters of the `scale` scenario.
    #[arg(long, env = "BLOX_SIM_CLUSTERS", default_value_t = 10)]
    pub sim_clusters: usize,
    /// Container instances of the `scale` scenario.
    #[arg(long, env = "BLOX_SIM_INSTANCES", default_value_t = 1_000)]
    pub sim_instances: usize,
    /// Tasks of the `scale` scenario.
    #[arg(long, env = "BLOX_SIM_TASKS", default_value_t = 10_000)]
    pub sim_tasks: usize,
    /// Churn: `light` (something happens every few seconds), `none`, or about N ECS events per
    /// second of task churn (e.g. `1000`).
    #[arg(long, env = "BLOX_SIM_CHURN", default_value = "light")]
    pub sim_churn: String,
    /// Faults on the event path, e.g. `drop=0.01,duplicate=0.05,reorder=0.1,window=2s,delay=500ms`.
    #[arg(long, env = "BLOX_SIM_FAULTS", default_value = "")]
    pub sim_faults: String,
    /// ECS throttling per API family (list, describe, launch, modify) as `FAMILY=BURST/RATE` or
    /// `FAMILY=off`, overriding the ECS-like defaults (e.g. `launch=20/20,describe=off`).
    #[arg(long, env = "BLOX_SIM_THROTTLE", default_value = "")]
    pub sim_throttle: String,
    /// How long tasks take between lifecycle steps: `provisioning` (PROVISIONING → PENDING),
    /// `pending` (PENDING → RUNNING), `stopping` (stop asked → STOPPED) and `retention` (how long a
    /// STOPPED task stays described), e.g. `pending=5s,stopping=30s`.
    #[arg(long, env = "BLOX_SIM_LIFECYCLE", default_value = "")]
    pub sim_lifecycle: String,
    /// Probability that a started task fails before RUNNING (CannotPullContainerError).
    #[arg(long, env = "BLOX_SIM_START_FAILURE", default_value_t = 0.0)]
    pub sim_start_failure: f64,
    /// Seed of every random choice of the simulator.
    #[arg(long, env = "BLOX_SIM_SEED", default_value_t = 1)]
    pub sim_seed: u64,
    /// Keep the simulated account in this file across restarts.
    #[arg(long, env = "BLOX_SIM_STATE")]
    pub sim_state: Option<PathBuf>,
}

impl SimArgs {
    fn scenario(&self) -> Result<Option<Scenario>> {
        let rates = match self.sim_churn.as_str() {
            "light" => Rates::light(),
            "none" => Rates::default(),
            n => {
                let per_second: f64 = n
                    .parse()
                    .ok()
                    .filter(|r: &f64| r.is_finite() && *r >= 0.0)
                    .with_context(|| {
                        format!("--sim-churn must be light, none or events per second, not {n:?}")
                    })?;
                Rates::task_churn(per_second)
            }
        };
        let scenario = match self.sim_scenario.as_str() {
            "demo" => Scenario::demo(),
            "scale" => Scenario::scale(
                self.sim_clusters,
                self.sim_instances,
                self.sim_tasks,
                Rates::default(),
            ),
            "empty" => return Ok(None),
            other => bail!("--sim-scenario must be demo, scale or empty, not {other:?}"),
        };
        Ok(Some(Scenario { rates, ..scenario }))
    }

    /// Opens (or restores) the simulated account; the caller runs [`Simulator::run`].
    pub fn open(&self) -> Result<(Simulator, bool)> {
        let mut throttle = ThrottleConfig::default();
        throttle
            .parse_overrides(&self.sim_throttle)
            .map_err(|e| anyhow::anyhow!("--sim-throttle: {e}"))?;
        if !(0.0..=1.0).contains(&self.sim_start_failure) {
            bail!("--sim-start-failure must be a probability between 0 and 1");
        }
        let faults = Faults::parse(&self.sim_faults).map_err(|e| anyhow::anyhow!("--sim-faults: {e}"))?;
        let scenario = self.scenario()?;
        let mut config = SimConfig {
            start_failure: self.sim_start_failure,
            throttle,
            ..SimConfig::default()
        };
        parse_lifecycle(&self.sim_lifecycle, &mut config)
            .map_err(|e| anyhow::anyhow!("--sim-lifecycle: {e}"))?;
        let options = SimOptions {
            config,
            seed: self.sim_seed,
            faults,
            churn: scenario.is_some() && self.sim_churn != "none",
            scenario,
            state_file: self.sim_state.clone(),
            save_every: Duration::from_secs(30),
            ..SimOptions::default()
        };
        Simulator::open(options, Clock::Wall).context("starting the ECS simulator")
    }
}

/// Applies `NAME=DURATION` pairs to the simulator's lifecycle delays.
fn parse_lifecycle(spec: &str, config: &mut SimConfig) -> Result<(), String> {
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected NAME=DURATION, e.g. pending=5s"))?;
        let duration = humantime::parse_duration(value.trim())
            .map_err(|e| format!("{name}: {value:?}: {e} (write durations like 500ms, 5s, 1h)"))?;
        let ms = u64::try_from(duration.as_millis()).map_err(|_| format!("{name}: too long"))?;
        let field = match name.trim() {
            "provisioning" => &mut config.provisioning_ms,
            "pending" => &mut config.pending_ms,
            "stopping" => &mut config.stopping_ms,
            "retention" => &mut config.stopped_task_retention_ms,
            other => {
                return Err(format!(
                    "{other:?}: unknown step (provisioning, pending, stopping, retention)"
                ));
            }
        };
        *field = ms;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_specs_parse() {
        let check = |spec: &str, want: Result<(u64, u64, u64, u64), &str>| {
            let mut c = SimConfig::default();
            let got = parse_lifecycle(spec, &mut c).map(|()| {
                (
                    c.provisioning_ms,
                    c.pending_ms,
                    c.stopping_ms,
                    c.stopped_task_retention_ms,
                )
            });
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{spec}"),
                (Err(e), Err(fragment)) => assert!(e.contains(fragment), "{spec}: {e}"),
                (got, want) => panic!("{spec}: got {got:?}, want {want:?}"),
            }
        };
        let d = SimConfig::default();
        check(
            "",
            Ok((
                d.provisioning_ms,
                d.pending_ms,
                d.stopping_ms,
                d.stopped_task_retention_ms,
            )),
        );
        check(
            "provisioning=0s, pending=5s,stopping=30s,retention=2m",
            Ok((0, 5_000, 30_000, 120_000)),
        );
        check("pending", Err("expected NAME=DURATION"));
        check("pending=soon", Err("write durations like"));
        check("running=1s", Err("unknown step"));
    }
}
