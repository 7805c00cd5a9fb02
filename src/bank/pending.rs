//! The retrievals a bank remembers until their feedback arrives: retrieval id -> the memories it
//! injected. Bounded (the oldest is forgotten first) and expiring; a retrieval is forgotten once
//! its feedback has been applied, so feedback for one retrieval is applied at most once.
//!
//! Ids are random 64-bit values (a random start, then a counter mixed through SplitMix64), so
//! an id from before a restart is never mistaken for a new retrieval.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::time::Instant;

use super::options::Retention;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;

/// The identifier of one retrieval (one query's hits), for [`crate::Bank::feedback`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RetrievalId(pub u64);

impl std::fmt::Display for RetrievalId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A random value from the process's hasher keys (the operating system's randomness) and the
/// clock.
pub(crate) fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

pub(crate) struct Pending {
    retention: Retention,
    entries: HashMap<RetrievalId, (Vec<u64>, Instant)>,
    /// Ids in the order they were issued, with their issue time (may name forgotten ids).
    order: VecDeque<(RetrievalId, Instant)>,
    ids: SplitMix64,
}

impl Pending {
    pub(crate) fn new(retention: Retention) -> Self {
        Self {
            retention,
            entries: HashMap::new(),
            order: VecDeque::new(),
            ids: SplitMix64::new(random_u64()),
        }
    }

    /// Remembers the memories one retrieval injected; returns its id.
    pub(crate) fn issue(&mut self, memory_ids: Vec<u64>) -> RetrievalId {
        let now = Instant::now();
        let mut id = RetrievalId(self.ids.next_u64());
        while id.0 == 0 || self.entries.contains_key(&id) {
            id = RetrievalId(self.ids.next_u64());
        }
        if self.retention.capacity == 0 {
            return id;
        }
        self.expire(now);
        while self.entries.len() >= self.retention.capacity {
            match self.order.pop_front() {
                Some((old, _)) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        self.entries.insert(id, (memory_ids, now));
        self.order.push_back((id, now));
        id
    }

    /// Forgets retrievals older than the retention time.
    fn expire(&mut self, now: Instant) {
        while let Some(&(id, at)) = self.order.front() {
            if now.duration_since(at) < self.retention.ttl {
                break;
            }
            self.order.pop_front();
            self.entries.remove(&id);
        }
        // Entries taken by feedback leave their ids in `order`; drop them once they dominate.
        if self.order.len() > 2 * self.entries.len() + 1024 {
            let entries = &self.entries;
            self.order.retain(|(id, _)| entries.contains_key(id));
        }
    }

    /// Takes the memories of every retrieval in `ids`, all or none: an unknown, reported or
    /// expired id is an error and nothing is taken.
    pub(crate) fn take(&mut self, ids: &[RetrievalId]) -> Result<Vec<(RetrievalId, Vec<u64>)>> {
        self.expire(Instant::now());
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        for id in ids {
            if !self.entries.contains_key(id) || !seen.insert(*id) {
                return Err(Error::UnknownRetrieval {
                    id: id.0,
                    retention: self.describe(),
                });
            }
        }
        Ok(ids
            .iter()
            .filter_map(|id| self.entries.remove(id).map(|(m, _)| (*id, m)))
            .collect())
    }

    /// Puts back retrievals taken by a feedback call that then failed, so a retry can succeed.
    pub(crate) fn restore(&mut self, taken: Vec<(RetrievalId, Vec<u64>)>) {
        let now = Instant::now();
        for (id, memories) in taken {
            self.entries.insert(id, (memories, now));
            self.order.push_back((id, now));
        }
    }

    /// How many retrievals are remembered now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn describe(&self) -> String {
        format!(
            "the bank remembers the last {} retrievals for {} s, each until its feedback",
            self.retention.capacity,
            self.retention.ttl.as_secs()
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn feedback_takes_a_retrieval_once() {
        let mut p = Pending::new(Retention::default());
        let a = p.issue(vec![1, 2]);
        let b = p.issue(vec![3]);
        assert_ne!(a, b);
        assert_eq!(p.take(&[a]).unwrap(), vec![(a, vec![1, 2])]);
        assert!(p.take(&[a]).is_err());
        // All or none: b stays when the batch also names a.
        assert!(p.take(&[b, a]).is_err());
        assert!(p.take(&[b, b]).is_err());
        let taken = p.take(&[b]).unwrap();
        p.restore(taken);
        assert_eq!(p.take(&[b]).unwrap().len(), 1);
    }

    #[test]
    fn the_oldest_is_forgotten_first_and_old_ones_expire() {
        let mut p = Pending::new(Retention {
            capacity: 2,
            ttl: Duration::from_secs(3600),
        });
        let a = p.issue(vec![1]);
        let b = p.issue(vec![2]);
        let c = p.issue(vec![3]);
        assert_eq!(p.len(), 2);
        assert!(p.take(&[a]).is_err());
        assert!(p.take(&[b, c]).is_ok());
        let mut p = Pending::new(Retention {
            capacity: 10,
            ttl: Duration::ZERO,
        });
        let a = p.issue(vec![1]);
        assert!(matches!(p.take(&[a]), Err(Error::UnknownRetrieval { .. })));
    }
}
