//! Set-up shared by the tests that run the daemon scheduler against the simulator.

use std::time::Duration;

use blox_sim::{Clock, Ecs, SimConfig, SimContainer, SimOptions, Simulator, ThrottleConfig};

/// One essential container, `agent`, of 128 CPU units and `memory` MiB.
pub fn container(memory: i64) -> Vec<SimContainer> {
    vec![SimContainer {
        name: "agent".into(),
        cpu: 128,
        memory: Some(memory),
        essential: true,
        host_ports: vec![],
        health_check: None,
        fault: None,
    }]
}

/// A wall-clock simulator (seed 7) whose tasks stay PENDING for 300 ms, with `throttle`.
pub fn simulator(throttle: ThrottleConfig) -> Simulator {
    let config = SimConfig {
        throttle,
        pending_ms: 300,
        ..SimConfig::default()
    };
    let options = SimOptions {
        config: config.clone(),
        receive_wait: Duration::from_millis(200),
        ..SimOptions::default()
    };
    Simulator::new(Ecs::new(config, 7), Clock::Wall, options)
}
