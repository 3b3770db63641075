//! A contiguous tensor in host memory: what loaders produce and what backends upload and
//! download. Raw little-endian bytes plus dtype and dims.

use crate::{DType, Error, Result};
use half::{bf16, f16};

#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub dtype: DType,
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

impl HostTensor {
    pub fn new(dtype: DType, dims: Vec<usize>, data: Vec<u8>) -> Result<Self> {
        let numel: usize = dims.iter().product();
        if numel * dtype.size_in_bytes() != data.len() {
            return Err(Error::ElementCount {
                op: "HostTensor::new",
                numel: data.len() / dtype.size_in_bytes(),
                shape: dims,
            });
        }
        Ok(HostTensor { dtype, dims, data })
    }

    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    pub fn from_f32(dims: &[usize], values: &[f32]) -> Self {
        HostTensor { dtype: DType::F32, dims: dims.to_vec(), data: bytemuck::cast_slice(values).to_vec() }
    }

    pub fn from_u32(dims: &[usize], values: &[u32]) -> Self {
        HostTensor { dtype: DType::U32, dims: dims.to_vec(), data: bytemuck::cast_slice(values).to_vec() }
    }

    pub fn from_i32(dims: &[usize], values: &[i32]) -> Self {
        HostTensor { dtype: DType::I32, dims: dims.to_vec(), data: bytemuck::cast_slice(values).to_vec() }
    }

    /// Values converted to f32 (integers too, exactly below 2^24).
    pub fn to_f32(&self) -> Vec<f32> {
        let d = &self.data;
        match self.dtype {
            DType::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            DType::BF16 => d.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::F16 => d.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            DType::U32 => d.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect(),
            DType::I32 => d.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect(),
        }
    }

    pub fn to_u32(&self) -> Result<Vec<u32>> {
        match self.dtype {
            DType::U32 | DType::I32 => {
                Ok(self.data.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
            }
            dt => Err(Error::UnsupportedDType { op: "HostTensor::to_u32", dtype: dt }),
        }
    }

    /// The same values in another float dtype (round to nearest even).
    pub fn cast(&self, dtype: DType) -> Result<HostTensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        if !dtype.is_float() || !self.dtype.is_float() {
            return Err(Error::UnsupportedDType { op: "HostTensor::cast", dtype });
        }
        Ok(Self::from_f32_as(&self.dims, &self.to_f32(), dtype))
    }

    /// f32 values stored as `dtype`.
    pub fn from_f32_as(dims: &[usize], values: &[f32], dtype: DType) -> HostTensor {
        let data = match dtype {
            DType::F32 => bytemuck::cast_slice(values).to_vec(),
            DType::BF16 => values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
            DType::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
            DType::U32 => values.iter().flat_map(|&v| (v as u32).to_le_bytes()).collect(),
            DType::I32 => values.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
        };
        HostTensor { dtype, dims: dims.to_vec(), data }
    }
}
