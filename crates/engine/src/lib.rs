//! The engine: requests in, tokens out. `llm_engine` (add_request / step / abort) stands on
//! `scheduler` (who runs this step), `block_manager` (paged KV blocks, prefix cache) and
//! `model_runner` (one forward step over preallocated buffers, eager or as captured decode
//! graphs, `graph_runner`); `session` picks the backend and builds it all from model files;
//! `generate` and the server's `worker` drive it.

#[cfg(feature = "cuda")]
pub mod bench;
pub mod bench_cpu;
pub mod block_manager;
pub mod buckets;
pub mod detokenize;
pub mod device;
mod error;
pub mod generate;
#[cfg(feature = "cuda")]
pub mod graph_runner;
pub mod llm_engine;
pub mod model_runner;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
pub mod session;
pub mod worker;

pub use device::Device;
pub use error::EngineError;
pub use generate::{generate, Flow, GenStats, Generation};
pub use llm_engine::{EngineCounters, EngineGauges, LlmEngine, StepOutput, TokenLogprob};
pub use model_runner::{DecodeRow, Eager, ModelRunner, RunnerConfig, SeqChunk, StepPlan, StepRunner, StepShape};
pub use sampler::{Sampler, SamplingParams};
pub use sequence::{FinishReason, RequestId};
pub use session::{build_engine, run_generate, Engine, EngineConfig, RunReport};
pub use worker::{EngineHandle, EngineInfo, Event, QueueLimits, Submission, SubmitError, Usage, WorkerStats};
