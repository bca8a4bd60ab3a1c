//! The conformance suite against a backend whose sequence numbers and dead-letter ids have gaps,
//! between commits and within a batch (as numbers derived from a distributed store's revisions may):
//! the in-memory store behind a renumbering. The suite must hold it to the contract, not to one
//! backend's numbering; this keeps it from pinning the in-memory store's consecutive numbers again.
//!
//! The renumbering also reports an oldest resumable position strictly between the newest trimmed
//! change and the oldest retained one, which the contract allows.

use async_trait::async_trait;
use blox_model::ClusterName;
use blox_store::{
    Change, Expect, Filter, Key, Kind, LogBounds, MemStore, Outcome, Page, PageRequest, Record, Store,
    StoreError, StoreOptions, Write,
};
use tokio::sync::watch;

blox_store::conformance_tests!(async |options| (Gapped::new(options), ()));

/// The in-memory store, renumbered: its change `s` is `7 s + 5` (0 stays 0), its dead letter `i` is
/// `2 i + 1000`.
struct Gapped {
    inner: MemStore,
    head: watch::Sender<u64>,
}

const fn seq_out(seq: u64) -> u64 {
    if seq == 0 { 0 } else { 7 * seq + 5 }
}

/// The inner position of an outer one: the newest inner change whose outer seq is not after it.
const fn position_in(position: u64) -> u64 {
    if position < 12 { 0 } else { (position - 5) / 7 }
}

/// The inner seq of an outer one that must match exactly (`u64::MAX`, which no change has, when it is
/// no change's).
fn seq_in(seq: u64) -> u64 {
    let inner = position_in(seq);
    if inner != 0 && seq_out(inner) == seq {
        inner
    } else {
        u64::MAX
    }
}

fn id_out(id: u64) -> u64 {
    2 * id + 1000
}

fn id_in(id: u64) -> Option<u64> {
    (id >= 1000 && id.is_multiple_of(2)).then(|| (id - 1000) / 2)
}

fn record_out(record: Record) -> Record {
    Record {
        seq: seq_out(record.seq),
        ..record
    }
}

fn expect_in(expect: Expect) -> Expect {
    match expect {
        Expect::Absent => Expect::Absent,
        Expect::Seq(seq) => Expect::Seq(seq_in(seq)),
    }
}

impl Gapped {
    fn new(options: StoreOptions) -> Gapped {
        Gapped {
            inner: MemStore::new(options),
            head: watch::Sender::new(0),
        }
    }

    /// The bounds as reported: the oldest resumable position 3 after the newest trimmed change's.
    async fn bounds(&self) -> Result<LogBounds, StoreError> {
        let bounds = self.inner.log_bounds().await?;
        Ok(LogBounds {
            oldest_resumable: match bounds.oldest_resumable {
                0 => 0,
                trimmed => seq_out(trimmed) + 3,
            },
            head: seq_out(bounds.head),
        })
    }
}

#[async_trait]
impl Store for Gapped {
    async fn apply(&self, writes: Vec<Write>) -> Result<Vec<Outcome>, StoreError> {
        let inner: Vec<Write> = writes
            .iter()
            .cloned()
            .map(|write| match write {
                Write::Observe { doc, unchanged_since } => Write::Observe {
                    doc,
                    unchanged_since: position_in(unchanged_since),
                },
                Write::Delete {
                    key,
                    unchanged_since,
                    at_ms,
                } => Write::Delete {
                    key,
                    unchanged_since: position_in(unchanged_since),
                    at_ms,
                },
                Write::Put { doc, expect } => Write::Put {
                    doc,
                    expect: expect_in(expect),
                },
                Write::Remove { key, expect } => Write::Remove {
                    key,
                    expect: seq_in(expect),
                },
                other => other,
            })
            .collect();
        let outcomes = match self.inner.apply(inner.clone()).await {
            Ok(outcomes) => outcomes,
            Err(StoreError::Conflict { key, expected, found }) => {
                // Report the expectation as the caller gave it.
                let given = writes
                    .iter()
                    .zip(&inner)
                    .find_map(|(outer, inner)| match (outer, inner) {
                        (Write::Put { doc, expect }, Write::Put { expect: mapped, .. })
                            if doc.key == key && *mapped == expected =>
                        {
                            Some(*expect)
                        }
                        (Write::Remove { key: k, expect }, Write::Remove { expect: mapped, .. })
                            if *k == key && Expect::Seq(*mapped) == expected =>
                        {
                            Some(Expect::Seq(*expect))
                        }
                        _ => None,
                    })
                    .expect("the conflicting write is in the batch");
                return Err(StoreError::Conflict {
                    key,
                    expected: given,
                    found: found.map(seq_out),
                });
            }
            Err(other) => return Err(other),
        };
        let head = seq_out(self.inner.log_bounds().await?.head);
        self.head.send_if_modified(|published| {
            let changed = *published != head;
            *published = head;
            changed
        });
        Ok(outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Outcome::Written { seq } => Outcome::Written { seq: seq_out(seq) },
                Outcome::Deleted { seq } => Outcome::Deleted { seq: seq_out(seq) },
                Outcome::Parked { id } => Outcome::Parked { id: id_out(id) },
                other => other,
            })
            .collect())
    }

    async fn get(&self, key: &Key) -> Result<Option<Record>, StoreError> {
        Ok(self.inner.get(key).await?.map(record_out))
    }

    async fn list(&self, kind: Kind, filter: &Filter, page: PageRequest) -> Result<Page<Record>, StoreError> {
        let page = self.inner.list(kind, filter, page).await?;
        Ok(Page {
            items: page.items.into_iter().map(record_out).collect(),
            next: page.next,
        })
    }

    async fn ids(&self, kind: Kind, cluster: &ClusterName) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self
            .inner
            .ids(kind, cluster)
            .await?
            .into_iter()
            .map(|(id, seq)| (id, seq_out(seq)))
            .collect())
    }

    async fn clusters(&self, kind: Kind) -> Result<Vec<ClusterName>, StoreError> {
        self.inner.clusters(kind).await
    }

    async fn changes(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let bounds = self.bounds().await?;
        if after > bounds.head {
            return Err(StoreError::Future {
                requested: after,
                head: bounds.head,
            });
        }
        if after < bounds.oldest_resumable {
            return Err(StoreError::Compacted {
                requested: after,
                oldest_resumable: bounds.oldest_resumable,
            });
        }
        Ok(self
            .inner
            .changes(position_in(after), limit)
            .await?
            .into_iter()
            .map(|change| Change {
                seq: seq_out(change.seq),
                ..change
            })
            .collect())
    }

    async fn log_bounds(&self) -> Result<LogBounds, StoreError> {
        self.bounds().await
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    async fn dead_letters(&self, page: PageRequest) -> Result<Page<blox_store::DeadLetter>, StoreError> {
        let page = self.inner.dead_letters(page).await?;
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(|letter| blox_store::DeadLetter {
                    id: id_out(letter.id),
                    ..letter
                })
                .collect(),
            next: page.next,
        })
    }

    async fn remove_dead_letter(&self, id: u64) -> Result<bool, StoreError> {
        match id_in(id) {
            Some(id) => self.inner.remove_dead_letter(id).await,
            None => Ok(false),
        }
    }

    async fn count(&self, kind: Kind) -> Result<u64, StoreError> {
        self.inner.count(kind).await
    }
}
