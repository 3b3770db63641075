//! `encore serve`: the OpenAI-compatible server. The shared engine flags
//! ([`EngineArgs`]) are validated into an `EngineConfig` (the engine thread's), the rest into
//! a `ServerConfig` (HTTP: address, key, limits);
//! the port is bound before the model loads, and requests get 503 until it is ready.

use crate::engine_args::EngineArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use encore_engine::{Device, QueueLimits};
use encore_models::chat_worker::Isolation;
use encore_server::ServerConfig;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// The `model` id clients send (default: the model folder or file name, or the `org/name`).
    #[arg(long)]
    served_model_name: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long)]
    api_key: Option<String>,
    /// Sequences decoded together (default: 64 on cuda, 8 on cpu).
    #[arg(long)]
    max_num_seqs: Option<usize>,
    /// Requests in the engine at once; more wait in the queue.
    #[arg(long, default_value_t = 256)]
    max_concurrent: usize,
    /// Requests waiting beyond --max-concurrent; more are refused with 429.
    #[arg(long, default_value_t = 1024)]
    max_queue: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let cfg = config(a)?;
    encore_server::run(cfg)?;
    Ok(())
}

fn config(a: ServeArgs) -> Result<ServerConfig> {
    if a.max_concurrent == 0 {
        bail!("--max-concurrent must be at least 1");
    }
    if a.max_body_bytes == 0 {
        bail!("--max-body-bytes must be at least 1");
    }
    if a.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        bail!("--api-key must not be empty");
    }
    let mut engine = a.engine.engine_config(0)?;
    engine.max_num_seqs = a.max_num_seqs.unwrap_or(if engine.device == Device::Cpu { 8 } else { 64 });
    Ok(ServerConfig {
        host: a.host,
        port: a.port,
        model: a.engine.model,
        served_model_name: a.served_model_name,
        api_key: a.api_key,
        max_body_bytes: a.max_body_bytes,
        limits: QueueLimits { max_concurrent: a.max_concurrent, max_queue: a.max_queue },
        engine,
        template_worker: Some(Isolation::this_exe().context("finding this executable (it renders chat templates)")?),
    })
}
