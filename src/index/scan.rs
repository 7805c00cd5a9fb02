//! Phase A's similarity scan: queries against every intent key, in tiles, with a running top-k.
//!
//! Invariants:
//! - Memory: only one `B x tile_rows` score tile exists at a time (about `TILE_SCORE_BYTES` on the
//!   CPU, `GPU_TILE_SCORE_BYTES` elsewhere), never the whole `B x N` matrix beyond that, so a
//!   batch of 256 queries over 1M keys stays small on the CPU.
//! - Order: the running best list is sorted by (similarity desc, key row asc). Each tile's top-k
//!   has global rows above every row already kept, and is concatenated after the running list,
//!   so on equal similarity the merge's "lower position" is "lower row": the tie rule holds across
//!   tiles without comparing rows. On the CPU each query's `RunningTopK` sees its rows in
//!   increasing order, which gives the same rule.
//! - On a GPU every step is a tensor op on the device; only the final `B x k` lists come back.
//!   The CPU has three paths, all exact: up to `FUSED_MAX_QUERIES` queries over f32/f16 keys, a
//!   fused loop (`simd.rs` kernels picked at run time) with no score tile; otherwise tiles of
//!   matrix products whose scores feed a running top-k per query, with f16/bf16 tiles widened
//!   to f32 first. In front of both, over enough f32/f16 keys, the int8 sketch
//!   (`top_keys_sketched`, `sketch.rs`) returns the fused loop's lists at any batch size.

use candle_core::{CpuStorage, DType, Storage, Tensor};
use rayon::prelude::*;

use super::simd::{self, Keys};
use super::sketch::{self, Int8Sketch};
use super::topk::{merge_sorted, topk_indices, topk_row, RunningTopK};
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
/// once for all queries without writing a score tile. Measured at N = 1M, d = 384, 2 cores (AVX-512
/// kernels): B = 8 100 ms fused vs about 140 ms tiled; B = 16 and 32 fused lose (181 and 547 ms
/// vs 210 ms tiled at 32): the fused loop loads a query vector for every multiply-add.
const FUSED_MAX_QUERIES: usize = 8;
/// Most rows of a widened (f16 or bf16 -> f32) tile on the CPU: 24 MiB of f32 keys at d = 384.
const WIDEN_MAX_ROWS: usize = 16_384;
/// Keys per parallel work item of the fused loop (24 MiB of f32 keys at d = 384): few chunks,
/// so the final merge of the chunks' top-k lists stays small (1024-row chunks left a merge of
/// 100k candidates per query, about a tenth of a B = 1 call over 1M keys).
const FUSED_CHUNK_ROWS: usize = 16_384;

/// From this many keys on, a scan of f32 or f16 keys on the CPU reads the int8 sketch first
/// (`sketch.rs`). Measured at d = 384, 2 cores, B = 1 / 8: 4096 keys 0.13 / 1.1 ms with the
/// sketch vs 0.31 / 1.4 ms without; at 1024 keys B = 8 loses (0.44 vs 0.30 ms).
const SKETCH_MIN_KEYS: usize = 4096;
/// And at least this many keys per query: over few keys a large batch keeps many keys per
/// query near its threshold, and the matrix products win. Measured at d = 384, 2 cores, k 10:
/// B = 256 over 16,384 keys 38 ms with the sketch vs 25 ms tiled, level at 32,768 (41 vs 42
/// ms), ahead at 65,536 (48-62 vs 81-99 ms); B = 64 level at 16,384, ahead at 32,768.
const SKETCH_MIN_KEYS_PER_QUERY: usize = 256;

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

/// The fused scan's lists ([`fused_cpu_scan`], at any batch size), read through the keys' int8
/// sketch when that pays (many CPU f32 or f16 keys); `None` when it does not apply or too many
/// keys survive the sketch, and the caller runs [`top_keys`]. Up to `FUSED_MAX_QUERIES` queries
/// these are [`top_keys`]' lists bit for bit; above, [`top_keys`] takes matrix products whose
/// rounding differs in the last bits.
pub(crate) fn top_keys_sketched(
    queries: &[f32],
    b: usize,
    keys: &Tensor,
    sketch: &Int8Sketch,
    k: usize,
) -> Option<TopKeys> {
    let (n, _) = keys.dims2().ok()?;
    if b == 0 || n < SKETCH_MIN_KEYS.max(SKETCH_MIN_KEYS_PER_QUERY * b) || sketch.len() != n {
        return None;
    }
    let (storage, layout) = keys.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    match &*storage {
        Storage::Cpu(CpuStorage::F32(data)) => {
            sketch::top_keys(queries, b, Keys::F32(&data[start..end]), sketch, k.min(n))
        }
        Storage::Cpu(CpuStorage::F16(data)) => {
            sketch::top_keys(queries, b, Keys::F16(&data[start..end]), sketch, k.min(n))
        }
        _ => None,
    }
}

/// The best `k` keys of each query. `queries` is `B x d` (unit rows), `keys` is `N x d`.
pub(crate) fn top_keys(queries: &Tensor, keys: &Tensor, k: usize) -> Result<TopKeys> {
    let (b, _) = queries.dims2()?;
    let (n, _) = keys.dims2()?;
    if b == 0 || n == 0 || k == 0 {
        return Ok(TopKeys::empty(b));
    }
    // Nothing below sizes a buffer by a k beyond the keys there are.
    let k = k.min(n);
    if b <= FUSED_MAX_QUERIES && keys.device().is_cpu() {
        let (storage, layout) = keys.storage_and_layout();
        let slice = match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) => {
                Some(Keys::F32(&data[start..end]))
            }
            (Storage::Cpu(CpuStorage::F16(data)), Some((start, end))) => {
                Some(Keys::F16(&data[start..end]))
            }
            _ => None,
        };
        if let Some(slice) = slice {
            let queries: Vec<f32> = queries.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            return Ok(fused_cpu_scan(&queries, slice, b, k));
        }
    }
    if keys.device().is_cpu() {
        return tiled_cpu_scan(queries, keys, k);
    }
    let queries = queries
        .to_device(keys.device())?
        .to_dtype(keys.dtype())?
        .contiguous()?;
    let tile_rows = (GPU_TILE_SCORE_BYTES / (4 * b)).max(MIN_TILE_ROWS).min(n);
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

/// The CPU's tiled scan: the same tiles and matrix products as the device path, but each
/// query's top-k runs on the score tile in place and carries its threshold from tile to tile, so
/// after the first tiles most scores are rejected with one compare (no per-tile top-k, gather,
/// concatenation and merge).
fn tiled_cpu_scan(queries: &Tensor, keys: &Tensor, k: usize) -> Result<TopKeys> {
    // Reduced-precision tiles are widened to f32 before the product: gemm's f16 kernels run at
    // a fraction of its f32 rate, while widening a tile costs a few percent of its product.
    let widen = keys.dtype() != DType::F32;
    let queries = queries.to_dtype(DType::F32)?.contiguous()?;
    let (b, _) = queries.dims2()?;
    let (n, _) = keys.dims2()?;
    let mut tile_rows = (TILE_SCORE_BYTES / (4 * b)).max(MIN_TILE_ROWS).min(n);
    if widen {
        // Each widened tile is a fresh f32 copy of its keys: keep it near the score tile's size.
        tile_rows = tile_rows.min(WIDEN_MAX_ROWS);
    }
    let mut running: Vec<RunningTopK> = (0..b).map(|_| RunningTopK::new(k)).collect();
    let mut start = 0;
    while start < n {
        let rows = tile_rows.min(n - start);
        let tile = keys.narrow(0, start, rows)?;
        let tile = if widen { widen_cpu(&tile)? } else { tile };
        let scores = queries
            .matmul(&tile.t()?)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let (storage, layout) = scores.storage_and_layout();
        let data = match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(data)), Some((from, to))) => &data[from..to],
            _ => {
                return Err(candle_core::Error::Msg(
                    "a CPU score tile is not contiguous f32".into(),
                )
                .into())
            }
        };
        running
            .par_iter_mut()
            .zip(data.par_chunks(rows))
            .for_each(|(top, row)| top.push(row, start as u32));
        start += rows;
    }
    let mut out = TopKeys::empty(b);
    for (i, top) in running.into_iter().enumerate() {
        let best = top.finish();
        out.sims[i] = best.iter().map(|p| p.0).collect();
        out.rows[i] = best.iter().map(|p| p.1).collect();
    }
    Ok(out)
}

/// A CPU tile of f16 or bf16 keys as f32, converted with the CPU's vector instructions (F16C
/// for f16) in parallel; candle's own conversion goes one element at a time.
fn widen_cpu(tile: &Tensor) -> Result<Tensor> {
    use half::slice::HalfFloatSliceExt;
    let (storage, layout) = tile.storage_and_layout();
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Ok(tile.to_dtype(DType::F32)?);
    };
    let mut wide = vec![0f32; end - start];
    match &*storage {
        Storage::Cpu(CpuStorage::F16(data)) => wide
            .par_chunks_mut(1 << 16)
            .zip(data[start..end].par_chunks(1 << 16))
            .for_each(|(dst, src)| src.convert_to_f32_slice(dst)),
        Storage::Cpu(CpuStorage::BF16(data)) => wide
            .par_chunks_mut(1 << 16)
            .zip(data[start..end].par_chunks(1 << 16))
            .for_each(|(dst, src)| src.convert_to_f32_slice(dst)),
        _ => return Ok(tile.to_dtype(DType::F32)?),
    }
    Ok(Tensor::from_vec(wide, tile.shape(), tile.device())?)
}

/// Similarity and top-k in one pass over the keys on the CPU, chunks of keys in parallel.
/// Same result order as the tiled path: (similarity desc, row asc), since each chunk's list has
/// global rows and `merge_sorted` orders by the same rule.
pub(crate) fn fused_cpu_scan(queries: &[f32], keys: Keys<'_>, b: usize, k: usize) -> TopKeys {
    let d = queries.len() / b;
    let n = match keys {
        Keys::F32(s) => s.len(),
        Keys::F16(s) => s.len(),
    } / d;
    let per_chunk: Vec<Vec<Vec<(f32, u32)>>> = (0..n.div_ceil(FUSED_CHUNK_ROWS))
        .into_par_iter()
        .map(|c| {
            let first = c * FUSED_CHUNK_ROWS;
            let rows = FUSED_CHUNK_ROWS.min(n - first);
            let span = first * d..(first + rows) * d;
            let chunk = match keys {
                Keys::F32(s) => Keys::F32(&s[span]),
                Keys::F16(s) => Keys::F16(&s[span]),
            };
            let mut scores = vec![0f32; b * rows];
            simd::scores(queries, b, chunk, d, &mut scores);
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
