//! The `encore` binary: `generate` (text from a model) and `bench` (decode-step and
//! launch benchmarks). Flags are parsed here into raw args, validated into the engine's
//! config structs by each command; errors print as one line and exit non-zero.

mod bench;
mod chat;
mod engine_args;
mod generate;

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
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(*args),
        Command::Bench(args) => bench::run(*args),
        Command::Chat(args) => chat::run(*args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
