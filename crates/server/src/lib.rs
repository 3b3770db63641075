//! encore's OpenAI-compatible HTTP server (`encore serve`) and its load generator
//! (`encore bench serve`). The server talks to the engine thread (`encore_engine::worker`)
//! over channels and never touches the device: `routes` (endpoints, API-key gate),
//! `params` (request -> sampling parameters), `output` + `sse` (events -> responses and
//! streams), `openai` (wire types), `metrics` (Prometheus), `error` (OpenAI error bodies); `bench_serve` + `bench_stats` are the load generator.

pub mod bench_serve;
pub mod bench_stats;
pub mod error;
pub mod metrics;
pub mod openai;
pub mod output;
pub mod params;
pub mod routes;
pub mod server;
pub mod soak;
pub mod sse;

pub use error::{ApiError, ServerError};
pub use server::{run, serve, ServerConfig};
