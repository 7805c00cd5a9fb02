//! Phase A's seam: a key index answers "the best k keys at or above delta for these queries".
//!
//! Retrieval (`crate::retrieve`) asks a [`KeyIndex`] for each query's best intent keys and
//! never looks at how they are stored; intent sharing asks the same question with k = 1. Today
//! one implementation exists, [`DeviceIndex`]: the keys as one matrix on a candle device, scanned
//! in tiles with a running top-k (`scan.rs`, `simd.rs`, `topk.rs`). Another implementation (a
//! sharded index, a remote one) plugs in behind the same trait.
//!
//! # What an implementation promises
//! - **Exact.** For each query, the `k` keys of highest similarity among those with
//!   `similarity >= delta` (fewer when fewer pass), not an approximation.
//! - **Order and ties.** Best first: similarity descending, then [`KeyId`] ascending. Two keys
//!   of exactly equal similarity are therefore always returned, and cut at the k-th place, by
//!   key id. This is the spec's deterministic tie rule stated in key terms, and what makes
//!   several indexes comparable: the exact top-k of a union is the top-k of the parts' top-k
//!   lists merged by the same order.
//! - **Similarity.** The dot product of the (unit) query with the (unit) key in the index's
//!   storage precision, accumulated in f32 and returned as f32. Two implementations that store
//!   the same keys in the same precision agree to float rounding; bit-for-bit agreement is only
//!   promised by the same implementation on the same device.
//! - **Stable ids.** A key keeps its id for its whole life; ids are never reused. Removing a key
//!   renumbers nothing.
//! - **Replay does not depend on the index.** The write-ahead log records every decision a
//!   search led to (which key a new memory is filed under), so replaying a log never searches:
//!   an index only has to hold the keys it is given, in the order of their ids.
//!
//! Queries are host rows of unit vectors (`B x dim`, row-major, f32), already validated and
//! normalised by the caller.

mod matrix;
mod scan;
mod simd;
mod sketch;
pub(crate) mod topk;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

pub use simd::read_sum;

use matrix::KeyMatrix;
use sketch::Int8Sketch;

/// The stable identifier of an intent key: assigned when the key is created, in increasing
/// order, never reused.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct KeyId(pub u64);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key {}", self.0)
    }
}

/// One key recalled for a query.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeyMatch {
    /// The key.
    pub key: KeyId,
    /// Its similarity to the query.
    pub sim: f32,
}

/// Phase A: similarity recall over intent keys (see the module docs for the contract).
pub trait KeyIndex: Send + Sync {
    /// The dimension of keys and queries.
    fn dim(&self) -> usize;

    /// How many keys the index holds.
    fn num_keys(&self) -> usize;

    /// For each of the `queries.len() / dim` unit rows of `queries`, the best `k` keys with
    /// similarity at or above `delta`, best first (similarity descending, key id ascending).
    fn search(&self, queries: &[f32], k: usize, delta: f32) -> Result<Vec<Vec<KeyMatch>>>;

    /// The device the keys live on (`None`: the CPU).
    fn device(&self) -> Option<&Device> {
        None
    }
}

/// The keys as one matrix on a candle device (CPU, CUDA, Metal), rows in key-id order.
///
/// Invariant: `ids` is strictly increasing and `ids[row]` is the key in row `row` of the matrix,
/// so a scan's "lower row first" on equal similarity is the trait's "lower key id first".
#[derive(Debug)]
pub(crate) struct DeviceIndex {
    matrix: KeyMatrix,
    ids: Vec<KeyId>,
    /// The keys' int8 sketch, row for row (CPU f32 and f16 keys only): scans read it first
    /// (`sketch.rs`). A quarter of the f32 keys' bytes, half of f16's.
    sketch: Option<Int8Sketch>,
}

/// Whether keys of `dtype` on `device` get an int8 sketch: CPU f32 and f16 keys (a GPU's
/// matrix products need none, and bf16 keys take the tiled path).
fn sketched(dtype: DType, device: &Device) -> bool {
    device.is_cpu() && matches!(dtype, DType::F32 | DType::F16)
}

impl DeviceIndex {
    /// An empty index of `dim`-dimensional keys stored as `dtype` on `device`.
    pub(crate) fn new(dim: usize, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self {
            matrix: KeyMatrix::new(dim, dtype, device)?,
            ids: Vec::new(),
            sketch: sketched(dtype, device).then(|| Int8Sketch::new(dim)),
        })
    }

    /// The key ids, in row order (increasing).
    pub(crate) fn ids(&self) -> &[KeyId] {
        &self.ids
    }

    /// Whether a key with this id is held.
    pub(crate) fn contains(&self, key: KeyId) -> bool {
        self.row_of(key).is_some()
    }

    fn row_of(&self, key: KeyId) -> Option<usize> {
        self.ids.binary_search(&key).ok()
    }

    /// Appends keys: `rows` holds `ids.len()` unit vectors (row-major f32); every id must be
    /// above every id held, and the ids increasing. Nothing changes when it fails.
    pub(crate) fn push(&mut self, ids: &[KeyId], rows: Vec<f32>) -> Result<()> {
        let dim = self.dim();
        if rows.len() != ids.len() * dim {
            return Err(Error::Internal(format!(
                "{} key ids for {} values of dimension {dim}",
                ids.len(),
                rows.len()
            )));
        }
        let mut last = self.ids.last().copied();
        for &id in ids {
            if last.is_some_and(|l| id <= l) {
                return Err(Error::Internal(format!(
                    "{id} does not come after {}",
                    last.map_or(0, |l| l.0)
                )));
            }
            last = Some(id);
        }
        if ids.is_empty() {
            return Ok(());
        }
        // The sketch is made first, from the keys as the matrix will store them (f16 rounding
        // included), so that nothing can fail once the matrix has grown. f32 rows are stored as
        // they are: no copy to read them back.
        let dtype = self.matrix.dtype();
        let sketch_rows = match &self.sketch {
            Some(sketch) if dtype == DType::F32 => Some(sketch.prepare(&rows)),
            _ => None,
        };
        let tensor = Tensor::from_vec(rows, (ids.len(), dim), &Device::Cpu)?;
        let sketch_rows = match (&self.sketch, sketch_rows) {
            (Some(sketch), None) => Some(sketch.prepare(&stored_f32(&tensor, dtype)?)),
            (_, prepared) => prepared,
        };
        self.matrix.push_rows(&tensor)?;
        if let (Some(sketch), Some(rows)) = (self.sketch.as_mut(), sketch_rows) {
            sketch.append(rows);
        }
        self.ids.extend_from_slice(ids);
        Ok(())
    }

    /// Rebuilds an index from a snapshot's keys (`ids` increasing, `keys` `n x dim` in the
    /// storage dtype, on the CPU).
    pub(crate) fn from_parts(ids: Vec<KeyId>, keys: &Tensor, device: &Device) -> Result<Self> {
        let (n, dim) = keys.dims2()?;
        if ids.len() != n || ids.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::Internal(
                "key ids must be increasing, one per key".into(),
            ));
        }
        let mut matrix = KeyMatrix::new(dim, keys.dtype(), device)?;
        matrix.push_rows(&keys.to_device(device)?)?;
        let sketch = if sketched(keys.dtype(), device) {
            let mut sketch = Int8Sketch::new(dim);
            sketch.append(sketch.prepare(&stored_f32(keys, keys.dtype())?));
            Some(sketch)
        } else {
            None
        };
        Ok(Self {
            matrix,
            ids,
            sketch,
        })
    }

    /// Removes a key. Rows after it shift up (their ids keep their order). An error part-way
    /// through the shift leaves the index unusable: the caller must rebuild it from its files.
    pub(crate) fn remove(&mut self, key: KeyId) -> Result<()> {
        let row = self
            .row_of(key)
            .ok_or_else(|| Error::Internal(format!("{key} is not in the index")))?;
        self.matrix.remove(row)?;
        if let Some(sketch) = self.sketch.as_mut() {
            sketch.remove(row);
        }
        self.ids.remove(row);
        Ok(())
    }

    /// One key as f32 values.
    pub(crate) fn key(&self, key: KeyId) -> Result<Vec<f32>> {
        let row = self
            .row_of(key)
            .ok_or_else(|| Error::Internal(format!("{key} is not in the index")))?;
        self.matrix.row(row)
    }

    /// Every key, `num_keys x dim`, in row (key id) order, in the storage dtype.
    pub(crate) fn keys(&self) -> Result<Tensor> {
        self.matrix.view()
    }

    /// Every key as host f32 rows, in key-id order.
    pub(crate) fn rows_f32(&self) -> Result<Vec<f32>> {
        Ok(self
            .matrix
            .view()?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?)
    }
}

/// `keys` as host f32 rows after rounding to `dtype`: the values a matrix of that dtype holds.
fn stored_f32(keys: &Tensor, dtype: DType) -> Result<Vec<f32>> {
    Ok(keys
        .to_device(&Device::Cpu)?
        .to_dtype(dtype)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?)
}

impl KeyIndex for DeviceIndex {
    fn dim(&self) -> usize {
        self.matrix.dim()
    }

    fn num_keys(&self) -> usize {
        self.ids.len()
    }

    fn device(&self) -> Option<&Device> {
        Some(self.matrix.device())
    }

    fn search(&self, queries: &[f32], k: usize, delta: f32) -> Result<Vec<Vec<KeyMatch>>> {
        let dim = self.dim();
        if dim == 0 || !queries.len().is_multiple_of(dim) {
            return Err(Error::DimensionMismatch {
                what: "query batch",
                expected: dim,
                got: queries.len(),
            });
        }
        let b = queries.len() / dim;
        if b == 0 || k == 0 || self.ids.is_empty() {
            return Ok(vec![Vec::new(); b]);
        }
        let view = self.matrix.view()?;
        let sketched = self
            .sketch
            .as_ref()
            .and_then(|sketch| scan::top_keys_sketched(queries, b, &view, sketch, k));
        let top = match sketched {
            Some(top) => top,
            None => {
                // f32 here: the scan casts to the key dtype only where a matmul needs it.
                let queries = Tensor::from_slice(queries, (b, dim), &Device::Cpu)?
                    .to_device(self.matrix.device())?;
                scan::top_keys(&queries, &view, k)?
            }
        };
        Ok(top
            .sims
            .iter()
            .zip(&top.rows)
            .map(|(sims, rows)| {
                sims.iter()
                    .zip(rows)
                    // Lists are best first, so the gate cuts a suffix.
                    .take_while(|(&sim, _)| sim >= delta)
                    .map(|(&sim, &row)| KeyMatch {
                        key: self.ids[row as usize],
                        sim,
                    })
                    .collect()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(rows: &[[f32; 2]]) -> DeviceIndex {
        let mut index = DeviceIndex::new(2, DType::F32, &Device::Cpu).unwrap();
        let ids: Vec<KeyId> = (0..rows.len() as u64).map(|i| KeyId(10 * i)).collect();
        index.push(&ids, rows.concat()).unwrap();
        index
    }

    #[test]
    fn search_gates_by_delta_and_breaks_ties_by_key_id_after_removals() {
        let mut index = index(&[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8], [1.0, 0.0]]);
        let hits = index.search(&[1.0, 0.0], 10, 0.5).unwrap();
        let keys: Vec<u64> = hits[0].iter().map(|m| m.key.0).collect();
        assert_eq!(keys, vec![0, 20, 40, 30]);
        index.remove(KeyId(20)).unwrap();
        let hits = index.search(&[1.0, 0.0], 2, 0.5).unwrap();
        let keys: Vec<u64> = hits[0].iter().map(|m| m.key.0).collect();
        assert_eq!(keys, vec![0, 40]);
        assert_eq!(index.key(KeyId(30)).unwrap(), vec![0.6, 0.8]);
        assert!(!index.contains(KeyId(20)));
    }

    /// What the plain fused scan (no sketch, all queries in one call) returns over the index's
    /// matrix, as key matches: what the sketched scan must return at any batch size.
    fn plain_search(index: &DeviceIndex, queries: &[f32], k: usize) -> Vec<Vec<KeyMatch>> {
        let dim = index.dim();
        let b = queries.len() / dim;
        let keys = index.keys().unwrap();
        let (storage, layout) = keys.storage_and_layout();
        let (start, end) = layout.contiguous_offsets().unwrap();
        let slice = match &*storage {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) => {
                simd::Keys::F32(&data[start..end])
            }
            candle_core::Storage::Cpu(candle_core::CpuStorage::F16(data)) => {
                simd::Keys::F16(&data[start..end])
            }
            _ => unreachable!("CPU f32 or f16 keys"),
        };
        let top = scan::fused_cpu_scan(queries, slice, b, k);
        top.sims
            .iter()
            .zip(&top.rows)
            .map(|(sims, rows)| {
                sims.iter()
                    .zip(rows)
                    .map(|(&sim, &row)| KeyMatch {
                        key: index.ids()[row as usize],
                        sim,
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_sketch_follows_every_push_removal_and_rebuild() {
        // Enough keys for searches of few queries to go through the sketch; if its rows ever
        // fell out of step with the matrix's, it would prune the wrong keys.
        let dim = 32;
        let mut rng = crate::rng::SplitMix64::new(11);
        for dtype in [DType::F32, DType::F16] {
            let mut index = DeviceIndex::new(dim, dtype, &Device::Cpu).unwrap();
            let mut next = 0u64;
            for batch in [1usize, 700, 3000, 2500] {
                let ids: Vec<KeyId> = (0..batch).map(|i| KeyId(next + 3 * i as u64)).collect();
                next += 3 * batch as u64;
                let rows: Vec<f32> = (0..batch).flat_map(|_| rng.unit_vector(dim)).collect();
                index.push(&ids, rows).unwrap();
            }
            for _ in 0..60 {
                let ids = index.ids().to_vec();
                let victim = ids[rng.below(ids.len() as u64) as usize];
                index.remove(victim).unwrap();
            }
            let rebuilt =
                DeviceIndex::from_parts(index.ids().to_vec(), &index.keys().unwrap(), &Device::Cpu)
                    .unwrap();
            for b in [1, 2, 5, 8, 9, 13, 20] {
                let queries: Vec<f32> = (0..b).flat_map(|_| rng.unit_vector(dim)).collect();
                let want = plain_search(&index, &queries, 10);
                for idx in [&index, &rebuilt] {
                    let sketch = idx
                        .sketch
                        .as_ref()
                        .expect("CPU f32 and f16 keys are sketched");
                    let keys = idx.keys().unwrap();
                    let through = scan::top_keys_sketched(&queries, b, &keys, sketch, 10);
                    assert!(
                        through.is_some(),
                        "{dtype:?} b {b}: the sketch was not used"
                    );
                }
                assert_eq!(
                    index.search(&queries, 10, -1.0).unwrap(),
                    want,
                    "{dtype:?} b {b}"
                );
                assert_eq!(
                    rebuilt.search(&queries, 10, -1.0).unwrap(),
                    want,
                    "{dtype:?} b {b}"
                );
            }
        }
    }

    #[test]
    fn ids_must_increase() {
        let mut index = index(&[[1.0, 0.0]]);
        assert!(index.push(&[KeyId(0)], vec![0.0, 1.0]).is_err());
        assert!(index
            .push(&[KeyId(5), KeyId(5)], vec![0.0, 1.0, 1.0, 0.0])
            .is_err());
        assert_eq!(index.num_keys(), 1);
        index.push(&[KeyId(7)], vec![0.0, 1.0]).unwrap();
        assert_eq!(index.ids(), &[KeyId(0), KeyId(7)]);
    }
}
