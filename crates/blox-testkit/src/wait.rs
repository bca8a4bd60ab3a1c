use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often [`wait_until`] checks: short enough not to slow tests, long enough not to load the
/// system under test with checks.
const POLL: Duration = Duration::from_millis(25);

/// Checks `condition` every 25 ms until it holds; panics naming `what` and the time waited when
/// `deadline` passes first. Tests synchronise with this, never with sleeps.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return;
        }
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            panic!("timed out after {elapsed:?} (deadline {deadline:?}) waiting until {what}");
        }
        tokio::time::sleep(POLL.min(deadline - elapsed)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let calls = AtomicU32::new(0);
        wait_until("the third check", Duration::from_secs(5), || async {
            calls.fetch_add(1, Ordering::SeqCst) >= 2
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting until never")]
    async fn panics_at_the_deadline() {
        wait_until("never", Duration::from_millis(60), || async { false }).await;
    }
}
