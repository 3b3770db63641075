//! The `encore` binary: `generate` (text from a model), `chat` (an interactive REPL), `serve` (the OpenAI-compatible
//! server), `bench` (decode-step and launch benchmarks) and `bench serve` (a load generator
//! for any OpenAI-compatible server; also spelled `bench-serve`) and `bench soak` (a
//! bounded soak of an encore server). Flags are parsed here
//! into raw args, validated into the engine's config structs by each command; errors print
//! as one line and exit non-zero.

mod bench;
mod bench_serve;
mod bench_soak;
mod chat;
mod engine_args;
mod generate;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "encore", version, about = "LLM inference with clean CUDA-graph capture")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt (streams to stdout; timings to stderr).
    Generate(Box<generate::GenerateArgs>),
    /// Chat with the model interactively (multi-turn, streaming; /reset, /system, Ctrl-D).
    Chat(Box<chat::ChatArgs>),
    /// Benchmark decode steps (eager vs graphs x launch-parameter modes), or kernel launches.
    Bench(Box<bench::BenchArgs>),
    /// Serve the model over an OpenAI-compatible HTTP API (chat, completions, streaming).
    Serve(Box<serve::ServeArgs>),
    /// Load an OpenAI-compatible server and report TTFT / TPOT / ITL / throughput
    /// (`encore bench serve ...` is the same).
    BenchServe(Box<bench_serve::BenchServeArgs>),
    /// Soak an encore server: concurrent clients, random lengths, cancellations, for a
    /// fixed time; checks every request ends once and memory stays flat (`encore bench soak`).
    BenchSoak(Box<bench_soak::BenchSoakArgs>),
}

fn main() {
    // this binary also renders chat templates for itself, in a capped child process
    if std::env::args_os().nth(1).is_some_and(|a| a == encore_models::chat_worker::WORKER_ARG) {
        std::process::exit(encore_models::chat_worker::worker_main());
    }
    // `encore bench serve ...` is `encore bench-serve ...` (bench's own flags are others)
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.len() > 2 && args[1] == "bench" && (args[2] == "serve" || args[2] == "soak") {
        let name = if args[2] == "serve" { "bench-serve" } else { "bench-soak" };
        args.splice(1..3, [name.into()]);
    }
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Generate(args) => generate::run(*args),
        Command::Bench(args) => bench::run(*args),
        Command::Chat(args) => chat::run(*args),
        Command::Serve(args) => serve::run(*args),
        Command::BenchServe(args) => bench_serve::run(*args),
        Command::BenchSoak(args) => bench_soak::run(*args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
