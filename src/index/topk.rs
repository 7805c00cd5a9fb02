//! Top-k along the last dimension without sorting the row: a candle custom op.
//!
//! `topk(scores, k)` takes a `B x N` f32 tensor and returns `B x min(k, N)` u32 column indices,
//! ordered by score descending, ties by lower index (the spec's deterministic tie rule, given
//! that callers lay columns out in tie-break order). Values are read back with `gather`, as
//! candle's own `arg_sort` does.
//!
//! CPU: each row keeps a buffer of at most 2k candidates and a threshold (the k-th best seen so
//! far, as tantivy's `TopNComputer`): an element enters only if it beats the threshold, and when
//! the buffer fills, `select_nth_unstable` keeps the best k and raises the threshold. That is
//! O(N) per row with one compare for most elements, plus O(k log k) for the final sort. Rows run
//! in parallel; a single long row is split into parallel chunks whose top-k are merged.
//!
//! CUDA: the kernels of `kernels/topk.cu` (radix select, then a sort of the k survivors), for
//! k up to 1024; a larger k goes through the CPU op.
//!
//! Metal (and CUDA builds' tests of the fallback): a chunked top-k from candle's own ops.
//! `arg_sort_last_dim` is only trusted on rows of at most 1024 columns (candle issues #2361,
//! #2570), so rows are cut into 1024-column chunks, each chunk keeps its best k, and the
//! survivors are reduced again until one chunk is left. When k is too large for chunks to shrink
//! the row (2k > 1024), the row goes through the CPU op instead: slower, never wrong.

use std::cmp::Ordering;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;

/// Widest row the chunked fallback hands to `arg_sort_last_dim`.
const SORT_CHUNK: usize = 1024;
/// Below this many columns a single row is not worth splitting across threads.
const PARALLEL_ROW_MIN: usize = 1 << 16;

/// Score descending, then index ascending: the order of the result.
#[inline]
pub(crate) fn better(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// The best `k` of `(value, base + position)` over `values`, sorted best first.
pub(crate) fn topk_row(values: &[f32], base: u32, k: usize) -> Vec<(f32, u32)> {
    let mut top = RunningTopK::new(k);
    top.push(values, base);
    top.finish()
}

/// Scores checked at once against the threshold before any is looked at alone.
const SKIP_BLOCK: usize = 32;

/// A top-k fed in pieces (tiles of one row, in increasing position), so a scan over many tiles
/// keeps its threshold instead of starting each tile from nothing.
pub(crate) struct RunningTopK {
    k: usize,
    // Invariant: `buffer` holds every element seen so far that may still be in the top k; all
    // elements dropped are worse than `threshold`, which is the k-th best seen once the buffer
    // has been compacted at least once (NEG_INFINITY before, so everything enters).
    buffer: Vec<(f32, u32)>,
    threshold: f32,
    compacted: bool,
}

impl RunningTopK {
    pub(crate) fn new(k: usize) -> Self {
        Self {
            k,
            // Grown on demand beyond this: a large k over a short row never reserves 2k.
            buffer: Vec::with_capacity(k.saturating_mul(2).min(1 << 12)),
            threshold: f32::NEG_INFINITY,
            compacted: false,
        }
    }

    /// Offers `(values[i], base + i)`; positions must be above every one offered before.
    pub(crate) fn push(&mut self, values: &[f32], base: u32) {
        if self.k == 0 {
            return;
        }
        let mut offset = 0u32;
        for block in values.chunks(SKIP_BLOCK) {
            // Once the threshold is set, most blocks hold nothing above it: one vectorised max
            // rejects all of them at once.
            if self.compacted
                && block.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) <= self.threshold
            {
                offset += block.len() as u32;
                continue;
            }
            for (i, &v) in block.iter().enumerate() {
                self.offer(v, base + offset + i as u32);
            }
            offset += block.len() as u32;
        }
    }

    #[inline]
    fn offer(&mut self, v: f32, position: u32) {
        let k = self.k;
        // Equal to the threshold loses: the k-th best already has a lower position.
        if self.compacted && v <= self.threshold {
            return;
        }
        self.buffer.push((v, position));
        if self.buffer.len() == k.saturating_mul(2) {
            self.buffer.select_nth_unstable_by(k - 1, better);
            self.buffer.truncate(k);
            // select_nth leaves the k-th best at k-1 with only better elements before it, so
            // its value is the smallest kept; everything offered later has a higher position
            // and must beat it strictly.
            self.threshold = self.buffer[k - 1].0;
            self.compacted = true;
        }
    }

    /// The best `k` offered, best first.
    pub(crate) fn finish(mut self) -> Vec<(f32, u32)> {
        self.buffer.sort_unstable_by(better);
        self.buffer.truncate(self.k);
        self.buffer
    }
}

/// Merges several best-first candidate lists into the best `k`.
pub(crate) fn merge_sorted(parts: Vec<Vec<(f32, u32)>>, k: usize) -> Vec<(f32, u32)> {
    let mut all: Vec<(f32, u32)> = parts.into_iter().flatten().collect();
    all.sort_unstable_by(better);
    all.truncate(k);
    all
}

/// Top-k of one row, splitting long rows across threads.
fn topk_row_parallel(values: &[f32], k: usize) -> Vec<(f32, u32)> {
    let threads = rayon::current_num_threads();
    if values.len() < PARALLEL_ROW_MIN || threads < 2 {
        return topk_row(values, 0, k);
    }
    let chunk = values.len().div_ceil(threads);
    let parts = values
        .par_chunks(chunk)
        .enumerate()
        .map(|(c, part)| topk_row(part, (c * chunk) as u32, k))
        .collect();
    merge_sorted(parts, k)
}

/// The top-k custom op (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TopK {
    pub(crate) k: usize,
}

impl CustomOp1 for TopK {
    fn name(&self) -> &'static str {
        "memrl-topk"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("memrl-topk expects f32 scores, got {:?}", storage.dtype())
        };
        let (rows, cols) = layout.shape().dims2()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("memrl-topk expects contiguous scores")
        };
        if cols > u32::MAX as usize {
            candle_core::bail!("memrl-topk: {cols} columns do not fit u32 indices")
        }
        let data = &data[start..end];
        let k = self.k.min(cols);
        let mut out = vec![0u32; rows * k];
        if k > 0 {
            if rows >= rayon::current_num_threads() {
                out.par_chunks_mut(k)
                    .zip(data.par_chunks(cols))
                    .for_each(|(dst, row)| write_indices(dst, &topk_row(row, 0, k)));
            } else {
                for (dst, row) in out.chunks_mut(k).zip(data.chunks(cols)) {
                    write_indices(dst, &topk_row_parallel(row, k));
                }
            }
        }
        Ok((CpuStorage::U32(out), Shape::from((rows, k))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::kernels::cuda::topk(storage, layout, self.k)
    }
}

fn write_indices(dst: &mut [u32], best: &[(f32, u32)]) {
    for (d, &(_, i)) in dst.iter_mut().zip(best) {
        *d = i;
    }
}

/// `B x min(k, N)` u32 indices of the best scores of each row (see the module docs).
pub(crate) fn topk_indices(scores: &Tensor, k: usize) -> Result<Tensor> {
    // The CUDA kernels rank f16 and bf16 scores as they are (half the bytes per pass).
    let native = scores.device().is_cuda()
        && matches!(scores.dtype(), DType::F32 | DType::F16 | DType::BF16);
    let scores = if native {
        scores.contiguous()?
    } else {
        scores.to_dtype(DType::F32)?.contiguous()?
    };
    match scores.device() {
        Device::Cpu => Ok(scores.apply_op1_no_bwd(&TopK { k })?),
        #[cfg(feature = "cuda")]
        Device::Cuda(_) if k.min(scores.dim(1)?) <= crate::kernels::cuda::SORT_MAX => {
            Ok(scores.apply_op1_no_bwd(&TopK { k })?)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(_) => {
            // k above the kernel's sort width: exact on the CPU, then back.
            let idx = scores
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?
                .apply_op1_no_bwd(&TopK { k })?;
            Ok(idx.to_device(scores.device())?)
        }
        _ => chunked_topk_indices(&scores, k),
    }
}

/// The candle-ops top-k used on devices without a kernel; public to the crate so tests can run
/// it on the CPU against the custom op.
pub(crate) fn chunked_topk_indices(scores: &Tensor, k: usize) -> Result<Tensor> {
    let (_rows, cols) = scores.dims2()?;
    let k = k.min(cols);
    if cols <= SORT_CHUNK {
        return Ok(scores
            .arg_sort_last_dim(false)?
            .narrow(1, 0, k)?
            .contiguous()?);
    }
    if 2 * k > SORT_CHUNK {
        // Chunks of SORT_CHUNK columns would not shrink the row: use the CPU op.
        let idx = scores
            .to_device(&Device::Cpu)?
            .apply_op1_no_bwd(&TopK { k })?;
        return Ok(idx.to_device(scores.device())?);
    }
    // One reduction round: every chunk keeps its best k, with global column indices.
    let mut values = Vec::new();
    let mut indices = Vec::new();
    let mut start = 0;
    while start < cols {
        let width = SORT_CHUNK.min(cols - start);
        let chunk = scores.narrow(1, start, width)?.contiguous()?;
        let keep = k.min(width);
        let local = chunk
            .arg_sort_last_dim(false)?
            .narrow(1, 0, keep)?
            .contiguous()?;
        values.push(chunk.gather(&local, 1)?);
        let offset = Tensor::new(start as u32, scores.device())?;
        indices.push(local.broadcast_add(&offset)?);
        start += width;
    }
    // Survivors keep ascending global index among equal scores: chunks are concatenated in
    // column order and arg_sort keeps earlier columns first on ties, so the next round's "lower
    // position" is still "lower column".
    let values = Tensor::cat(&values, 1)?;
    let indices = Tensor::cat(&indices, 1)?;
    let pos = chunked_topk_indices(&values, k)?;
    Ok(indices.gather(&pos, 1)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The plain reference: a full sort by (score desc, index asc).
    pub(crate) fn reference(values: &[f32], k: usize) -> Vec<u32> {
        let mut idx: Vec<u32> = (0..values.len() as u32).collect();
        idx.sort_by(|&a, &b| {
            values[b as usize]
                .total_cmp(&values[a as usize])
                .then(a.cmp(&b))
        });
        idx.truncate(k);
        idx
    }

    fn pseudo_random(n: usize, seed: u64, levels: u64) -> Vec<f32> {
        let mut r = crate::rng::SplitMix64::new(seed);
        (0..n)
            .map(|_| (r.below(levels) as f32) / levels as f32)
            .collect()
    }

    #[test]
    fn row_topk_matches_full_sort_including_ties() {
        for (n, k, levels) in [
            (0, 3, 10),
            (5, 10, 3),
            (1000, 7, 5),
            (1000, 1, 1000),
            (4096, 64, 50),
            (300, 300, 4),
        ] {
            let v = pseudo_random(n, n as u64 + k as u64, levels);
            let got: Vec<u32> = topk_row(&v, 0, k).into_iter().map(|p| p.1).collect();
            assert_eq!(got, reference(&v, k), "n={n} k={k}");
        }
    }

    #[test]
    fn op_on_batches_and_long_single_rows() {
        for (rows, cols, k) in [
            (3, 100_000, 10),
            (1, 200_000, 100),
            (8, 2000, 2000),
            (1, 1, 5),
        ] {
            let v = pseudo_random(rows * cols, 42 + rows as u64, 997);
            let t = Tensor::from_vec(v.clone(), (rows, cols), &Device::Cpu).unwrap();
            let got: Vec<Vec<u32>> = topk_indices(&t, k).unwrap().to_vec2().unwrap();
            for r in 0..rows {
                assert_eq!(
                    got[r],
                    reference(&v[r * cols..(r + 1) * cols], k),
                    "rows={rows} cols={cols} k={k} row {r}"
                );
            }
        }
    }

    #[test]
    fn chunked_fallback_agrees_with_the_op() {
        for (rows, cols, k) in [
            (2, 1024, 5),
            (2, 1025, 5),
            (3, 5000, 17),
            (1, 70_000, 100),
            (2, 3000, 600),
        ] {
            let v = pseudo_random(rows * cols, cols as u64, 211);
            let t = Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap();
            let want: Vec<Vec<u32>> = t.apply_op1_no_bwd(&TopK { k }).unwrap().to_vec2().unwrap();
            let got: Vec<Vec<u32>> = chunked_topk_indices(&t, k).unwrap().to_vec2().unwrap();
            assert_eq!(got, want, "rows={rows} cols={cols} k={k}");
        }
    }

    #[test]
    fn non_contiguous_input_is_handled() {
        let t = Tensor::new(&[[1f32, 5.0], [3.0, 2.0], [4.0, 0.0]], &Device::Cpu)
            .unwrap()
            .t()
            .unwrap();
        let got: Vec<Vec<u32>> = topk_indices(&t, 2).unwrap().to_vec2().unwrap();
        assert_eq!(got, vec![vec![2, 1], vec![0, 1]]);
    }
}
