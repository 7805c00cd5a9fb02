//! The key matrix: unit-vector rows on the index's device, grown by doubling.
//!
//! Invariants:
//! - `data` is a contiguous `capacity x dim` tensor; rows `0..len` are keys, the rest is unused.
//! - Appending writes only the new rows in place (`slice_set`); when full, capacity doubles and
//!   the old rows are copied once, so n appends cost O(n d) amortised.
//! - Removal shifts the rows after the removed one up by one (in bounded chunks), so rows keep
//!   their order: the index keeps rows sorted by key id, which makes "lower row" and "lower key
//!   id" the same tie rule on every device. A removal costs O((len - row) d).

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

const MIN_CAPACITY: usize = 64;
/// Rows moved per step of a removal's shift: bounds the temporary copy to a few MiB.
const SHIFT_ROWS: usize = 8192;

#[derive(Debug)]
pub(crate) struct KeyMatrix {
    data: Tensor,
    len: usize,
    dim: usize,
}

impl KeyMatrix {
    pub(crate) fn new(dim: usize, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self {
            data: Tensor::zeros((MIN_CAPACITY, dim), dtype, device)?,
            len: 0,
            dim,
        })
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.data.dim(0).unwrap_or(0)
    }

    pub(crate) fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub(crate) fn device(&self) -> &Device {
        self.data.device()
    }

    /// The live keys, `len x dim`, a view without copy. Empty matrices give a `0 x dim` view.
    pub(crate) fn view(&self) -> Result<Tensor> {
        Ok(self.data.narrow(0, 0, self.len)?)
    }

    /// Makes room for `extra` more rows (doubling), before anything is written, so a failed
    /// allocation leaves the matrix as it was.
    pub(crate) fn reserve(&mut self, extra: usize) -> Result<()> {
        let needed = self.len + extra;
        let capacity = self.data.dim(0)?;
        if needed <= capacity {
            return Ok(());
        }
        let mut grown_capacity = capacity.max(MIN_CAPACITY);
        while grown_capacity < needed {
            grown_capacity *= 2;
        }
        let grown = Tensor::zeros(
            (grown_capacity, self.dim),
            self.data.dtype(),
            self.data.device(),
        )?;
        if self.len > 0 {
            grown.slice_set(&self.view()?, 0, 0)?;
        }
        self.data = grown;
        Ok(())
    }

    /// Appends `rows` (`n x dim`, already unit-normalised, any dtype/device). Nothing changes
    /// when it fails.
    pub(crate) fn push_rows(&mut self, rows: &Tensor) -> Result<()> {
        let n = rows.dim(0)?;
        self.reserve(n)?;
        let rows = rows
            .to_device(self.data.device())?
            .to_dtype(self.data.dtype())?
            .contiguous()?;
        if n > 0 {
            self.data.slice_set(&rows, 0, self.len)?;
        }
        self.len += n;
        Ok(())
    }

    /// Removes row `row`, shifting the later rows up by one. An error part-way leaves the rows
    /// after `row` partly shifted: the caller must treat the matrix as lost.
    pub(crate) fn remove(&mut self, row: usize) -> Result<()> {
        let mut at = row;
        while at + 1 < self.len {
            let n = SHIFT_ROWS.min(self.len - at - 1);
            // `copy` because slice_set refuses a source that shares the destination's storage.
            let moved = self.data.narrow(0, at + 1, n)?.copy()?;
            self.data.slice_set(&moved, 0, at)?;
            at += n;
        }
        self.len -= 1;
        Ok(())
    }

    /// One key as f32 values.
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
    fn growth_doubles_and_removal_keeps_the_order() {
        let mut m = KeyMatrix::new(3, DType::F32, &Device::Cpu).unwrap();
        for i in 0..200 {
            let r = Tensor::new(&[[i as f32, 1.0, 2.0]], &Device::Cpu).unwrap();
            m.push_rows(&r).unwrap();
        }
        assert_eq!(m.len(), 200);
        assert_eq!(m.capacity(), 256);
        assert_eq!(m.row(137).unwrap(), vec![137.0, 1.0, 2.0]);
        m.remove(5).unwrap();
        assert_eq!(m.row(5).unwrap(), vec![6.0, 1.0, 2.0]);
        assert_eq!(m.row(198).unwrap(), vec![199.0, 1.0, 2.0]);
        m.remove(198).unwrap();
        assert_eq!(m.view().unwrap().dims(), &[198, 3]);
        let firsts: Vec<f32> = (0..198).map(|r| m.row(r).unwrap()[0]).collect();
        let want: Vec<f32> = (0..199).filter(|&i| i != 5).map(|i| i as f32).collect();
        assert_eq!(firsts, want);
    }

    #[test]
    fn removal_shifts_across_several_chunks() {
        let n = 2 * SHIFT_ROWS + 17;
        let mut m = KeyMatrix::new(1, DType::F32, &Device::Cpu).unwrap();
        let rows: Vec<f32> = (0..n).map(|i| i as f32).collect();
        m.push_rows(&Tensor::from_vec(rows, (n, 1), &Device::Cpu).unwrap())
            .unwrap();
        m.remove(3).unwrap();
        let got: Vec<f32> = m.view().unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = (0..n).filter(|&i| i != 3).map(|i| i as f32).collect();
        assert_eq!(got, want);
    }
}
