//! Phase A's similarity scan: queries against every intent key, in tiles, with a running top-k.
//!
//! Invariants:
//! - Memory: only one `B x tile_rows` score tile exists at a time (about `TILE_SCORE_BYTES`), never
//!   the whole `B x N` matrix, so a batch of 256 queries over 1M keys stays small.
//! - Order: the running best list is sorted by (similarity desc, key row asc). Each tile's top-k
//!   has global rows above every row already kept, and is concatenated after the running list,
//!   so on equal similarity the merge's "lower position" is "lower row": the tie rule holds across
//!   tiles without comparing rows.
//! - Every step is a tensor op on the bank's device; only the final `B x k` lists come back.

use candle_core::{DType, Tensor};

use super::topk::topk_indices;
use crate::error::Result;

/// Target size of one score tile, in bytes.
const TILE_SCORE_BYTES: usize = 16 << 20;
/// Smallest tile worth a matmul call.
const MIN_TILE_ROWS: usize = 4096;

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
    let queries = queries
        .to_device(keys.device())?
        .to_dtype(keys.dtype())?
        .contiguous()?;
    let tile_rows = (TILE_SCORE_BYTES / (4 * b)).max(MIN_TILE_ROWS).min(n);
    let mut best: Option<(Tensor, Tensor)> = None;
    let mut start = 0;
    while start < n {
        let rows = tile_rows.min(n - start);
        let tile = keys.narrow(0, start, rows)?;
        let scores = queries.matmul(&tile.t()?)?.to_dtype(DType::F32)?;
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
            sims: values.to_vec2()?,
            rows: rows.to_vec2()?,
        }),
        None => Ok(TopKeys::empty(b)),
    }
}
