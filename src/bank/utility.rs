//! The device mirror of every memory's Q, so Phase B can gather and rank it with tensor ops.
//!
//! Invariant: `data[slot] == memories[slot].q` for every live slot (the host copy is the source of
//! truth; every write goes to the device first and to the host only once the device write has
//! succeeded, so a device error leaves both as they were).

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

const MIN_CAPACITY: usize = 64;

#[derive(Debug)]
pub(crate) struct UtilityVector {
    data: Tensor,
    len: usize,
}

impl UtilityVector {
    pub(crate) fn new(device: &Device) -> Result<Self> {
        Ok(Self {
            data: Tensor::zeros(MIN_CAPACITY, DType::F32, device)?,
            len: 0,
        })
    }

    /// The live Q values, a view.
    pub(crate) fn view(&self) -> Result<Tensor> {
        Ok(self.data.narrow(0, 0, self.len)?)
    }

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
        let grown = Tensor::zeros(grown_capacity, DType::F32, self.data.device())?;
        if self.len > 0 {
            grown.slice_set(&self.view()?, 0, 0)?;
        }
        self.data = grown;
        Ok(())
    }

    pub(crate) fn push(&mut self, values: &[f32]) -> Result<()> {
        self.reserve(values.len())?;
        if !values.is_empty() {
            let src = Tensor::from_slice(values, values.len(), self.data.device())?;
            self.data.slice_set(&src, 0, self.len)?;
        }
        self.len += values.len();
        Ok(())
    }

    /// Writes `values[i]` at `slots[i]`.
    pub(crate) fn set(&mut self, slots: &[u32], values: &[f32]) -> Result<()> {
        if slots.is_empty() {
            return Ok(());
        }
        let device = self.data.device();
        let idx = Tensor::from_slice(slots, slots.len(), device)?;
        let src = Tensor::from_slice(values, values.len(), device)?;
        self.data.scatter_set(&idx, &src, 0)?;
        Ok(())
    }

    /// Moves the last value into `slot` and shrinks by one (mirrors the memory table's swap-remove).
    pub(crate) fn swap_remove(&mut self, slot: usize, last_value: f32) -> Result<()> {
        let last = self.len - 1;
        if slot != last {
            self.set(&[slot as u32], &[last_value])?;
        }
        self.len -= 1;
        Ok(())
    }
}
