//! The memory table: every memory, and which intent key it is filed under.
//!
//! Invariants (checked by `Store::debug_check` in tests):
//! - memories live in dense slots `0..len`; `slot_of[id] == slot` and `memories[slot].id == id`;
//! - `key_of[slot]` is the key memory `slot` is filed under, and `members[key]` lists `slot`;
//! - every key in `members` has at least one member (the store removes a key with its last
//!   memory).
//!
//! Removal moves the last slot into the hole, so slots are insertion order only until something
//! is removed; nothing outside this module sees slots as more than a handle for the duration of
//! one call.

use std::collections::HashMap;

use crate::index::KeyId;
use crate::store::Memory;

/// A memory's position in the table (valid until the next mutation).
pub(crate) type Slot = u32;

#[derive(Debug, Default)]
pub(crate) struct MemoryTable {
    memories: Vec<Memory>,
    key_of: Vec<KeyId>,
    slot_of: HashMap<u64, Slot>,
    members: HashMap<KeyId, Vec<Slot>>,
}

impl MemoryTable {
    pub(crate) fn len(&self) -> usize {
        self.memories.len()
    }

    pub(crate) fn slot(&self, id: u64) -> Option<Slot> {
        self.slot_of.get(&id).copied()
    }

    pub(crate) fn get(&self, id: u64) -> Option<&Memory> {
        self.slot(id).map(|slot| &self.memories[slot as usize])
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        self.slot_of.contains_key(&id)
    }

    /// The memory in `slot` (a slot this table gave out during the current call).
    pub(crate) fn at(&self, slot: Slot) -> &Memory {
        &self.memories[slot as usize]
    }

    pub(crate) fn at_mut(&mut self, slot: Slot) -> &mut Memory {
        &mut self.memories[slot as usize]
    }

    /// The key a memory is filed under.
    pub(crate) fn key_of(&self, id: u64) -> Option<KeyId> {
        self.slot(id).map(|slot| self.key_of[slot as usize])
    }

    /// The slots filed under `key` (empty for an unknown key).
    pub(crate) fn members(&self, key: KeyId) -> &[Slot] {
        self.members.get(&key).map_or(&[], Vec::as_slice)
    }

    /// Keys with more than one member.
    pub(crate) fn shared_keys(&self) -> usize {
        self.members.values().filter(|m| m.len() > 1).count()
    }

    pub(crate) fn iter(&self) -> impl ExactSizeIterator<Item = &Memory> + '_ {
        self.memories.iter()
    }

    /// Files `memory` under `key`. The caller has checked that the id is free.
    pub(crate) fn insert(&mut self, memory: Memory, key: KeyId) {
        let slot = self.memories.len() as Slot;
        self.slot_of.insert(memory.id, slot);
        self.members.entry(key).or_default().push(slot);
        self.key_of.push(key);
        self.memories.push(memory);
    }

    /// Removes memory `id`; returns it, its key, and whether the key has no member left.
    pub(crate) fn remove(&mut self, id: u64) -> Option<(Memory, KeyId, bool)> {
        let slot = self.slot_of.remove(&id)?;
        let last = (self.memories.len() - 1) as Slot;
        let key = self.key_of[slot as usize];
        let members = self.members.get_mut(&key)?;
        members.retain(|&s| s != slot);
        let key_gone = members.is_empty();
        if key_gone {
            self.members.remove(&key);
        }
        let memory = self.memories.swap_remove(slot as usize);
        self.key_of.swap_remove(slot as usize);
        if slot != last {
            // The memory that was in the last slot now lives in `slot`.
            let moved = &self.memories[slot as usize];
            self.slot_of.insert(moved.id, slot);
            let moved_key = self.key_of[slot as usize];
            if let Some(list) = self.members.get_mut(&moved_key) {
                for s in list.iter_mut().filter(|s| **s == last) {
                    *s = slot;
                }
            }
        }
        Some((memory, key, key_gone))
    }

    /// Every (memory, key) in slot order, for snapshots.
    pub(crate) fn rows(&self) -> impl Iterator<Item = (&Memory, KeyId)> + '_ {
        self.memories.iter().zip(self.key_of.iter().copied())
    }

    /// Checks the invariants in the module docs.
    pub(crate) fn check(&self) -> Result<(), String> {
        let n = self.memories.len();
        if self.key_of.len() != n || self.slot_of.len() != n {
            return Err("table lengths disagree".into());
        }
        for (slot, m) in self.memories.iter().enumerate() {
            if self.slot_of.get(&m.id) != Some(&(slot as Slot)) {
                return Err(format!("slot_of[{}] != {slot}", m.id));
            }
            if !self.members(self.key_of[slot]).contains(&(slot as Slot)) {
                return Err(format!(
                    "slot {slot} missing from the members of {}",
                    self.key_of[slot]
                ));
            }
        }
        let listed: usize = self.members.values().map(Vec::len).sum();
        if listed != n || self.members.values().any(Vec::is_empty) {
            return Err("member lists do not cover the memories exactly once".into());
        }
        Ok(())
    }
}

impl crate::learn::KeyView for MemoryTable {
    fn key_of(&self, id: u64) -> Option<KeyId> {
        MemoryTable::key_of(self, id)
    }

    fn members_of(&self, key: KeyId) -> Vec<(u64, Option<f32>)> {
        self.members(key)
            .iter()
            .map(|&slot| {
                let m = self.at(slot);
                (m.id, m.baseline)
            })
            .collect()
    }
}
