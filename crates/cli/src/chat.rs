//! `encore chat`: an interactive multi-turn conversation on the model's chat template. The
//! engine is built once; each turn renders the whole history and adds it as a request, so
//! the prefix cache finds the earlier turns' blocks and only the new text is prefilled.
//! Answers stream as they are generated. `/reset` forgets the history, `/system TEXT` sets
//! the system message (and resets), `/exit` or Ctrl-D ends, Ctrl-C stops the answer being
//! written (at the prompt it does nothing).

use crate::engine_args::EngineArgs;
use crate::generate::SamplingArgs;
use anyhow::{Context, Result};
use clap::Args;
use encore_engine::sampler::find_stop;
use encore_engine::{build_engine, Engine, FinishReason, SamplingParams};
use encore_models::chat::{ChatTemplate, Message};
use encore_models::tokenizer::Tokenizer;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// The system message to start with.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(a: ChatArgs) -> Result<()> {
    let params = a.sampling.params()?;
    let cfg = a.engine.engine_config(1)?;
    let (path, files) = a.engine.open_model()?;
    let tok = files.tokenizer.as_ref().with_context(|| format!("{}: no tokenizer.json", path.display()))?;
    let tmpl = files.chat_template.as_ref().with_context(|| format!("{}: has no chat template", path.display()))?;
    let (mut engine, report) = build_engine(&files, &cfg)?;
    eprintln!("encore chat: {} on {}; {}", path.display(), report.device_name, report.kv_line());
    eprintln!(
        "/reset forgets the conversation, /system TEXT sets the system message, Ctrl-C stops an answer, Ctrl-D exits"
    );

    let interrupted = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, interrupted.clone()).context("installing Ctrl-C")?;
    let mut chat = Conversation { system: a.system.clone(), history: Vec::new(), turn: 0 };
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        interrupted.store(false, Ordering::SeqCst);
        match stdin.lock().read_line(&mut line) {
            Ok(0) => break, // Ctrl-D
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                writeln!(out)?;
                continue;
            }
            Err(e) => return Err(e).context("reading standard input"),
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                chat.history.clear();
                eprintln!("(conversation reset)");
                continue;
            }
            _ => {}
        }
        if let Some(s) = line.strip_prefix("/system") {
            chat.system = Some(s.trim().to_string()).filter(|s| !s.is_empty());
            chat.history.clear();
            eprintln!("(system message set; conversation reset)");
            continue;
        }
        chat.history.push(Message::new("user", line));
        interrupted.store(false, Ordering::SeqCst);
        let answer = chat.answer(&mut engine, tok, tmpl, &params, &interrupted, &mut out)?;
        chat.history.push(Message::new("assistant", &answer));
    }
    writeln!(out)?;
    Ok(())
}

struct Conversation {
    system: Option<String>,
    history: Vec<Message>,
    turn: u64,
}

impl Conversation {
    /// Generate and stream one answer to the history; returns its text.
    fn answer(
        &mut self,
        engine: &mut Engine,
        tok: &Tokenizer,
        tmpl: &ChatTemplate,
        params: &SamplingParams,
        interrupted: &AtomicBool,
        out: &mut impl Write,
    ) -> Result<String> {
        let mut msgs: Vec<Message> = self.system.iter().map(|s| Message::new("system", s)).collect();
        msgs.extend(self.history.iter().cloned());
        let ids = tok.encode(&tmpl.render(&msgs, true)?, false)?;
        self.turn += 1;
        let p = SamplingParams { seed: params.seed.wrapping_add(self.turn), ..params.clone() };
        let id = match engine.add_request(ids, p) {
            Ok(id) => id,
            Err(e) => {
                // e.g. the conversation outgrew the context: say so, keep the REPL alive
                self.history.pop();
                eprintln!("error: {e} (/reset starts over)");
                return Ok(String::new());
            }
        };
        let mut dec = tok.stream_decoder(true);
        let (mut text, mut printed) = (String::new(), 0);
        let holdback = params.stop.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
        'gen: while engine.has_unfinished() {
            if interrupted.swap(false, Ordering::SeqCst) {
                engine.abort(id);
                write!(out, " [stopped]")?;
                break;
            }
            for o in engine.step()? {
                if let Some(t) = o.token {
                    text.push_str(&dec.step(t)?);
                }
                let stop = find_stop(&text, &params.stop);
                if let Some(cut) = stop {
                    text.truncate(cut);
                    engine.finish(id, FinishReason::Stop);
                }
                let mut upto = if stop.is_some() { text.len() } else { text.len().saturating_sub(holdback) };
                while !text.is_char_boundary(upto) {
                    upto -= 1;
                }
                if upto > printed {
                    write!(out, "{}", &text[printed..upto])?;
                    out.flush()?;
                    printed = upto;
                }
                if o.finished.is_some() || stop.is_some() {
                    break 'gen;
                }
            }
        }
        if find_stop(&text, &params.stop).is_none() {
            text.push_str(&dec.flush()?);
        }
        writeln!(out, "{}", &text[printed.min(text.len())..])?;
        Ok(text)
    }
}
