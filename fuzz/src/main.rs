//! `encore-fuzz`: the stable-Rust mutation fuzzer of encore's parsers. Runs each target for
//! a fixed time in a memory-capped worker process and prints executions and failures;
//! exits 1 if any target failed. Failing inputs are saved; `--replay FILE` runs one again.
//!
//!     cargo run --release -p encore-fuzz -- --seconds 60            # every target
//!     cargo run --release -p encore-fuzz -- --target gguf --seconds 600
//!     cargo run -p encore-fuzz -- --target gguf --replay target/fuzz-artifacts/gguf-panic-....bin

use clap::Parser;
use encore_fuzz::runner::{self, RunConfig};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "encore-fuzz", about = "Mutation fuzzing of encore's file parsers (stable Rust)")]
struct Args {
    /// Target(s) to run (repeatable): gguf, safetensors, safetensors_index, config_json,
    /// tokenizer_json, chat_template, openai_request, or all.
    #[arg(long, default_value = "all")]
    target: Vec<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Mutation seed (0: from the clock; the seed used is printed).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Address-space cap of the worker process, MiB: an allocation past it aborts the
    /// worker and counts as a failure.
    #[arg(long, default_value_t = 4096)]
    mem_mb: u64,
    /// Seconds without a finished execution that count as a hang.
    #[arg(long, default_value_t = 10.0)]
    hang_secs: f64,
    /// Longest input, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_len: usize,
    /// Where failing inputs are saved.
    #[arg(long, default_value = "target/fuzz-artifacts")]
    artifacts: PathBuf,
    /// Extra inputs: the files of this folder and of its <target>/ subfolders.
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Write every target's seeds to DIR/<target>/ (a corpus for `cargo fuzz`) and exit.
    #[arg(long, value_name = "DIR")]
    write_seeds: Option<PathBuf>,
    /// Run this one input through --target in this process and report what happened.
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
    #[arg(long, hide = true)]
    worker: bool,
    #[arg(long, hide = true)]
    shared: Option<PathBuf>,
    #[arg(long, hide = true)]
    failures_log: Option<PathBuf>,
}

fn main() {
    let a = Args::parse();
    std::process::exit(match run(a) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    })
}

fn targets(a: &Args) -> Result<Vec<String>, String> {
    let mut v = Vec::new();
    for t in &a.target {
        if t == "all" {
            v.extend(encore_fuzz::TARGETS.iter().map(|(n, _)| n.to_string()));
        } else if encore_fuzz::target(t).is_some() {
            v.push(t.clone());
        } else {
            let known: Vec<&str> = encore_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
            return Err(format!("--target: unknown target `{t}` (known: {}, all)", known.join(", ")));
        }
    }
    Ok(v)
}

fn run(a: Args) -> Result<i32, String> {
    let targets = targets(&a)?;
    let seed = match a.seed {
        0 => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 | 1)
            .unwrap_or(1),
        s => s,
    };
    let cfg = |target: &str| RunConfig {
        target: target.to_string(),
        seconds: a.seconds,
        seed,
        mem_mb: a.mem_mb,
        hang_secs: a.hang_secs,
        max_len: a.max_len,
        artifacts: a.artifacts.clone(),
        corpus: a.corpus.clone(),
    };
    if a.worker {
        let (Some(shared), Some(log), [target]) = (&a.shared, &a.failures_log, targets.as_slice()) else {
            return Err("--worker needs --shared, --failures-log and one --target".into());
        };
        runner::worker(&cfg(target), shared, log).map_err(|e| e.to_string())?;
        return Ok(0);
    }
    if let Some(dir) = &a.write_seeds {
        for t in &targets {
            let d = dir.join(t);
            std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
            for (i, s) in encore_fuzz::seeds::seeds(t).iter().enumerate() {
                std::fs::write(d.join(format!("seed-{i}")), s).map_err(|e| format!("{}: {e}", d.display()))?;
            }
        }
        return Ok(0);
    }
    if let Some(file) = &a.replay {
        let [target] = targets.as_slice() else { return Err("--replay needs exactly one --target".into()) };
        let input = std::fs::read(file).map_err(|e| format!("--replay {}: {e}", file.display()))?;
        return match runner::replay(target, &input) {
            Ok(()) => {
                println!("{target}: {} bytes ran without a panic", input.len());
                Ok(0)
            }
            Err(msg) => {
                println!("{target}: panic: {msg}");
                Ok(1)
            }
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    println!("encore-fuzz: seed {seed}, {} s per target, memory cap {} MiB", a.seconds, a.mem_mb);
    let mut failed = false;
    for t in &targets {
        let report = runner::supervise(&cfg(t), &exe).map_err(|e| format!("{t}: {e}"))?;
        println!("{report}");
        failed |= !report.failures.is_empty();
    }
    Ok(i32::from(failed))
}
