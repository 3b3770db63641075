//! Request -> engine: the prompt's token ids (chat messages through the model's template)
//! and the [`SamplingParams`], checked against the model. Every refusal is a 400 naming
//! the JSON field. `max_tokens` defaults to what the prompt leaves of the context, as vLLM.

use crate::error::ApiError;
use crate::openai::{ChatCompletionRequest, ChatMessage, CompletionRequest, Content, Prompt, Sampling};
use encore_engine::{EngineInfo, SamplingParams};
use encore_models::chat::Message;

/// A request the engine can take.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    pub stream: bool,
    pub include_usage: bool,
    /// Where the prompt came from (`messages` or `prompt`), for errors.
    pub prompt_field: &'static str,
}

/// Most alternatives a logprobs request may ask for.
pub const MAX_TOP_LOGPROBS: u64 = 20;

pub fn chat(req: ChatCompletionRequest, info: &EngineInfo) -> Result<Prepared, ApiError> {
    if let Some(tools) = &req.tools {
        if !tools.is_empty() {
            return Err(ApiError::bad_request("tools are not supported", Some("tools")));
        }
    }
    if let Some(f) = &req.response_format {
        if f.kind != "text" {
            return Err(ApiError::bad_request(
                format!("response_format `{}` is not supported (only `text`)", f.kind),
                Some("response_format"),
            ));
        }
    }
    let logprobs = match (req.logprobs, req.top_logprobs) {
        (Some(true), n) => Some(top_n(n.unwrap_or(0), "top_logprobs")?),
        (_, Some(n)) if n > 0 => {
            return Err(ApiError::bad_request("top_logprobs needs `logprobs: true`", Some("top_logprobs")))
        }
        _ => None,
    };
    let (max_tokens, max_field) = match (req.max_tokens, req.max_completion_tokens) {
        (_, Some(n)) => (Some(n), "max_completion_tokens"),
        (n, None) => (n, "max_tokens"),
    };
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty", Some("messages")));
    }
    let text = render_chat(&req.messages, info, true)?;
    let prompt = encode(info, &text, false, "messages")?;
    finish(req.sampling(), prompt, "messages", max_tokens, max_field, logprobs, info)
}

pub fn completion(req: CompletionRequest, info: &EngineInfo) -> Result<Prepared, ApiError> {
    if req.echo == Some(true) {
        return Err(ApiError::bad_request("echo is not supported", Some("echo")));
    }
    if req.best_of.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("best_of: only 1 is supported", Some("best_of")));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request("suffix is not supported", Some("suffix")));
    }
    let logprobs = req.logprobs.map(|n| top_n(n, "logprobs")).transpose()?;
    let sampling = req.sampling();
    let one = "prompt: one prompt per request (n=1, no batches)";
    let prompt = match req.prompt {
        Prompt::Text(t) => encode(info, &t, true, "prompt")?,
        Prompt::Ids(ids) => ids,
        Prompt::Texts(mut v) if v.len() == 1 => encode(info, &v.remove(0), true, "prompt")?,
        Prompt::IdLists(mut v) if v.len() == 1 => v.remove(0),
        Prompt::Texts(v) if v.is_empty() => Vec::new(),
        _ => return Err(ApiError::bad_request(one, Some("prompt"))),
    };
    let max_tokens = sampling.max_tokens;
    finish(sampling, prompt, "prompt", max_tokens, "max_tokens", logprobs, info)
}

fn top_n(n: u64, field: &str) -> Result<usize, ApiError> {
    if n > MAX_TOP_LOGPROBS {
        return Err(ApiError::bad_request(format!("{field} must be at most {MAX_TOP_LOGPROBS}, got {n}"), Some(field)));
    }
    Ok(n as usize)
}

/// The chat template applied to `messages` (text parts of list contents joined).
pub fn render_chat(
    messages: &[ChatMessage],
    info: &EngineInfo,
    add_generation_prompt: bool,
) -> Result<String, ApiError> {
    let template = info.chat_template.as_ref().ok_or_else(|| {
        ApiError::bad_request("this model has no chat template: use /v1/completions", Some("messages"))
    })?;
    let mut msgs = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let content = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        _ => {
                            let field = format!("messages[{i}].content[{j}]");
                            let msg = format!("{field}: only text parts are supported, got `{}`", p.kind);
                            return Err(ApiError::bad_request(msg, Some(&field)));
                        }
                    }
                }
                text
            }
        };
        msgs.push(Message::new(&m.role, &content));
    }
    template.render(&msgs, add_generation_prompt).map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))
}

pub fn encode(info: &EngineInfo, text: &str, add_special: bool, field: &str) -> Result<Vec<u32>, ApiError> {
    let tok = info.tokenizer.as_ref().ok_or_else(|| {
        ApiError::bad_request("this model has no tokenizer: send the prompt as token ids", Some(field))
    })?;
    tok.encode(text, add_special).map_err(|e| ApiError::internal(e.to_string()))
}

fn finish(
    s: Sampling,
    prompt: Vec<u32>,
    prompt_field: &'static str,
    max_tokens: Option<u64>,
    max_field: &str,
    logprobs: Option<usize>,
    info: &EngineInfo,
) -> Result<Prepared, ApiError> {
    if s.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("n: only n=1 is supported", Some("n")));
    }
    let top_k = match s.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::bad_request(format!("top_k must be -1, 0 or positive, got {k}"), Some("top_k")))
        }
    };
    let max_len = info.max_model_len;
    if prompt.is_empty() {
        return Err(ApiError::bad_request(format!("{prompt_field} is empty"), Some(prompt_field)));
    }
    if prompt.len() >= max_len {
        let msg = format!(
            "the prompt is {} tokens but the context holds {max_len} (including at least one generated token)",
            prompt.len()
        );
        return Err(ApiError::bad_request(msg, Some(prompt_field)));
    }
    let room = max_len - prompt.len();
    let max_tokens = match max_tokens {
        None => room,
        Some(0) => return Err(ApiError::bad_request(format!("{max_field} must be at least 1"), Some(max_field))),
        Some(n) if n as usize > room => {
            let msg = format!(
                "{max_field} is {n} but the prompt's {} tokens leave {room} of the context's {max_len}",
                prompt.len()
            );
            return Err(ApiError::bad_request(msg, Some(max_field)));
        }
        Some(n) => n as usize,
    };
    let temperature = s.temperature.unwrap_or(1.0);
    let params = SamplingParams {
        temperature,
        top_k,
        top_p: s.top_p.unwrap_or(1.0),
        min_p: s.min_p.unwrap_or(0.0),
        repetition_penalty: s.repetition_penalty.unwrap_or(1.0),
        presence_penalty: s.presence_penalty.unwrap_or(0.0),
        frequency_penalty: s.frequency_penalty.unwrap_or(0.0),
        max_tokens,
        stop: s.stop.map(|s| s.into_vec()).unwrap_or_default(),
        seed: s.seed.map_or_else(rand::random, |v| v as u64),
        ignore_eos: s.ignore_eos.unwrap_or(false),
        logprobs,
    };
    params.validate().map_err(|m| {
        let e = ApiError::from_engine(encore_engine::EngineError::Config(m), prompt_field);
        match e.param.as_deref() {
            Some("max_tokens") => {
                ApiError::bad_request(e.message.replacen("max_tokens", max_field, 1), Some(max_field))
            }
            _ => e,
        }
    })?;
    let stream = s.stream.unwrap_or(false);
    let include_usage = stream && s.stream_options.and_then(|o| o.include_usage).unwrap_or(false);
    Ok(Prepared { prompt, params, stream, include_usage, prompt_field })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::parse_json;
    use encore_engine::RunReport;
    use std::path::PathBuf;

    fn info() -> EngineInfo {
        EngineInfo {
            path: PathBuf::from("tiny"),
            report: RunReport::default(),
            max_model_len: 64,
            vocab_size: 512,
            tokenizer: None,
            chat_template: None,
        }
    }

    fn prep(body: &str) -> Result<Prepared, ApiError> {
        completion(parse_json(body.as_bytes())?, &info())
    }

    fn refused(body: &str, field: &str) {
        let e = prep(body).expect_err(body);
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(e.param.as_deref(), Some(field), "{body}: {}", e.message);
        assert!(e.message.contains(field), "{body}: {:?} should name {field}", e.message);
    }

    #[test]
    fn a_token_id_prompt_maps_every_field() {
        let p = prep(
            r#"{"prompt": [1, 2, 3], "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "top_k": 40,
                "min_p": 0.1, "seed": 7, "repetition_penalty": 1.1, "stop": "x", "ignore_eos": true,
                "logprobs": 2, "stream": true, "stream_options": {"include_usage": true},
                "presence_penalty": 0.5, "frequency_penalty": -0.25, "n": 1, "user": "someone"}"#,
        )
        .unwrap();
        let want = SamplingParams {
            temperature: 0.5,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.1,
            repetition_penalty: 1.1,
            presence_penalty: 0.5,
            frequency_penalty: -0.25,
            max_tokens: 5,
            stop: vec!["x".into()],
            seed: 7,
            ignore_eos: true,
            logprobs: Some(2),
        };
        assert_eq!((p.prompt, p.params, p.stream, p.include_usage), (vec![1, 2, 3], want, true, true));
    }

    #[test]
    fn max_tokens_defaults_to_the_rest_of_the_context() {
        let p = prep(r#"{"prompt": [[1, 2, 3, 4]], "stop": ["a", "b"], "top_k": -1}"#).unwrap();
        assert_eq!((p.params.max_tokens, p.params.top_k, p.params.stop.len()), (60, 0, 2));
        assert!(!p.include_usage);
    }

    #[test]
    fn bad_values_name_their_field() {
        refused(r#"{"prompt": [1], "temperature": -1}"#, "temperature");
        refused(r#"{"prompt": [1], "top_p": 1.5}"#, "top_p");
        refused(r#"{"prompt": [1], "min_p": 2}"#, "min_p");
        refused(r#"{"prompt": [1], "top_k": -5}"#, "top_k");
        refused(r#"{"prompt": [1], "repetition_penalty": 0}"#, "repetition_penalty");
        refused(r#"{"prompt": [1], "max_tokens": 0}"#, "max_tokens");
        refused(r#"{"prompt": [1], "max_tokens": 64}"#, "max_tokens");
        refused(r#"{"prompt": [1], "n": 2}"#, "n");
        refused(r#"{"prompt": [1], "presence_penalty": 2.5}"#, "presence_penalty");
        refused(r#"{"prompt": [1], "frequency_penalty": -3}"#, "frequency_penalty");
        refused(r#"{"prompt": [1], "logprobs": 21}"#, "logprobs");
        refused(r#"{"prompt": [1], "echo": true}"#, "echo");
        refused(r#"{"prompt": [1], "stop": ""}"#, "stop");
        refused(r#"{"prompt": [1], "stop": 5}"#, "stop");
        refused(r#"{"prompt": [1], "temperature": "hot"}"#, "temperature");
        refused(r#"{"prompt": [[1], [2]]}"#, "prompt");
        refused(r#"{"prompt": []}"#, "prompt");
        refused(r#"{"prompt": "text needs a tokenizer"}"#, "prompt");
        refused(&format!(r#"{{"prompt": {:?}}}"#, vec![1; 64]), "prompt");
        refused(r#"{"max_tokens": 3}"#, "prompt");
    }

    #[test]
    fn chat_fields_are_checked_by_name() {
        let chat = |body: &str| chat(parse_json(body.as_bytes()).unwrap(), &info()).unwrap_err();
        let m = r#""messages": [{"role": "user", "content": "hi"}]"#;
        assert_eq!(chat(&format!("{{{m}, \"top_logprobs\": 3}}")).param.as_deref(), Some("top_logprobs"));
        assert_eq!(chat(&format!("{{{m}, \"tools\": [{{}}]}}")).param.as_deref(), Some("tools"));
        assert_eq!(chat(r#"{"messages": []}"#).param.as_deref(), Some("messages"));
        let e = chat(&format!("{{{m}}}"));
        assert!(e.message.contains("no chat template"), "{}", e.message);
        let e = parse_json::<ChatCompletionRequest>(br#"{"messages": [{"role": 1}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
    }
}
