//! The OpenAI wire types this server reads and writes: chat completions, completions,
//! models, usage, logprobs, and vLLM's `/tokenize` / `/detokenize`. Shapes only; what the
//! values mean for the engine is `params.rs`, how a stream is framed is `sse.rs`.
//! Fields this server does not know are ignored, as OpenAI's own clients send many.

use serde::{Deserialize, Serialize};

/// `stop`: one string or a list.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// `prompt`: text, token ids, or (batched) lists of either; one prompt per request here.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// `content`: a string, or a list of parts of which only `text` parts are understood.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
}

/// Sampling fields both endpoints share (copied out of a request by `sampling()`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sampling {
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// vLLM extension; -1 or 0 keeps every token.
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub stop: Option<Stop>,
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// vLLM extension: keep generating past end-of-sequence tokens.
    pub ignore_eos: Option<bool>,
}

/// A request struct with the [`Sampling`] fields inline. (Not `#[serde(flatten)]`: that
/// loses the path of a bad field, and errors must name it.)
macro_rules! with_sampling {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident: $t:ty,)* }) => {
        $(#[$m])*
        pub struct $name {
            $($(#[$fm])* pub $f: $t,)*
            pub max_tokens: Option<u64>,
            pub temperature: Option<f32>,
            pub top_p: Option<f32>,
            pub top_k: Option<i64>,
            pub min_p: Option<f32>,
            pub seed: Option<i64>,
            pub presence_penalty: Option<f32>,
            pub frequency_penalty: Option<f32>,
            pub repetition_penalty: Option<f32>,
            pub stop: Option<Stop>,
            pub n: Option<u64>,
            pub stream: Option<bool>,
            pub stream_options: Option<StreamOptions>,
            pub ignore_eos: Option<bool>,
        }

        impl $name {
            pub fn sampling(&self) -> Sampling {
                Sampling {
                    max_tokens: self.max_tokens,
                    temperature: self.temperature,
                    top_p: self.top_p,
                    top_k: self.top_k,
                    min_p: self.min_p,
                    seed: self.seed,
                    presence_penalty: self.presence_penalty,
                    frequency_penalty: self.frequency_penalty,
                    repetition_penalty: self.repetition_penalty,
                    stop: self.stop.clone(),
                    n: self.n,
                    stream: self.stream,
                    stream_options: self.stream_options.clone(),
                    ignore_eos: self.ignore_eos,
                }
            }
        }
    };
}

with_sampling! {
    #[derive(Clone, Debug, Deserialize, PartialEq)]
    pub struct ChatCompletionRequest {
        pub model: Option<String>,
        pub messages: Vec<ChatMessage>,
        pub max_completion_tokens: Option<u64>,
        pub logprobs: Option<bool>,
        pub top_logprobs: Option<u64>,
        pub response_format: Option<ResponseFormat>,
        pub tools: Option<Vec<serde_json::Value>>,
    }
}

with_sampling! {
    #[derive(Clone, Debug, Deserialize, PartialEq)]
    pub struct CompletionRequest {
        pub model: Option<String>,
        pub prompt: Prompt,
        /// Log-probabilities of the N most likely tokens at each position.
        pub logprobs: Option<u64>,
        pub echo: Option<bool>,
        pub best_of: Option<u64>,
        pub suffix: Option<String>,
    }
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

impl From<encore_engine::Usage> for Usage {
    fn from(u: encore_engine::Usage) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens: u.cached_tokens },
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprob>,
}

/// The legacy completions shape: parallel lists.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<serde_json::Map<String, serde_json::Value>>,
    pub text_offset: Vec<usize>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ChatChoice {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<AssistantMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<ChatDelta>,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// A response or stream chunk: `object` says which (`chat.completion`,
/// `chat.completion.chunk`, `text_completion`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Completion<C> {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<C>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    pub root: String,
    pub parent: Option<String>,
    pub max_model_len: usize,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

/// vLLM's `/tokenize`: a prompt, or chat messages rendered through the template.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    pub add_special_tokens: Option<bool>,
    pub add_generation_prompt: Option<bool>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DetokenizeResponse {
    pub prompt: String,
}
