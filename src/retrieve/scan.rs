//! Phase A's similarity scan: queries against every intent key, in tiles, with a running top-k.
//!
//! Invariants:
//! - Memory: only one `B x tile_rows` score tile exists at a time (about `TILE_SCORE_BYTES` on the
//!   CPU, `GPU_TILE_SCORE_BYTES` elsewhere), never the whole `B x N` matrix beyond that, so a
//!   batch of 256 queries over 1M keys stays small on the CPU.
//! - Order: the running best list is sorted by (similarity desc, key row asc). Each tile's top-k
//!   has global rows above every row already kept, and is concatenated after the running list,
//!   so on equal similarity the merge's "lower position" is "lower row": the tie rule holds across
//!   tiles without comparing rows.
//! - Every step is a tensor op on the bank's device; only the final `B x k` lists come back.

use candle_core::{CpuStorage, DType, Storage, Tensor};
use rayon::prelude::*;

use super::topk::{merge_sorted, topk_indices, topk_row};
use crate::error::Result;

/// Target size of one score tile, in bytes, on the CPU: small enough to stay near the caches.
const TILE_SCORE_BYTES: usize = 16 << 20;
/// The same on a GPU: each tile costs a dozen launches of top-k and merge, so tiles are as large
/// as memory comfortably allows (1M keys x 256 queries in one tile).
const GPU_TILE_SCORE_BYTES: usize = 1 << 30;
/// Smallest tile worth a matmul call.
const MIN_TILE_ROWS: usize = 4096;
/// Up to this many queries, an f32 or f16 bank on the CPU is scanned by the fused loop below: a
/// matrix product of so few rows is bound by reading the keys, and the fused loop reads each key
/// once for all queries without writing a score tile. Measured at N = 300k, d = 384, 2 cores:
/// B = 1 20 ms fused vs 37 ms tiled, B = 8 49 vs 60 ms.
const FUSED_MAX_QUERIES: usize = 8;
/// Keys per parallel work item of the fused loop (1.5 MiB of f32 keys at d = 384).
const FUSED_CHUNK_ROWS: usize = 1024;

/// The best keys of each query, best first.
pub(crate) struct TopKeys {
    /// Similarity of each kept key, per query.
    pub(crate) sims: Vec<Vec<f32>>,
    /// Row of each kept key, per query.
    pub(crate) rows: Vec<Vec<u32>>,
}

impl TopKeys {
    fn empty(b: usize) -> Self {
        Self {
            sims: vec![Vec::new(); b],
            rows: vec![Vec::new(); b],
        }
    }
}

/// The best `k` keys of each query. `queries` is `B x d` (unit rows), `keys` is `N x d`.
pub(crate) fn top_keys(queries: &Tensor, keys: &Tensor, k: usize) -> Result<TopKeys> {
    let (b, _) = queries.dims2()?;
    let (n, _) = keys.dims2()?;
    if b == 0 || n == 0 || k == 0 {
        return Ok(TopKeys::empty(b));
    }
    if b <= FUSED_MAX_QUERIES && keys.device().is_cpu() {
        let (storage, layout) = keys.storage_and_layout();
        let slice = match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) => {
                Some(KeySlice::F32(&data[start..end]))
            }
            (Storage::Cpu(CpuStorage::F16(data)), Some((start, end))) => {
                Some(KeySlice::F16(&data[start..end]))
            }
            _ => None,
        };
        if let Some(slice) = slice {
            let queries: Vec<f32> = queries.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            return Ok(fused_cpu_scan(&queries, slice, b, k));
        }
    }
    let queries = queries
        .to_device(keys.device())?
        .to_dtype(keys.dtype())?
        .contiguous()?;
    let tile_bytes = if keys.device().is_cpu() {
        TILE_SCORE_BYTES
    } else {
        GPU_TILE_SCORE_BYTES
    };
    let tile_rows = (tile_bytes / (4 * b)).max(MIN_TILE_ROWS).min(n);
    let mut best: Option<(Tensor, Tensor)> = None;
    let mut start = 0;
    while start < n {
        let rows = tile_rows.min(n - start);
        let tile = keys.narrow(0, start, rows)?;
        let scores = queries.matmul(&tile.t()?)?;
        // CUDA ranks f16 and bf16 scores as the matmul wrote them; other devices take f32.
        let scores = if scores.device().is_cuda() {
            scores
        } else {
            scores.to_dtype(DType::F32)?
        };
        let local = topk_indices(&scores, k)?;
        let values = scores.gather(&local, 1)?;
        let rows_idx = local.broadcast_add(&Tensor::new(start as u32, keys.device())?)?;
        best = Some(match best {
            None => (values, rows_idx),
            Some((best_values, best_rows)) => {
                let values = Tensor::cat(&[&best_values, &values], 1)?;
                let rows_idx = Tensor::cat(&[&best_rows, &rows_idx], 1)?;
                let pos = topk_indices(&values, k)?;
                (values.gather(&pos, 1)?, rows_idx.gather(&pos, 1)?)
            }
        });
        start += rows;
    }
    match best {
        Some((values, rows)) => Ok(TopKeys {
            sims: values.to_dtype(DType::F32)?.to_vec2()?,
            rows: rows.to_vec2()?,
        }),
        None => Ok(TopKeys::empty(b)),
    }
}

/// Keys in their storage precision, as the fused scan reads them.
#[derive(Clone, Copy)]
enum KeySlice<'a> {
    F32(&'a [f32]),
    /// Converted to f32 one chunk at a time (F16C when the CPU has it, detected at run time),
    /// so a scan reads half the bytes of an f32 bank.
    F16(&'a [half::f16]),
}

impl KeySlice<'_> {
    fn len(&self) -> usize {
        match self {
            KeySlice::F32(s) => s.len(),
            KeySlice::F16(s) => s.len(),
        }
    }

    /// Key row `r` as f32: borrowed when no conversion is needed, else converted into `buf`
    /// (one row at a time, so the buffer stays in L1 and nothing large is allocated).
    fn row<'s>(&'s self, r: usize, buf: &'s mut [f32]) -> &'s [f32] {
        use half::slice::HalfFloatSliceExt;
        let d = buf.len();
        match self {
            KeySlice::F32(s) => &s[r * d..(r + 1) * d],
            KeySlice::F16(s) => {
                s[r * d..(r + 1) * d].convert_to_f32_slice(buf);
                buf
            }
        }
    }
}

/// Similarity and top-k in one pass over the keys on the CPU, chunks of keys in parallel.
/// Same result order as the tiled path: (similarity desc, row asc), since each chunk's list has
/// global rows and `merge_sorted` orders by the same rule.
fn fused_cpu_scan(queries: &[f32], keys: KeySlice<'_>, b: usize, k: usize) -> TopKeys {
    let d = queries.len() / b;
    let n = keys.len() / d;
    let per_chunk: Vec<Vec<Vec<(f32, u32)>>> = (0..n.div_ceil(FUSED_CHUNK_ROWS))
        .into_par_iter()
        .map(|c| {
            let first = c * FUSED_CHUNK_ROWS;
            let rows = FUSED_CHUNK_ROWS.min(n - first);
            let mut buf = vec![0f32; d];
            let mut scores = vec![0f32; b * rows];
            for r in 0..rows {
                let key = keys.row(first + r, &mut buf);
                for (i, query) in queries.chunks_exact(d).enumerate() {
                    scores[i * rows + r] = dot(query, key);
                }
            }
            scores
                .chunks_exact(rows)
                .map(|row| topk_row(row, first as u32, k))
                .collect()
        })
        .collect();
    let mut out = TopKeys::empty(b);
    for i in 0..b {
        let parts = per_chunk.iter().map(|chunk| chunk[i].clone()).collect();
        let best = merge_sorted(parts, k);
        out.sims[i] = best.iter().map(|p| p.0).collect();
        out.rows[i] = best.iter().map(|p| p.1).collect();
    }
    out
}

/// Dot product with 16 independent accumulators, so the compiler keeps several vector
/// registers busy instead of one serial chain of adds.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (a_body, a_tail) = a.split_at(a.len() - a.len() % 16);
    let (b_body, b_tail) = b.split_at(a_body.len());
    for (x, y) in a_body.chunks_exact(16).zip(b_body.chunks_exact(16)) {
        for j in 0..16 {
            acc[j] += x[j] * y[j];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}
