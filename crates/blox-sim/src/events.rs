//! The event path of the simulator: EventBridge delivering ECS events into an SQS queue, with the
//! faults real delivery has (at-least-once, best-effort order, occasional loss) injectable on purpose.
//! Receive and delete behave like SQS: a received message is invisible until deleted or until its
//! visibility timeout passes, then it is delivered again. Time is an argument (milliseconds).

use std::collections::{BTreeMap, HashMap, VecDeque};

use blox_aws::{Message, QueueDepth};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Faults injected between an event's emission and its arrival in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// Probability that an event never arrives.
    pub drop: f64,
    /// Probability that an event arrives twice.
    pub duplicate: f64,
    /// Probability that an event is held back by up to `reorder_window_ms`, so that later events
    /// overtake it.
    pub reorder: f64,
    pub reorder_window_ms: u64,
    /// Latency added to every event (EventBridge's delivery delay).
    pub delay_ms: u64,
}

impl Default for Faults {
    /// None: every event arrives once, in order, at once.
    fn default() -> Self {
        Faults {
            drop: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_window_ms: 2_000,
            delay_ms: 0,
        }
    }
}

impl Faults {
    /// Parses `drop=0.01,duplicate=0.05,reorder=0.1,window=2s,delay=500ms` (any subset).
    pub fn parse(spec: &str) -> Result<Faults, String> {
        let mut faults = Faults::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected NAME=VALUE"))?;
            let probability = || -> Result<f64, String> {
                let p: f64 = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name}: {value:?} is not a number"))?;
                if (0.0..=1.0).contains(&p) {
                    Ok(p)
                } else {
                    Err(format!("{name}: {value:?} is not a probability between 0 and 1"))
                }
            };
            let millis = || -> Result<u64, String> {
                let v = value.trim();
                let (digits, scale) = if let Some(ms) = v.strip_suffix("ms") {
                    (ms, 1)
                } else if let Some(s) = v.strip_suffix('s') {
                    (s, 1_000)
                } else {
                    (v, 1)
                };
                digits
                    .parse::<u64>()
                    .map(|n| n * scale)
                    .map_err(|_| format!("{name}: {value:?} is not a duration such as 500ms or 2s"))
            };
            match name.trim() {
                "drop" => faults.drop = probability()?,
                "duplicate" => faults.duplicate = probability()?,
                "reorder" => faults.reorder = probability()?,
                "window" => faults.reorder_window_ms = millis()?,
                "delay" => faults.delay_ms = millis()?,
                other => {
                    return Err(format!(
                        "{other:?}: unknown fault (drop, duplicate, reorder, window, delay)"
                    ));
                }
            }
        }
        Ok(faults)
    }

    pub fn is_none(&self) -> bool {
        self.drop == 0.0 && self.duplicate == 0.0 && self.reorder == 0.0 && self.delay_ms == 0
    }
}

#[derive(Debug, Clone)]
struct Queued {
    id: String,
    body: String,
    sent_at_ms: u64,
}

/// What the queue did, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub emitted: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub delivered: u64,
    pub redelivered: u64,
    pub deleted: u64,
}

/// An SQS queue fed by EventBridge, in memory.
#[derive(Debug)]
pub struct EventQueue {
    faults: Faults,
    rng: ChaCha8Rng,
    visibility_timeout_ms: u64,
    /// On its way: (arrival time, sequence) → message.
    arriving: BTreeMap<(u64, u64), Queued>,
    visible: VecDeque<Queued>,
    /// Receipt → (message, when it is visible again as (time, receive sequence)).
    in_flight: HashMap<String, (Queued, (u64, u64))>,
    /// The same by when they are visible again: redelivery in receive order, whatever the map's
    /// (per-process random) order, so that the same seed gives the same delivery.
    expiry: BTreeMap<(u64, u64), String>,
    seq: u64,
    stats: QueueStats,
}

impl EventQueue {
    pub fn new(faults: Faults, seed: u64, visibility_timeout_ms: u64) -> EventQueue {
        EventQueue {
            faults,
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_e7e7),
            visibility_timeout_ms,
            arriving: BTreeMap::new(),
            visible: VecDeque::new(),
            in_flight: HashMap::new(),
            expiry: BTreeMap::new(),
            seq: 0,
            stats: QueueStats::default(),
        }
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// From now on, events arrive once, in order (what was already on its way still arrives as
    /// planned; see [`EventQueue::flush`]).
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// An event emitted at `now_ms`.
    pub fn publish(&mut self, body: String, now_ms: u64) {
        self.stats.emitted += 1;
        let f = &self.faults;
        if f.drop > 0.0 && self.rng.random_bool(f.drop) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if f.duplicate > 0.0 && self.rng.random_bool(f.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut arrival = now_ms + self.faults.delay_ms;
            if self.faults.reorder > 0.0 && self.rng.random_bool(self.faults.reorder) {
                self.stats.reordered += 1;
                arrival += self.rng.random_range(0..=self.faults.reorder_window_ms);
            }
            self.seq += 1;
            let message = Queued {
                id: format!("sim-{:016x}", self.seq),
                body: body.clone(),
                sent_at_ms: now_ms,
            };
            self.arriving.insert((arrival, self.seq), message);
        }
    }

    /// Moves what has arrived by `now_ms` into the queue, and makes in-flight messages whose
    /// visibility timeout passed visible again.
    pub fn release(&mut self, now_ms: u64) {
        while let Some(entry) = self.arriving.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            self.visible.push_back(entry.remove());
        }
        while let Some(entry) = self.expiry.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            let receipt = entry.remove();
            if let Some((message, _)) = self.in_flight.remove(&receipt) {
                self.stats.redelivered += 1;
                self.visible.push_back(message);
            }
        }
    }

    /// Everything on its way arrives now, whatever its planned delay.
    pub fn flush(&mut self) {
        while let Some((_, message)) = self.arriving.pop_first() {
            self.visible.push_back(message);
        }
    }

    /// Up to `max` visible messages (SQS: at most 10), each with a fresh receipt.
    pub fn receive(&mut self, max: usize, now_ms: u64) -> Vec<Message> {
        self.release(now_ms);
        let n = max.min(self.visible.len());
        let mut out = Vec::with_capacity(n);
        for message in self.visible.drain(..n) {
            self.seq += 1;
            let receipt = format!("{}#{}", message.id, self.seq);
            out.push(Message {
                id: message.id.clone(),
                receipt: receipt.clone(),
                body: message.body.clone(),
                sent_at_ms: Some(message.sent_at_ms),
            });
            let due = (now_ms + self.visibility_timeout_ms, self.seq);
            self.expiry.insert(due, receipt.clone());
            self.in_flight.insert(receipt, (message, due));
        }
        self.stats.delivered += out.len() as u64;
        out
    }

    /// Deletes by receipt; returns the receipts that are no longer valid (already deleted, or
    /// redelivered since).
    pub fn delete(&mut self, receipts: &[String]) -> Vec<String> {
        let mut failed = Vec::new();
        for receipt in receipts {
            if let Some((_, due)) = self.in_flight.remove(receipt) {
                self.expiry.remove(&due);
                self.stats.deleted += 1;
            } else {
                failed.push(receipt.clone());
            }
        }
        failed
    }

    pub fn depth(&self) -> QueueDepth {
        QueueDepth {
            visible: self.visible.len() as u64,
            in_flight: self.in_flight.len() as u64,
        }
    }

    /// Messages not yet arrived, visible or in flight: zero means everything emitted was consumed.
    pub fn pending(&self) -> usize {
        self.arriving.len() + self.visible.len() + self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(messages: &[Message]) -> Vec<&str> {
        messages.iter().map(|m| m.body.as_str()).collect()
    }

    #[test]
    fn without_faults_events_arrive_once_in_order() {
        let mut q = EventQueue::new(Faults::default(), 1, 30_000);
        for n in 0..5 {
            q.publish(format!("e{n}"), 100);
        }
        let got = q.receive(10, 100);
        assert_eq!(bodies(&got), ["e0", "e1", "e2", "e3", "e4"]);
        let receipts: Vec<String> = got.iter().map(|m| m.receipt.clone()).collect();
        assert!(q.delete(&receipts).is_empty());
        assert_eq!(q.pending(), 0);
        assert_eq!(q.delete(&receipts), receipts, "a receipt works once");
    }

    #[test]
    fn an_undeleted_message_comes_back_after_its_visibility_timeout() {
        let mut q = EventQueue::new(Faults::default(), 1, 1_000);
        q.publish("e".into(), 0);
        let first = q.receive(10, 0);
        assert!(q.receive(10, 999).is_empty());
        let again = q.receive(10, 1_000);
        assert_eq!(bodies(&again), ["e"]);
        assert_ne!(first[0].receipt, again[0].receipt);
        assert_eq!(q.delete(&[first[0].receipt.clone()]).len(), 1, "stale receipt");
        assert!(q.delete(&[again[0].receipt.clone()]).is_empty());
        assert_eq!(q.stats().redelivered, 1);
    }

    #[test]
    fn delay_holds_events_until_they_arrive_and_flush_delivers_them() {
        let faults = Faults {
            delay_ms: 500,
            ..Faults::default()
        };
        let mut q = EventQueue::new(faults, 1, 30_000);
        q.publish("e".into(), 0);
        assert!(q.receive(10, 499).is_empty());
        assert_eq!(bodies(&q.receive(10, 500)), ["e"]);
        q.publish("f".into(), 600);
        q.flush();
        assert_eq!(bodies(&q.receive(10, 600)), ["f"]);
    }

    #[test]
    fn faults_drop_duplicate_and_reorder_at_their_rates_deterministically() {
        let faults = Faults::parse("drop=0.1,duplicate=0.2,reorder=0.3,window=1s").unwrap();
        let run = |seed| {
            let mut q = EventQueue::new(faults.clone(), seed, 30_000);
            for n in 0..10_000u64 {
                q.publish(format!("{n}"), n);
            }
            q.flush();
            let got: Vec<String> = q
                .receive(usize::MAX, 20_000)
                .into_iter()
                .map(|m| m.body)
                .collect();
            (got, q.stats())
        };
        let (a, stats) = run(7);
        assert_eq!(run(7).0, a, "same seed, same delivery");
        assert_ne!(run(8).0, a);
        let near = |n: u64, want: u64| n.abs_diff(want) < want / 5;
        assert!(near(stats.dropped, 1_000), "{stats:?}");
        assert!(near(stats.duplicated, 1_800), "{stats:?}");
        assert_eq!(a.len() as u64, 10_000 - stats.dropped + stats.duplicated);
        let out_of_order = a
            .windows(2)
            .filter(|w| w[0].parse::<u64>().unwrap() > w[1].parse::<u64>().unwrap())
            .count();
        assert!(out_of_order > 100, "{out_of_order}");
    }

    #[test]
    fn fault_specs_parse() {
        let check = |spec: &str, want: Result<Faults, &str>| match (Faults::parse(spec), want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{spec}"),
            (Err(e), Err(fragment)) => assert!(e.contains(fragment), "{spec}: {e}"),
            (got, want) => panic!("{spec}: got {got:?}, want {want:?}"),
        };
        check("", Ok(Faults::default()));
        check(
            "drop=0.5, delay=2s, window=300ms",
            Ok(Faults {
                drop: 0.5,
                delay_ms: 2_000,
                reorder_window_ms: 300,
                ..Faults::default()
            }),
        );
        check("drop=2", Err("not a probability"));
        check("drop=x", Err("not a number"));
        check("delay=soon", Err("not a duration"));
        check("lose=0.1", Err("unknown fault"));
        check("drop", Err("expected NAME=VALUE"));
    }
}
