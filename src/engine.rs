//! The thread-safe facade: one bank shared by many agents.
//!
//! Concurrency contract: `Engine` is `Send + Sync`. Any number of threads may call
//! [`Engine::retrieve`] and [`Engine::save`] at once (they share a read lock); [`Engine::add`],
//! [`Engine::add_many`], [`Engine::remove`] and [`Engine::apply_outcomes`] take the write lock,
//! so each is applied whole, in some serial order, and a retrieval sees the bank either before or
//! after it, never half-way. Writers are short (host tables plus small device writes), so readers
//! wait at most one batch. A save holds the read lock while it writes the file, so writers wait
//! for the save to finish (a snapshot is one consistent state of the bank). Lock poisoning cannot leave a half-applied batch (every mutation
//! validates first and writes the device before the host), so a poisoned lock is recovered.

use std::path::Path;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use candle_core::{Device, Tensor};

use crate::bank::{Bank, Memory, NewMemory};
use crate::config::RetrievalConfig;
use crate::error::Result;
use crate::learn::{Outcome, OutcomeReport};
use crate::retrieve::Hit;
use crate::snapshot::{self, LoadOptions};

/// A bank behind a reader-writer lock (see the module docs for the concurrency contract).
///
/// ```
/// use memrl::{BankConfig, Engine, NewMemory, Outcome};
/// let engine = Engine::new(BankConfig::new(3, "toy"), &memrl::Device::Cpu)?;
/// let id = engine.add(NewMemory { embedding: vec![0.0, 1.0, 0.0], ..Default::default() })?;
/// let cfg = engine.retrieval_config();
/// let hits = engine.retrieve_vectors(&[vec![0.0, 1.0, 0.1]], &cfg)?;
/// engine.apply_outcomes(&[Outcome { memory_ids: vec![hits[0][0].id], reward: 1.0 }])?;
/// assert!(engine.get(id).unwrap().q > 0.0);
/// # Ok::<(), memrl::Error>(())
/// ```
#[derive(Debug)]
pub struct Engine {
    bank: RwLock<Bank>,
}

impl Engine {
    /// An engine over a new, empty bank.
    pub fn new(config: crate::BankConfig, device: &Device) -> Result<Self> {
        Ok(Self::from_bank(Bank::new(config, device)?))
    }

    /// An engine over an existing bank.
    pub fn from_bank(bank: Bank) -> Self {
        Self {
            bank: RwLock::new(bank),
        }
    }

    /// Loads a snapshot (see [`snapshot::load`]).
    pub fn load(path: &Path, device: &Device, options: &LoadOptions) -> Result<Self> {
        Ok(Self::from_bank(snapshot::load(path, device, options)?))
    }

    /// Writes a snapshot atomically; retrievals go on meanwhile, writers wait for it.
    pub fn save(&self, path: &Path) -> Result<()> {
        snapshot::save(&self.read(), path)
    }

    fn read(&self) -> RwLockReadGuard<'_, Bank> {
        self.bank
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Bank> {
        self.bank
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` with shared access to the bank (for reads the facade does not cover).
    pub fn with_bank<T>(&self, f: impl FnOnce(&Bank) -> T) -> T {
        f(&self.read())
    }

    /// Takes the bank back out of the engine.
    pub fn into_bank(self) -> Bank {
        self.bank
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// See [`Bank::retrieve`].
    pub fn retrieve(&self, queries: &Tensor, config: &RetrievalConfig) -> Result<Vec<Vec<Hit>>> {
        self.read().retrieve(queries, config)
    }

    /// See [`Bank::retrieve_vectors`].
    pub fn retrieve_vectors(
        &self,
        queries: &[Vec<f32>],
        config: &RetrievalConfig,
    ) -> Result<Vec<Vec<Hit>>> {
        self.read().retrieve_vectors(queries, config)
    }

    /// See [`Bank::add`].
    pub fn add(&self, memory: NewMemory) -> Result<u64> {
        self.write().add(memory)
    }

    /// See [`Bank::add_many`].
    pub fn add_many(&self, memories: Vec<NewMemory>) -> Result<Vec<u64>> {
        self.write().add_many(memories)
    }

    /// See [`Bank::remove`].
    pub fn remove(&self, id: u64) -> Result<Memory> {
        self.write().remove(id)
    }

    /// See [`Bank::apply_outcomes`].
    pub fn apply_outcomes(&self, outcomes: &[Outcome]) -> Result<OutcomeReport> {
        self.write().apply_outcomes(outcomes)
    }

    /// A copy of one memory.
    pub fn get(&self, id: u64) -> Option<Memory> {
        self.read().get(id).cloned()
    }

    /// Number of memories.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the bank is empty.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// A copy of the bank's stored retrieval config.
    pub fn retrieval_config(&self) -> RetrievalConfig {
        self.read().retrieval_config().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Engine>();
    }
}
