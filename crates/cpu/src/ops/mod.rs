//! The op families of the CPU backend, one file each.

pub(crate) mod attention;
pub(crate) mod elementwise;
pub(crate) mod index;
pub(crate) mod matmul;
pub(crate) mod qmatmul;
pub(crate) mod rope;
pub(crate) mod rows;
pub(crate) mod sample;
