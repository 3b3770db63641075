//! One request's answer, built from its engine events: a whole response (non-streaming) or
//! the chunks of a stream, for chat completions or completions. JSON values only; the SSE
//! framing is `sse.rs`.

use crate::openai::{
    AssistantMessage, ChatChoice, ChatDelta, ChatLogprobs, Completion, CompletionChoice, CompletionLogprobs,
    TokenLogprob, TopLogprob, Usage,
};
use encore_engine::{EngineInfo, FinishReason};
use encore_models::tokenizer::Tokenizer;
use serde_json::Value;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

pub struct Output {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    tokenizer: Option<Arc<Tokenizer>>,
    wants_logprobs: bool,
    /// Text so far (non-streaming), or its length (streaming: text offsets).
    text: String,
    chat_logprobs: Vec<TokenLogprob>,
    completion_logprobs: CompletionLogprobs,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A random request id with `prefix` (`chatcmpl-`, `cmpl-`).
pub fn request_id(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

/// JSON has no infinities: a log-probability of -inf is written as -9999 (as vLLM does).
fn finite(lp: f32) -> f32 {
    if lp.is_finite() {
        lp
    } else {
        -9999.0
    }
}

impl Output {
    pub fn new(kind: Kind, model: &str, info: &EngineInfo, wants_logprobs: bool) -> Self {
        let prefix = if kind == Kind::Chat { "chatcmpl-" } else { "cmpl-" };
        Output {
            kind,
            id: request_id(prefix),
            created: unix_now(),
            model: model.to_string(),
            tokenizer: info.tokenizer.clone(),
            wants_logprobs,
            text: String::new(),
            chat_logprobs: Vec::new(),
            completion_logprobs: CompletionLogprobs::default(),
        }
    }

    fn token_text(&self, id: u32) -> String {
        match &self.tokenizer {
            Some(t) => t.decode(&[id], false).unwrap_or_default(),
            None => format!("token_id:{id}"),
        }
    }

    /// Adds a token's log-probabilities to those kept for the answer.
    fn add_logprob(&mut self, id: u32, lp: &encore_engine::TokenLogprob) {
        let token = self.token_text(id);
        match self.kind {
            Kind::Chat => {
                let top = lp
                    .top
                    .iter()
                    .map(|&(t, l)| {
                        let token = self.token_text(t);
                        TopLogprob { bytes: token.as_bytes().to_vec(), token, logprob: finite(l) }
                    })
                    .collect();
                let bytes = token.as_bytes().to_vec();
                self.chat_logprobs.push(TokenLogprob { token, logprob: finite(lp.logprob), bytes, top_logprobs: top });
            }
            Kind::Completion => {
                let c = &mut self.completion_logprobs;
                c.text_offset.push(self.text.len());
                c.tokens.push(token);
                c.token_logprobs.push(finite(lp.logprob));
                let top = lp.top.iter().map(|&(t, l)| (self.token_text(t), Value::from(finite(l)))).collect();
                self.completion_logprobs.top_logprobs.push(top);
            }
        }
    }

    /// Non-streaming: keep a token's text and logprobs for the answer.
    pub fn push(&mut self, text: &str, id: u32, lp: Option<&encore_engine::TokenLogprob>) {
        if let (true, Some(lp)) = (self.wants_logprobs, lp) {
            self.add_logprob(id, lp);
        }
        self.text.push_str(text);
    }

    /// The whole answer.
    pub fn response(mut self, tail: &str, finish: FinishReason, usage: encore_engine::Usage) -> Value {
        self.text.push_str(tail);
        let finish_reason = Some(finish.as_str());
        let usage = Some(Usage::from(usage));
        let (id, created, model) = (self.id, self.created, self.model);
        match self.kind {
            Kind::Chat => {
                let choice = ChatChoice {
                    index: 0,
                    message: Some(AssistantMessage { role: "assistant", content: self.text }),
                    delta: None,
                    logprobs: self.wants_logprobs.then_some(ChatLogprobs { content: self.chat_logprobs }),
                    finish_reason,
                };
                json(&Completion { id, object: "chat.completion", created, model, choices: vec![choice], usage })
            }
            Kind::Completion => {
                let choice = CompletionChoice {
                    index: 0,
                    text: self.text,
                    logprobs: self.wants_logprobs.then_some(self.completion_logprobs),
                    finish_reason,
                };
                json(&Completion { id, object: "text_completion", created, model, choices: vec![choice], usage })
            }
        }
    }

    /// Streaming: the chunk that opens a chat stream (the assistant's role).
    pub fn first_chunk(&self) -> Option<Value> {
        let delta = ChatDelta { role: Some("assistant"), content: Some(String::new()) };
        (self.kind == Kind::Chat).then(|| self.chat_chunk(delta, None, None))
    }

    /// Streaming: the chunk for one token event; None when it carries nothing.
    pub fn token_chunk(&mut self, text: &str, id: u32, lp: Option<&encore_engine::TokenLogprob>) -> Option<Value> {
        let lp = lp.filter(|_| self.wants_logprobs);
        if text.is_empty() && lp.is_none() {
            return None;
        }
        if let Some(lp) = lp {
            self.add_logprob(id, lp);
        }
        let chunk = self.chunk(text, None);
        self.text.push_str(text);
        Some(chunk)
    }

    /// Streaming: the last chunk of the choice, with the held-back text and the reason.
    pub fn final_chunk(&mut self, tail: &str, finish: FinishReason) -> Value {
        let chunk = self.chunk(tail, Some(finish.as_str()));
        self.text.push_str(tail);
        chunk
    }

    /// Streaming: `stream_options.include_usage`'s closing chunk (no choices).
    pub fn usage_chunk(&self, usage: encore_engine::Usage) -> Value {
        let usage = Some(Usage::from(usage));
        let (id, created, model) = (self.id.clone(), self.created, self.model.clone());
        match self.kind {
            Kind::Chat => json(&Completion::<ChatChoice> {
                id,
                object: "chat.completion.chunk",
                created,
                model,
                choices: vec![],
                usage,
            }),
            Kind::Completion => json(&Completion::<CompletionChoice> {
                id,
                object: "text_completion",
                created,
                model,
                choices: vec![],
                usage,
            }),
        }
    }

    /// A chunk with `text` and the logprobs gathered since the last chunk.
    fn chunk(&mut self, text: &str, finish_reason: Option<&'static str>) -> Value {
        match self.kind {
            Kind::Chat => {
                let content = if text.is_empty() && finish_reason.is_some() { None } else { Some(text.to_string()) };
                let lp = self.wants_logprobs.then(|| ChatLogprobs { content: std::mem::take(&mut self.chat_logprobs) });
                self.chat_chunk(ChatDelta { role: None, content }, lp, finish_reason)
            }
            Kind::Completion => {
                let lp = self.wants_logprobs.then(|| std::mem::take(&mut self.completion_logprobs));
                let choice = CompletionChoice { index: 0, text: text.to_string(), logprobs: lp, finish_reason };
                json(&Completion {
                    id: self.id.clone(),
                    object: "text_completion",
                    created: self.created,
                    model: self.model.clone(),
                    choices: vec![choice],
                    usage: None,
                })
            }
        }
    }

    fn chat_chunk(
        &self,
        delta: ChatDelta,
        logprobs: Option<ChatLogprobs>,
        finish_reason: Option<&'static str>,
    ) -> Value {
        let choice = ChatChoice { index: 0, message: None, delta: Some(delta), logprobs, finish_reason };
        json(&Completion {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices: vec![choice],
            usage: None,
        })
    }
}

fn json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("response types serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use encore_engine::{RunReport, Usage as EngineUsage};

    fn info() -> EngineInfo {
        EngineInfo {
            path: "m".into(),
            report: RunReport::default(),
            max_model_len: 64,
            vocab_size: 512,
            tokenizer: None,
            chat_template: None,
        }
    }

    fn lp() -> encore_engine::TokenLogprob {
        encore_engine::TokenLogprob { logprob: -0.5, top: vec![(3, -0.5), (4, f32::NEG_INFINITY)] }
    }

    #[test]
    fn chat_response_has_message_usage_and_logprobs() {
        let mut o = Output::new(Kind::Chat, "m", &info(), true);
        o.push("Hel", 3, Some(&lp()));
        let usage = EngineUsage { prompt_tokens: 4, completion_tokens: 2, cached_tokens: 1 };
        let v = o.response("lo", FinishReason::Stop, usage);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], "Hello");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["total_tokens"], 6);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
        let c = &v["choices"][0]["logprobs"]["content"][0];
        assert_eq!((c["token"].as_str(), c["logprob"].as_f64()), (Some("token_id:3"), Some(-0.5)));
        assert_eq!(c["top_logprobs"][1]["logprob"].as_f64(), Some(-9999.0));
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    }

    #[test]
    fn completion_stream_chunks_carry_text_and_parallel_logprobs() {
        let mut o = Output::new(Kind::Completion, "m", &info(), true);
        assert!(o.first_chunk().is_none());
        let c = o.token_chunk("ab", 3, Some(&lp())).unwrap();
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["choices"][0]["text"], "ab");
        assert_eq!(c["choices"][0]["logprobs"]["tokens"][0], "token_id:3");
        assert_eq!(c["choices"][0]["logprobs"]["top_logprobs"][0]["token_id:3"].as_f64(), Some(-0.5));
        let c = o.token_chunk("c", 4, Some(&lp())).unwrap();
        assert_eq!(c["choices"][0]["logprobs"]["text_offset"][0], 2);
        let last = o.final_chunk("", FinishReason::Length);
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        let u = o.usage_chunk(EngineUsage { prompt_tokens: 1, completion_tokens: 2, cached_tokens: 0 });
        assert_eq!((u["choices"].as_array().unwrap().len(), &u["usage"]["completion_tokens"]), (0, &2.into()));
    }

    #[test]
    fn chat_stream_opens_with_the_role_and_skips_empty_tokens() {
        let mut o = Output::new(Kind::Chat, "m", &info(), false);
        assert_eq!(o.first_chunk().unwrap()["choices"][0]["delta"]["role"], "assistant");
        assert!(o.token_chunk("", 5, Some(&lp())).is_none(), "held-back text and no logprobs asked: no chunk");
        let c = o.token_chunk("x", 5, None).unwrap();
        assert_eq!(c["choices"][0]["delta"]["content"], "x");
        assert!(c["choices"][0]["logprobs"].is_null());
        let last = o.final_chunk("", FinishReason::Stop);
        assert!(last["choices"][0]["delta"].as_object().unwrap().is_empty());
    }
}
