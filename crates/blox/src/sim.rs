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
        let options = SimOptions {
            config: SimConfig {
                start_failure: self.sim_start_failure,
                throttle,
                ..SimConfig::default()
            },
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
