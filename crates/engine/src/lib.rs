//! The engine: picks the backend at run time, runs prefill and decode steps over
//! preallocated buffers (eagerly or as captured graphs), samples, and drives generation.

#[cfg(feature = "cuda")]
pub mod bench;
pub mod buckets;
pub mod device;
mod error;
pub mod generate;
#[cfg(feature = "cuda")]
pub mod graph_runner;
pub mod runner;
pub mod sampler;
pub mod session;

pub use device::Device;
pub use error::EngineError;
pub use generate::{generate, DecodeStep, Eager, Flow, GenStats, Generation};
pub use runner::{DecodeRow, ModelRunner, RunnerConfig};
pub use sampler::{Sampler, SamplingParams};
pub use session::{run_generate, EngineConfig, RunReport};
