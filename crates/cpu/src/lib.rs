//! encore's reference CPU backend: plain, readable loops (rayon on the outer loops, the
//! `gemm` crate for matmul), every CUDA kernel is tested against it, and it is the users'
//! slow path. Also home of [`parity`], the backend-parity suite written once and run on
//! every backend.

mod cpu;
mod ops;
pub mod parity;
mod storage;
mod strided;

pub use cpu::Cpu;
pub use ops::sample::sample_row;
pub use storage::CpuStorage;
