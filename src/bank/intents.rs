//! The intent-key matrix: unit-vector rows on the bank's device, grown by doubling.
//!
//! Invariants:
//! - `data` is a contiguous `capacity x dim` tensor; rows `0..len` are keys, the rest is unused.
//! - Appending writes only the new rows in place (`slice_set`); when full, capacity doubles and
//!   the old rows are copied once, so n appends cost O(n d) amortised.
//! - Removal moves the last row into the hole (swap-remove), so rows stay dense and a scan never
//!   looks at dead keys. Row order is therefore creation order until a key is removed.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

const MIN_CAPACITY: usize = 64;

#[derive(Debug)]
pub(crate) struct IntentMatrix {
    data: Tensor,
    len: usize,
    dim: usize,
}

impl IntentMatrix {
    pub(crate) fn new(dim: usize, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self {
            data: Tensor::zeros((MIN_CAPACITY, dim), dtype, device)?,
            len: 0,
            dim,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn capacity(&self) -> usize {
        self.data.dim(0).unwrap_or(0)
    }

    pub(crate) fn device(&self) -> &Device {
        self.data.device()
    }

    /// The live keys, `len x dim`, a view without copy. Empty banks give a `0 x dim` view.
    pub(crate) fn view(&self) -> Result<Tensor> {
        Ok(self.data.narrow(0, 0, self.len)?)
    }

    /// Makes room for `extra` more rows (doubling), before anything is written, so a failed
    /// allocation leaves the matrix as it was.
    pub(crate) fn reserve(&mut self, extra: usize) -> Result<()> {
        let needed = self.len + extra;
        if needed <= self.capacity() {
            return Ok(());
        }
        let mut capacity = self.capacity().max(MIN_CAPACITY);
        while capacity < needed {
            capacity *= 2;
        }
        let grown = Tensor::zeros((capacity, self.dim), self.data.dtype(), self.data.device())?;
        if self.len > 0 {
            grown.slice_set(&self.view()?, 0, 0)?;
        }
        self.data = grown;
        Ok(())
    }

    /// Appends `rows` (`n x dim`, already unit-normalised, any dtype/device) and returns the
    /// index of the first new row.
    pub(crate) fn push_rows(&mut self, rows: &Tensor) -> Result<usize> {
        let n = rows.dim(0)?;
        self.reserve(n)?;
        let rows = rows
            .to_device(self.data.device())?
            .to_dtype(self.data.dtype())?
            .contiguous()?;
        let first = self.len;
        if n > 0 {
            self.data.slice_set(&rows, 0, first)?;
        }
        self.len += n;
        Ok(first)
    }

    /// Removes row `row` by moving the last row into it. Returns the old index of the row that
    /// moved (`None` when the removed row was the last one).
    pub(crate) fn swap_remove(&mut self, row: usize) -> Result<Option<usize>> {
        let last = self.len - 1;
        let moved = if row != last {
            // `copy` because slice_set refuses a source that shares the destination's storage.
            let last_row = self.data.narrow(0, last, 1)?.copy()?;
            self.data.slice_set(&last_row, 0, row)?;
            Some(last)
        } else {
            None
        };
        self.len -= 1;
        Ok(moved)
    }

    /// One key as f32 values (for tests, snapshots and dedup of small batches).
    pub(crate) fn row(&self, row: usize) -> Result<Vec<f32>> {
        Ok(self
            .data
            .narrow(0, row, 1)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_doubles_and_keeps_rows() {
        let mut m = IntentMatrix::new(3, DType::F32, &Device::Cpu).unwrap();
        for i in 0..200 {
            let r = Tensor::new(&[[i as f32, 1.0, 2.0]], &Device::Cpu).unwrap();
            assert_eq!(m.push_rows(&r).unwrap(), i);
        }
        assert_eq!(m.len(), 200);
        assert_eq!(m.capacity(), 256);
        assert_eq!(m.row(137).unwrap(), vec![137.0, 1.0, 2.0]);
        assert_eq!(m.swap_remove(5).unwrap(), Some(199));
        assert_eq!(m.row(5).unwrap(), vec![199.0, 1.0, 2.0]);
        assert_eq!(m.swap_remove(198).unwrap(), None);
        assert_eq!(m.view().unwrap().dims(), &[198, 3]);
    }
}
