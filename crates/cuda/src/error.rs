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
    Tensor(#[from] encore_tensor::Error),
}

impl CudaError {
    pub(crate) fn capture(op: &str) -> Self {
        CudaError::CaptureViolation { op: op.to_string() }
    }

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
