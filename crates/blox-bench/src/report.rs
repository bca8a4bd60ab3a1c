//! The figures a run produces, the machine it ran on, and how both are printed and saved.

use std::path::Path;

use anyhow::{Context as _, Result};
use serde::Serialize;

/// What a figure is compared with.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    fn met(self, value: f64) -> bool {
        match self {
            Goal::AtLeast(goal) => value >= goal,
            Goal::AtMost(goal) => value <= goal,
        }
    }

    fn render(self, value: f64) -> String {
        let (sign, goal) = match self {
            Goal::AtLeast(goal) => ("≥", goal),
            Goal::AtMost(goal) => ("≤", goal),
        };
        let verdict = if self.met(value) { "met" } else { "MISSED" };
        format!("{sign} {} ({verdict})", number(goal))
    }
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: String,
    pub figure: String,
    pub value: f64,
    pub unit: String,
    pub goal: Option<Goal>,
    /// Whether `value` meets `goal`, when there is one.
    pub goal_met: Option<bool>,
}

/// The machine a run measured: figures mean little without it.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_mib: u64,
    pub kernel: String,
    /// `release` or `debug`: a debug build's figures are not the service's.
    pub build: &'static str,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| {
                line.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim())
            })
            .unwrap_or("unknown")
            .to_owned();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| format!("Linux {}", k.trim()))
            .unwrap_or_else(|_| std::env::consts::OS.to_owned());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            memory_mib: memory_kib / 1024,
            kernel,
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} CPUs ({}), {} MiB memory, {}, {} build",
            self.cpus, self.cpu_model, self.memory_mib, self.kernel, self.build
        )
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    /// Records a figure and shows it at once on stderr, so a long run shows progress.
    pub fn add(&mut self, workload: &str, figure: &str, value: f64, unit: &str, goal: Option<Goal>) {
        eprintln!("  {workload} | {figure}: {} {unit}", number(value));
        self.rows.push(Row {
            workload: workload.to_owned(),
            figure: figure.to_owned(),
            value,
            unit: unit.to_owned(),
            goal,
            goal_met: goal.map(|g| g.met(value)),
        });
    }

    pub fn table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| {
                vec![
                    row.workload.clone(),
                    row.figure.clone(),
                    number(row.value),
                    row.unit.clone(),
                    row.goal.map(|g| g.render(row.value)).unwrap_or_default(),
                ]
            })
            .collect();
        blox_client::table::render(&["WORKLOAD", "FIGURE", "VALUE", "UNIT", "GOAL"], &rows)
    }

    pub fn write_json(&self, path: &Path, machine: &Machine, parameters: &impl Serialize) -> Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        // A struct rather than `json!`, so that fields keep this order in the file.
        #[derive(Serialize)]
        struct Document<'a, P> {
            machine: &'a Machine,
            parameters: &'a P,
            figures: &'a [Row],
        }
        let text = serde_json::to_string_pretty(&Document {
            machine,
            parameters,
            figures: &self.rows,
        })?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

/// A number as people read it: integers without decimals, small values with three significant digits.
pub fn number(value: f64) -> String {
    if (value.fract() == 0.0 && value.abs() < 1e15) || value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_goals_render() {
        assert_eq!(number(100_000.0), "100000");
        assert_eq!(number(0.4567), "0.457");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(Goal::AtMost(1.0).render(0.5), "≤ 1 (met)");
        assert_eq!(Goal::AtLeast(100.0).render(5.0), "≥ 100 (MISSED)");
    }
}
