//! The one error type of encore-cuda. Driver and cuBLAS failures name the call that failed;
//! misuse while the stream is capturing is `CaptureViolation { op }`. With the `cuda`
//! feature this file also holds the two helpers that turn raw status codes into it.

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("{call} failed: {msg}")]
    Driver { call: &'static str, msg: String },
    #[error("cuBLAS {call} failed: {msg}")]
    Blas { call: &'static str, msg: String },
    /// Host<->device interaction, allocation outside the pool, synchronisation, a module load
    /// or a ParamCache miss while the stream is capturing.
    #[error("capture violation: {op} is not allowed while the stream is capturing")]
    CaptureViolation { op: String },
    #[error("parameter cache is full ({capacity} bytes)")]
    CacheFull { capacity: usize },
    /// No driver library, no device with that ordinal, or the crate was built without `cuda`.
    #[error("CUDA is not available: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Tensor(encore_tensor::Error),
}

/// A tensor-layer error; its `CaptureViolation` stays a capture violation here, so an op
/// that went through the backend contract inside `graph::capture` still reads as one.
impl From<encore_tensor::Error> for CudaError {
    fn from(e: encore_tensor::Error) -> Self {
        match e {
            encore_tensor::Error::CaptureViolation { op } => CudaError::CaptureViolation { op },
            other => CudaError::Tensor(other),
        }
    }
}

impl CudaError {
    pub(crate) fn capture(op: &str) -> Self {
        CudaError::CaptureViolation { op: op.to_string() }
    }

    /// True for `CaptureViolation` (what a decode-graph runner falls back to eager on).
    pub fn is_capture_violation(&self) -> bool {
        matches!(self, CudaError::CaptureViolation { .. })
    }
}

impl From<CudaError> for encore_tensor::Error {
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::CaptureViolation { op } => encore_tensor::Error::CaptureViolation { op },
            CudaError::Tensor(e) => e,
            other => encore_tensor::Error::Backend { backend: "cuda", msg: other.to_string() },
        }
    }
}

/// `CUresult` -> `Result`, naming the driver call (`cuMemAlloc_v2`, ...) in the error.
#[cfg(feature = "cuda")]
pub(crate) fn drv(call: &'static str, r: cudarc::driver::sys::CUresult) -> Result<(), CudaError> {
    use cudarc::driver::sys::CUresult;
    if r == CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    let e = cudarc::driver::result::DriverError(r);
    let msg = match (e.error_name(), e.error_string()) {
        (Ok(n), Ok(s)) => format!("{} ({})", n.to_string_lossy(), s.to_string_lossy()),
        _ => format!("{r:?}"),
    };
    Err(CudaError::Driver { call, msg })
}

/// `cublasStatus_t` -> `Result`, naming the cuBLAS call.
#[cfg(feature = "cuda")]
pub(crate) fn blas(call: &'static str, s: cudarc::cublas::sys::cublasStatus_t) -> Result<(), CudaError> {
    if s == cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Ok(());
    }
    Err(CudaError::Blas { call, msg: format!("{s:?}") })
}

/// `cublasLtStatus` (cuBLASLt has its own copy of the enum) -> `Result`.
#[cfg(feature = "cuda")]
pub(crate) fn blas_lt(call: &'static str, s: cudarc::cublaslt::sys::cublasStatus_t) -> Result<(), CudaError> {
    if s == cudarc::cublaslt::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Ok(());
    }
    Err(CudaError::Blas { call, msg: format!("{s:?}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_violations_survive_the_round_trip_through_the_tensor_error() {
        let e: encore_tensor::Error = CudaError::capture("allocation").into();
        assert!(matches!(&e, encore_tensor::Error::CaptureViolation { op } if op == "allocation"));
        let back = CudaError::from(e);
        assert!(back.is_capture_violation(), "{back:?}");
        let other = CudaError::from(encore_tensor::Error::TooLarge { op: "copy", numel: 3 });
        assert!(matches!(other, CudaError::Tensor(encore_tensor::Error::TooLarge { .. })));
        let b: encore_tensor::Error = CudaError::Driver { call: "cuLaunchKernel", msg: "boom".into() }.into();
        assert!(b.to_string().contains("cuLaunchKernel failed: boom"), "{b}");
    }
}
