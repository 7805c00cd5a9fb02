//! The shard seam (`memrl::shard`): a bank split over shards by a coordinator built from
//! `shard::place`, `Bank::add_placed`, `Bank::recall` and `shard::merge` returns what one bank
//! returns, bit for bit (up to 8 queries a call, where Phase A scores every key with one kernel);
//! placed adds survive the log; a placed key that would break key order is refused whole.

use memrl::shard::{self, Placement};
use memrl::{Bank, BankConfig, KeyId, KeyMatch, NewMemory, RetrievalConfig};
use proptest::prelude::*;

const DIM: usize = 4;

fn config(dedup_sim: f32) -> BankConfig {
    BankConfig {
        dedup_sim,
        ..BankConfig::new(DIM, "toy")
    }
}

/// A minimal coordinator: global ids and keys, new keys to the shard with the fewest.
struct Sharded {
    shards: Vec<Bank>,
    keys_on: std::collections::HashMap<u64, usize>,
    next_id: u64,
    next_key: u64,
    dedup: f32,
}

impl Sharded {
    fn new(n: usize, dedup: f32) -> Self {
        Self {
            shards: (0..n)
                .map(|_| Bank::in_memory(config(dedup)).unwrap())
                .collect(),
            keys_on: Default::default(),
            next_id: 0,
            next_key: 0,
            dedup,
        }
    }

    fn add(&mut self, rows: &[Vec<f32>]) -> Vec<u64> {
        let flat: Vec<f32> = rows.concat();
        let mut best: Vec<Option<KeyMatch>> = vec![None; rows.len()];
        if self.dedup < 1.0 {
            for s in &self.shards {
                for (i, found) in s
                    .search_keys(&flat, 1, self.dedup)
                    .unwrap()
                    .into_iter()
                    .enumerate()
                {
                    if let Some(m) = found.first() {
                        let better = best[i]
                            .is_none_or(|b| m.sim > b.sim || (m.sim == b.sim && m.key < b.key));
                        if better {
                            best[i] = Some(*m);
                        }
                    }
                }
            }
        }
        let placed = shard::place(&flat, DIM, &best, self.dedup, self.next_key).unwrap();
        let mut counts: Vec<usize> = self.shards.iter().map(|s| s.num_intents()).collect();
        let mut parts: Vec<Vec<(NewMemory, Placement)>> = vec![Vec::new(); self.shards.len()];
        let mut ids = Vec::new();
        for (row, place) in rows.iter().zip(&placed.keys) {
            let (key, is_new) = match *place {
                Placement::New(k) => (k, true),
                Placement::Existing(k) => (k, false),
            };
            if is_new {
                let s = (0..counts.len()).min_by_key(|&j| (counts[j], j)).unwrap();
                counts[s] += 1;
                self.keys_on.insert(key.0, s);
                self.next_key = key.0 + 1;
            }
            let id = self.next_id;
            self.next_id += 1;
            ids.push(id);
            let m = NewMemory::new(format!("i{id}"), "e")
                .id(id)
                .embedding(row.clone());
            parts[self.keys_on[&key.0]].push((m, *place));
        }
        for (s, part) in parts.into_iter().enumerate() {
            if !part.is_empty() {
                self.shards[s].add_placed(part).unwrap();
            }
        }
        ids
    }

    fn retrieve(&self, queries: &[Vec<f32>], cfg: &RetrievalConfig) -> Vec<Vec<memrl::Hit>> {
        let recalls: Vec<_> = self
            .shards
            .iter()
            .map(|s| s.recall(queries, cfg).unwrap())
            .collect();
        shard::merge(&recalls, cfg)
            .unwrap()
            .into_iter()
            .map(|picks| {
                picks
                    .iter()
                    .map(|p| p.hit(&self.shards[p.shard].get(p.id).unwrap()))
                    .collect()
            })
            .collect()
    }
}

/// Vectors on a coarse grid: exact similarity ties and shared intents are common.
fn grid_vectors(max: usize) -> impl Strategy<Value = Vec<Vec<f32>>> {
    prop::collection::vec(
        prop::collection::vec((-2i8..=2).prop_map(f32::from), DIM)
            .prop_filter("non-zero", |v| v.iter().any(|&x| x != 0.0)),
        1..=max,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn sharded_retrieval_is_one_banks(
        batches in prop::collection::vec(grid_vectors(6), 1..6),
        queries in grid_vectors(8),
        shards in 1usize..4,
        share in any::<bool>(),
        k1 in 1usize..8,
        k2 in 1usize..6,
        epsilon in prop::sample::select(vec![0.0f32, 0.5]),
        seed in 0u64..50,
    ) {
        let dedup = if share { 0.9 } else { 1.0 };
        let one = Bank::in_memory(config(dedup)).unwrap();
        let mut sharded = Sharded::new(shards, dedup);
        for batch in &batches {
            let ids = one
                .add_many(batch.iter().enumerate().map(|(i, v)| {
                    NewMemory::new(format!("i{}", one.next_id() + i as u64), "e").embedding(v.clone())
                }).collect())
                .unwrap();
            prop_assert_eq!(ids, sharded.add(batch));
        }
        let total_keys: usize = sharded.shards.iter().map(|s| s.num_intents()).sum();
        prop_assert_eq!(one.num_intents(), total_keys);
        let cfg = RetrievalConfig { k1, k2, delta: -1.0, epsilon, seed, ..Default::default() };
        let want: Vec<Vec<memrl::Hit>> = one
            .retrieve_with(&queries[..], &cfg)
            .unwrap()
            .into_iter()
            .map(|r| r.hits)
            .collect();
        prop_assert_eq!(want, sharded.retrieve(&queries, &cfg));
    }
}

#[test]
fn placed_adds_replay_and_a_key_out_of_order_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard.safetensors");
    let bank = Bank::options().dim(2).model_id("toy").open(&path).unwrap();
    let placed =
        |id: u64, v: Vec<f32>, p: Placement| (NewMemory::new("i", "e").id(id).embedding(v), p);
    bank.add_placed(vec![
        placed(3, vec![1.0, 0.0], Placement::New(KeyId(5))),
        placed(9, vec![1.0, 0.01], Placement::Existing(KeyId(5))),
        placed(4, vec![0.0, 1.0], Placement::New(KeyId(8))),
    ])
    .unwrap();
    assert_eq!(bank.next_key_id(), 9);
    assert_eq!(bank.next_id(), 10);
    // Key 7 is below a key this bank has used: refused, nothing changed.
    let err = bank
        .add_placed(vec![
            placed(20, vec![0.5, 0.5], Placement::New(KeyId(9))),
            placed(21, vec![0.5, -0.5], Placement::New(KeyId(7))),
        ])
        .unwrap_err();
    assert!(err.to_string().contains("key"), "{err}");
    assert_eq!(bank.len(), 3);
    // A key that is not on this shard, and a memory without an id, are refused too.
    assert!(bank
        .add_placed(vec![placed(
            30,
            vec![0.5, 0.5],
            Placement::Existing(KeyId(6))
        )])
        .is_err());
    assert!(bank
        .add_placed(vec![(
            NewMemory::new("i", "e").embedding(vec![1.0, 1.0]),
            Placement::New(KeyId(50))
        )])
        .is_err());
    let before: Vec<_> = bank.memories();
    drop(bank);
    let bank = Bank::open(&path).unwrap();
    assert_eq!(bank.memories(), before);
    assert_eq!(bank.intent_members(9).unwrap(), vec![3, 9]);
    assert_eq!(bank.next_key_id(), 9);
    let found = bank.search_keys(&[1.0, 0.0, 0.0, 1.0], 1, 0.5).unwrap();
    assert_eq!(found[0][0].key, KeyId(5));
    assert_eq!(found[1][0].key, KeyId(8));
}
