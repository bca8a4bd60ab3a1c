//! ECS's request throttling: a token bucket per API family, per account and region. A call takes one
//! token; an empty bucket answers `ThrottlingException`. Time is an argument (milliseconds).

use serde::{Deserialize, Serialize};

/// The API families that share a bucket. ECS publishes few numbers; these follow its documented
/// examples (cluster reads: bucket 50; task launches: 20 burst, 20 sustained; ~20 TPS per family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    /// ListClusters, ListContainerInstances, ListTasks.
    List,
    /// DescribeClusters, DescribeContainerInstances, DescribeTasks, DescribeTaskDefinition.
    Describe,
    /// StartTask.
    Launch,
    /// StopTask, UpdateContainerInstancesState, PutAttributes, Register/DeregisterContainerInstance,
    /// CreateCluster, RegisterTaskDefinition.
    Modify,
}

impl Family {
    pub const ALL: [Family; 4] = [Family::List, Family::Describe, Family::Launch, Family::Modify];

    pub fn name(self) -> &'static str {
        match self {
            Family::List => "list",
            Family::Describe => "describe",
            Family::Launch => "launch",
            Family::Modify => "modify",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One bucket's shape: `burst` tokens at most, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub burst: u32,
    pub per_second: f64,
}

impl Rate {
    pub const fn new(burst: u32, per_second: f64) -> Rate {
        Rate { burst, per_second }
    }
}

/// The buckets' shapes; `None` for a family means it is never throttled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThrottleConfig {
    pub rates: [Option<Rate>; 4],
}

impl Default for ThrottleConfig {
    /// ECS-like defaults.
    fn default() -> Self {
        ThrottleConfig {
            rates: [
                Some(Rate::new(50, 20.0)),
                Some(Rate::new(50, 20.0)),
                Some(Rate::new(20, 20.0)),
                Some(Rate::new(50, 20.0)),
            ],
        }
    }
}

impl ThrottleConfig {
    /// No throttling at all: for measuring the simulator itself and for deterministic tests.
    pub fn unlimited() -> ThrottleConfig {
        ThrottleConfig { rates: [None; 4] }
    }

    pub fn rate(&self, family: Family) -> Option<Rate> {
        self.rates[family.index()]
    }

    pub fn set(&mut self, family: Family, rate: Option<Rate>) {
        self.rates[family.index()] = rate;
    }

    /// Parses `family=BURST/RATE` pairs separated by commas (`launch=20/20,describe=50/20`), or
    /// `family=off`; families not named keep their current shape.
    pub fn parse_overrides(&mut self, spec: &str) -> Result<(), String> {
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected FAMILY=BURST/RATE or FAMILY=off"))?;
            let family = Family::ALL
                .into_iter()
                .find(|f| f.name() == name.trim())
                .ok_or_else(|| format!("{name:?}: unknown API family (list, describe, launch, modify)"))?;
            let rate = if value.trim() == "off" {
                None
            } else {
                let (burst, rate) = value
                    .split_once('/')
                    .ok_or_else(|| format!("{value:?}: expected BURST/RATE, e.g. 50/20"))?;
                let burst: u32 = burst
                    .trim()
                    .parse()
                    .map_err(|_| format!("{burst:?}: burst must be a whole number"))?;
                let per_second: f64 = rate
                    .trim()
                    .parse()
                    .map_err(|_| format!("{rate:?}: rate must be a number of calls per second"))?;
                if burst == 0 || per_second.is_nan() || per_second <= 0.0 {
                    return Err(format!("{value:?}: burst and rate must be positive"));
                }
                Some(Rate::new(burst, per_second))
            };
            self.set(family, rate);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    tokens: f64,
    updated_ms: Option<u64>,
}

/// The buckets' state.
#[derive(Debug, Clone, Default)]
pub struct Throttle {
    config: ThrottleConfig,
    buckets: [Bucket; 4],
    /// Calls answered (not throttled) per family, for the pagination-floor figures.
    calls: [u64; 4],
    throttled: [u64; 4],
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle {
            config,
            ..Throttle::default()
        }
    }

    pub fn config(&self) -> &ThrottleConfig {
        &self.config
    }

    /// Takes a token, or says in how many milliseconds one will be there.
    pub fn take(&mut self, family: Family, now_ms: u64) -> Result<(), u64> {
        let i = family.index();
        let Some(rate) = self.config.rates[i] else {
            self.calls[i] += 1;
            return Ok(());
        };
        let bucket = &mut self.buckets[i];
        let capacity = f64::from(rate.burst);
        bucket.tokens = match bucket.updated_ms {
            None => capacity,
            Some(then) => {
                let elapsed = now_ms.saturating_sub(then) as f64 / 1000.0;
                (bucket.tokens + elapsed * rate.per_second).min(capacity)
            }
        };
        bucket.updated_ms = Some(now_ms.max(bucket.updated_ms.unwrap_or(0)));
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            self.calls[i] += 1;
            Ok(())
        } else {
            self.throttled[i] += 1;
            let missing = 1.0 - bucket.tokens;
            Err(((missing / rate.per_second) * 1000.0).ceil().max(1.0) as u64)
        }
    }

    /// Calls answered per family since the start.
    pub fn calls(&self, family: Family) -> u64 {
        self.calls[family.index()]
    }

    /// Calls refused per family since the start.
    pub fn throttled(&self, family: Family) -> u64 {
        self.throttled[family.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut t = Throttle::new(ThrottleConfig::default());
        for _ in 0..20 {
            assert_eq!(t.take(Family::Launch, 1_000), Ok(()));
        }
        // Empty: the next token comes after 1/20 s.
        assert_eq!(t.take(Family::Launch, 1_000), Err(50));
        assert_eq!(t.take(Family::Launch, 1_050), Ok(()));
        assert_eq!(t.take(Family::Launch, 1_050), Err(50));
        // Other families have their own buckets.
        assert_eq!(t.take(Family::Describe, 1_050), Ok(()));
        // Refill is capped at the burst.
        for _ in 0..20 {
            assert_eq!(t.take(Family::Launch, 100_000), Ok(()));
        }
        assert!(t.take(Family::Launch, 100_000).is_err());
        assert_eq!(t.calls(Family::Launch), 41);
        assert_eq!(t.throttled(Family::Launch), 3);
    }

    #[test]
    fn unlimited_never_throttles() {
        let mut t = Throttle::new(ThrottleConfig::unlimited());
        for _ in 0..10_000 {
            assert_eq!(t.take(Family::Describe, 0), Ok(()));
        }
    }

    #[test]
    fn overrides_parse() {
        let check = |spec: &str, want: Result<[Option<Rate>; 4], &str>| {
            let mut c = ThrottleConfig::default();
            let got = c.parse_overrides(spec).map(|()| c.rates);
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{spec}"),
                (Err(e), Err(fragment)) => assert!(e.contains(fragment), "{spec}: {e}"),
                (got, want) => panic!("{spec}: got {got:?}, want {want:?}"),
            }
        };
        let d = ThrottleConfig::default().rates;
        check("", Ok(d));
        check(
            "launch=10/5, describe=off",
            Ok([d[0], None, Some(Rate::new(10, 5.0)), d[3]]),
        );
        check("launch", Err("expected FAMILY=BURST/RATE"));
        check("start=1/1", Err("unknown API family"));
        check("list=50", Err("expected BURST/RATE"));
        check("list=x/1", Err("burst must be a whole number"));
        check("list=1/y", Err("rate must be a number"));
        check("list=0/1", Err("must be positive"));
    }
}
