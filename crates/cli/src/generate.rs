//! `encore generate`: resolve the model (default: SmolLM2-135M-Instruct), tokenise the
//! prompt(s) (optionally through the chat template), run the engine, stream text.

use crate::engine_args::EngineArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use encore_engine::{run_generate, Flow, SamplingParams};
use encore_models::chat::Message;
use std::io::{IsTerminal, Read, Write};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Prompt text; repeat for a batch of prompts decoded together. `-` reads one prompt from
    /// standard input (also the default when no prompt is given and stdin is not a terminal).
    #[arg(long)]
    prompt: Vec<String>,
    /// Print one JSON object per prompt (index, prompt, text, finish_reason, tokens) instead
    /// of text.
    #[arg(long)]
    jsonl: bool,
    /// A file with one prompt per line (added after any --prompt).
    #[arg(long)]
    prompts_file: Option<std::path::PathBuf>,
    /// Wrap each prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message for --chat.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// Sampling flags (generate, chat).
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// 0 keeps every token.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Subtracted from the logit of every token generated so far (OpenAI's; -2..2).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub presence_penalty: f32,
    /// Subtracted per occurrence in the generated tokens (OpenAI's; -2..2).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub frequency_penalty: f32,
    /// Stop when the output contains this text (repeatable); the text is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn params(&self) -> Result<SamplingParams> {
        let params = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            seed: self.seed,
            ..Default::default()
        };
        params.validate().map_err(anyhow::Error::msg)?;
        Ok(params)
    }
}

/// True when a write failed because the reader went away (EPIPE): the output simply ends.
/// Other write errors are real and reported.
fn quiet(r: std::io::Result<()>) -> bool {
    match r {
        Ok(()) => false,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => true,
        Err(e) => {
            eprintln!("error: writing the output: {e}");
            std::process::exit(1);
        }
    }
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let params = a.sampling.params()?;
    let mut prompts = a.prompt.clone();
    let piped = a.prompt.is_empty() && a.prompts_file.is_none() && !std::io::stdin().is_terminal();
    if piped || prompts.iter().any(|p| p == "-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading the prompt from standard input")?;
        let text = text.trim_end_matches('\n').to_string();
        if piped {
            if !text.trim().is_empty() {
                prompts.push(text);
            }
        } else {
            prompts.iter_mut().filter(|p| *p == "-").for_each(|p| *p = text.clone());
        }
    }
    if let Some(f) = &a.prompts_file {
        let text = std::fs::read_to_string(f).with_context(|| format!("--prompts-file {}", f.display()))?;
        prompts.extend(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string));
    }
    if prompts.is_empty() {
        bail!("--prompt: give at least one prompt (or --prompts-file, or text on standard input)");
    }
    if a.system.is_some() && !a.chat {
        bail!("--system needs --chat");
    }

    let cfg = a.engine.engine_config(prompts.len())?;
    let t0 = Instant::now();
    let (path, files) = a.engine.open_model()?;
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

    let single = prompts.len() == 1 && !a.jsonl;
    let mut decoders: Vec<_> = prompts.iter().map(|_| tok.stream_decoder(true)).collect();
    let mut texts = vec![String::new(); prompts.len()];
    let mut printed = 0usize;
    let stop = &params.stop;
    let holdback = stop.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
    let mut stdout = std::io::stdout().lock();
    let mut io_error = None;
    let mut closed = false; // stdout went away (e.g. `| head`): stop quietly, exit 0
                            // the prompt is echoed with the first token (not before: loading may still fail)
    let mut echo = single && !a.chat;
    let (gen, report) = run_generate(&files, &cfg, &ids, &params, |s, id| {
        if closed {
            return Flow::Stop;
        }
        if std::mem::take(&mut echo) {
            closed |= quiet(write!(stdout, "{}", prompts[0]));
        }
        let piece = match decoders[s].step(id) {
            Ok(p) => p,
            Err(e) => {
                io_error = Some(anyhow::Error::from(e));
                return Flow::Stop;
            }
        };
        texts[s].push_str(&piece);
        let stop_at = encore_engine::sampler::find_stop(&texts[s], stop);
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
                closed |= quiet(write!(stdout, "{}", &texts[s][printed..upto]).and_then(|_| stdout.flush()));
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
        if encore_engine::sampler::find_stop(&texts[s], stop).is_none() {
            texts[s].push_str(&d.flush()?);
        }
    }
    let finish = |i: usize| gen.finish[i].map_or("length", |f| f.as_str());
    let printing = (|| -> std::io::Result<()> {
        if closed {
            return Ok(());
        }
        if single {
            if echo {
                write!(stdout, "{}", prompts[0])?;
            }
            writeln!(stdout, "{}", &texts[0][printed..])?;
        } else if a.jsonl {
            for (i, (p, t)) in prompts.iter().zip(&texts).enumerate() {
                let line = serde_json::json!({"index": i, "prompt": p, "text": t, "finish_reason": finish(i),
                    "tokens": gen.tokens[i].len()});
                writeln!(stdout, "{line}")?;
            }
        } else {
            for (i, (p, t)) in prompts.iter().zip(&texts).enumerate() {
                writeln!(stdout, "=== [{i}] ({} tokens, {})\n{p}{t}", gen.tokens[i].len(), finish(i))?;
            }
        }
        stdout.flush()
    })();
    if quiet(printing) {
        return Ok(());
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
        eprintln!("warning: steps of {bucket} token rows run eagerly (capture failed): {why}");
    }
    Ok(())
}
