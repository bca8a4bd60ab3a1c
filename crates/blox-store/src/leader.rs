//! Leadership: which replica runs the activities that only one may run at a time (ingestion,
//! reconciliation, the scheduler's executor), and the fence that keeps a former leader from writing.
//!
//! A replica acquires a [`Term`]; the term's store makes every write conditional on the term still
//! holding (in etcd, in the same transaction as the write), and its [`LeaderGuard`] says, before any
//! call to ECS, whether the term holds by the replica's own clock. This is the one part of the store
//! that reads a clock: a lease is time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{Store, StoreError};

/// Who leads, as a replica last heard it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The leader's replica id.
    pub id: String,
    /// When it became leader, in ms since the Unix epoch (by its clock).
    pub since_ms: u64,
}

/// Whether a leadership term still holds. Cheap to clone; every clone sees the same term.
#[derive(Debug, Clone)]
pub struct LeaderGuard {
    /// `None`: the sole replica of a one-process store, whose term never ends.
    term: Option<Arc<GuardState>>,
}

#[derive(Debug)]
struct GuardState {
    start: Instant,
    /// Past this (ms after `start`), the lease may have expired on the server: the term is over
    /// whatever the server says later.
    deadline_ms: AtomicU64,
    lost: watch::Sender<bool>,
}

impl LeaderGuard {
    /// The term of a replica that is alone with its store: it always holds.
    pub fn sole() -> LeaderGuard {
        LeaderGuard { term: None }
    }

    /// A term that holds until `deadline`, unless extended or lost before.
    pub fn until(deadline: Instant) -> LeaderGuard {
        let start = Instant::now();
        let (lost, _) = watch::channel(false);
        let guard = LeaderGuard {
            term: Some(Arc::new(GuardState {
                start,
                deadline_ms: AtomicU64::new(0),
                lost,
            })),
        };
        guard.extend(deadline);
        guard
    }

    /// Whether the term holds now: not lost, and its lease's deadline not passed.
    pub fn holds(&self) -> bool {
        match &self.term {
            None => true,
            Some(term) => {
                !*term.lost.borrow()
                    && (term.start.elapsed().as_millis() as u64) < term.deadline_ms.load(Ordering::Acquire)
            }
        }
    }

    /// `Err(StoreError::Fenced)` once the term no longer holds: what a leader's activity asks before
    /// each call to ECS (a leader paused past its lease must not act on what it decided before).
    pub fn check(&self) -> Result<(), StoreError> {
        if self.holds() {
            Ok(())
        } else {
            Err(StoreError::Fenced)
        }
    }

    /// Moves the deadline to `deadline` (a renewal), never backwards.
    pub fn extend(&self, deadline: Instant) {
        if let Some(term) = &self.term {
            let ms = deadline.saturating_duration_since(term.start).as_millis() as u64;
            term.deadline_ms.fetch_max(ms, Ordering::AcqRel);
        }
    }

    /// Ends the term now (the lease is gone, or the replica steps down).
    pub fn lose(&self) {
        if let Some(term) = &self.term {
            term.lost.send_replace(true);
        }
    }

    /// Resolves once the term no longer holds (never for a sole replica).
    pub async fn lost(&self) {
        let Some(term) = &self.term else {
            return std::future::pending().await;
        };
        let mut lost = term.lost.subscribe();
        loop {
            if !self.holds() {
                return;
            }
            let deadline = term.start + Duration::from_millis(term.deadline_ms.load(Ordering::Acquire));
            tokio::select! {
                _ = lost.changed() => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

/// What a leader's writes are conditional on: its term's token in the store, and the guard.
#[derive(Debug, Clone)]
pub struct Fence {
    /// The leadership key's creation revision (etcd's), unique to the term.
    pub token: i64,
    pub guard: LeaderGuard,
}

/// A leadership term.
pub struct Term {
    /// The store to write through while leading: every write is fenced on the term.
    pub store: Arc<dyn Store>,
    pub guard: LeaderGuard,
    pub info: LeaderInfo,
}

/// How replicas agree on one leader.
#[async_trait]
pub trait Leadership: Send + Sync + 'static {
    /// This replica's id.
    fn replica_id(&self) -> &str;

    /// The lease's time to live: how long a leader that stops renewing keeps leading at most.
    fn lease_ttl(&self) -> Duration;

    /// Waits until this replica leads, then returns its term. Call again after a term is lost.
    async fn acquire(&self) -> Result<Term, StoreError>;

    /// Gives leadership up (on shutdown), so that another replica takes over without waiting for
    /// the lease to expire.
    async fn resign(&self, term: &Term);

    /// The current leader as this replica knows it, updated as it changes.
    fn leader(&self) -> watch::Receiver<Option<LeaderInfo>>;

    /// Whether other replicas share the store (so that this replica's copy may trail theirs).
    fn shared(&self) -> bool {
        true
    }
}

/// The leadership of a replica alone with its store (memory, redb): it leads from the start, and for
/// good.
pub struct SoleLeadership {
    store: Arc<dyn Store>,
    id: String,
    ttl: Duration,
    leader: watch::Sender<Option<LeaderInfo>>,
    since_ms: u64,
}

impl SoleLeadership {
    pub fn new(store: Arc<dyn Store>, id: String, ttl: Duration, since_ms: u64) -> SoleLeadership {
        let (leader, _) = watch::channel(None);
        SoleLeadership {
            store,
            id,
            ttl,
            leader,
            since_ms,
        }
    }
}

#[async_trait]
impl Leadership for SoleLeadership {
    fn replica_id(&self) -> &str {
        &self.id
    }

    fn lease_ttl(&self) -> Duration {
        self.ttl
    }

    async fn acquire(&self) -> Result<Term, StoreError> {
        let info = LeaderInfo {
            id: self.id.clone(),
            since_ms: self.since_ms,
        };
        self.leader.send_replace(Some(info.clone()));
        Ok(Term {
            store: self.store.clone(),
            guard: LeaderGuard::sole(),
            info,
        })
    }

    async fn resign(&self, _term: &Term) {}

    fn shared(&self) -> bool {
        false
    }

    fn leader(&self) -> watch::Receiver<Option<LeaderInfo>> {
        self.leader.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_guard_holds_until_its_deadline_or_loss() {
        let sole = LeaderGuard::sole();
        assert!(sole.holds());
        let guard = LeaderGuard::until(Instant::now() + Duration::from_secs(10));
        assert!(guard.holds());
        guard.extend(Instant::now() + Duration::from_secs(5));
        assert!(guard.holds(), "a deadline never moves backwards");
        let clone = guard.clone();
        clone.lose();
        assert!(!guard.holds());
        tokio::time::timeout(Duration::from_secs(1), guard.lost())
            .await
            .expect("lost resolves at once once lost");
    }

    #[test]
    fn a_passed_deadline_ends_the_term() {
        let guard = LeaderGuard::until(Instant::now());
        assert!(!guard.holds());
    }
}
