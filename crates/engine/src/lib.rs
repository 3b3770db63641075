//! The engine: picks the backend at run time, runs prefill and decode steps over
//! preallocated buffers (eagerly or as captured graphs), samples, and drives generation.

pub mod buckets;
mod error;
pub mod generate;
pub mod runner;
pub mod sampler;

pub use error::EngineError;
pub use generate::{generate, DecodeStep, Eager, Flow, GenStats, Generation};
pub use runner::{DecodeRow, ModelRunner, RunnerConfig};
pub use sampler::{Sampler, SamplingParams};
