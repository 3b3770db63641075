//! The HTTP surface: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`,
//! `GET /health`, `GET /metrics`, `POST /tokenize`, `POST /detokenize`; the gate in front
//! of them (API key on every route but `/health`; 503 while the model loads) and the
//! per-status request counter. Handlers parse, check the model name, hand the request to
//! the engine thread and answer from its events; they never touch the device.

use crate::error::{ApiError, ApiJson, BodyLimit};
use crate::metrics::{Metrics, RequestTimer};
use crate::openai::{
    ChatCompletionRequest, CompletionRequest, DetokenizeRequest, DetokenizeResponse, ModelCard, ModelList,
    TokenizeRequest, TokenizeResponse,
};
use crate::output::{Kind, Output};
use crate::params::{self, Prepared};
use crate::sse;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use encore_engine::{EngineHandle, EngineInfo, Event, Submission};
use std::path::Path;
use std::sync::{Arc, OnceLock};

pub struct AppState {
    pub engine: EngineHandle,
    pub metrics: Arc<Metrics>,
    /// Every route but `/health` needs `Authorization: Bearer KEY` when set.
    pub api_key: Option<String>,
    /// `--served-model-name`, else derived from the model once it is loaded.
    pub served_model_name: Option<String>,
    /// `--model` as given (None: the default model).
    pub model_spec: Option<String>,
    pub max_body_bytes: usize,
    pub created: u64,
    name: OnceLock<String>,
}

impl AppState {
    pub fn new(engine: EngineHandle, model_spec: Option<String>, served_model_name: Option<String>) -> Self {
        AppState {
            engine,
            metrics: Arc::new(Metrics::new()),
            api_key: None,
            served_model_name,
            model_spec,
            max_body_bytes: 8 << 20,
            created: crate::output::unix_now(),
            name: OnceLock::new(),
        }
    }

    /// The loaded engine and the name it is served under; 503 while loading.
    pub fn ready(&self) -> Result<(Arc<EngineInfo>, &str), ApiError> {
        let info = self.engine.info().ok_or_else(ApiError::loading)?;
        let name = self.name.get_or_init(|| match &self.served_model_name {
            Some(n) => n.clone(),
            None => default_model_name(self.model_spec.as_deref(), &info.path),
        });
        Ok((info, name))
    }
}

/// The `model` id: `--model` when it names no local path (`org/name`), else the folder or
/// file name (without `.gguf`).
pub fn default_model_name(spec: Option<&str>, path: &Path) -> String {
    if let Some(s) = spec.filter(|s| !Path::new(s).exists()) {
        return s.to_string();
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string());
    name.strip_suffix(".gguf").map(str::to_string).unwrap_or(name)
}

/// A missing `model` means the served one.
fn check_model(model: Option<&str>, served: &str) -> Result<(), ApiError> {
    match model {
        Some(m) if m != served => Err(ApiError::unknown_model(m, served)),
        _ => Ok(()),
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .fallback(|req: Request| async move { ApiError::not_found(req.uri().path()) })
        .layer(from_fn_with_state(state.clone(), gate))
        .layer(from_fn_with_state(state.clone(), count))
        .layer(DefaultBodyLimit::max(limit))
        .layer(Extension(BodyLimit(limit)))
        .with_state(state)
}

const ROUTES: [&str; 7] =
    ["/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/tokenize", "/detokenize"];

/// Counts every answer by route and status (the route label is bounded: unknown paths are `other`).
async fn count(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = ROUTES.iter().find(|r| **r == req.uri().path()).copied().unwrap_or("other");
    let resp = next.run(req).await;
    st.metrics.record_status(route, resp.status().as_u16());
    resp
}

/// API key first, then 503 while the model loads (`/metrics` still answers).
async fn gate(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path != "/health" {
        if let Some(key) = &st.api_key {
            let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            let ok = given
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|k| same(k.trim().as_bytes(), key.as_bytes()));
            if !ok {
                return ApiError::unauthorized().into_response();
            }
        }
        if path != "/metrics" && st.engine.info().is_none() {
            return ApiError::loading().into_response();
        }
    }
    next.run(req).await
}

/// Constant-time comparison, so the key cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn chat_completions(
    State(st): State<Arc<AppState>>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let (info, name) = st.ready()?;
    check_model(req.model.as_deref(), name)?;
    let out = Output::new(Kind::Chat, name, &info, req.logprobs == Some(true));
    // the template render (in the template worker, up to its time limit) and tokenizing
    // block: off the async threads, so that a slow one stalls only its own request
    let prep = tokio::task::spawn_blocking(move || params::chat(req, &info))
        .await
        .map_err(|e| ApiError::internal(format!("preparing the request: {e}")))??;
    run(&st, prep, out).await
}

async fn completions(
    State(st): State<Arc<AppState>>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let (info, name) = st.ready()?;
    check_model(req.model.as_deref(), name)?;
    let out = Output::new(Kind::Completion, name, &info, req.logprobs.is_some());
    let prep = tokio::task::spawn_blocking(move || params::completion(req, &info))
        .await
        .map_err(|e| ApiError::internal(format!("preparing the request: {e}")))??;
    run(&st, prep, out).await
}

async fn run(st: &AppState, prep: Prepared, out: Output) -> Result<Response, ApiError> {
    let field = prep.prompt_field;
    let sub = st.engine.submit(prep.prompt, prep.params).map_err(|e| ApiError::from_submit(e, field))?;
    let timer = st.metrics.timer();
    if prep.stream {
        return Ok(sse::response(sub, out, prep.include_usage, timer));
    }
    collect(sub, out, timer).await.map(|v| Json(v).into_response())
}

/// The whole answer of a non-streaming request. If the client leaves, this future is
/// dropped with the submission, which aborts the request.
async fn collect(mut sub: Submission, mut out: Output, mut timer: RequestTimer) -> Result<serde_json::Value, ApiError> {
    loop {
        match sub.recv().await {
            Some(Event::Token { id, text, logprob }) => {
                timer.token();
                out.push(&text, id, logprob.as_ref());
            }
            Some(Event::Done { text, finish, usage }) => {
                timer.done(usage.completion_tokens);
                return Ok(out.response(&text, finish, usage));
            }
            Some(Event::Failed(m)) => return Err(ApiError::internal(m)),
            None => return Err(ApiError::internal("the engine dropped the request")),
        }
    }
}

async fn models(State(st): State<Arc<AppState>>) -> Result<Json<ModelList>, ApiError> {
    let (info, name) = st.ready()?;
    let card = ModelCard {
        id: name.to_string(),
        object: "model",
        created: st.created,
        owned_by: "encore",
        root: info.path.display().to_string(),
        parent: None,
        max_model_len: info.max_model_len,
    };
    Ok(Json(ModelList { object: "list", data: vec![card] }))
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    match st.ready() {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let stats = st.engine.info().map(|_| st.engine.stats());
    let text = st.metrics.render(stats, st.engine.in_flight());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn tokenize(
    State(st): State<Arc<AppState>>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let (info, name) = st.ready()?;
    check_model(req.model.as_deref(), name)?;
    let tokens = match (&req.prompt, &req.messages) {
        (Some(p), None) => params::encode(&info, p, req.add_special_tokens.unwrap_or(true), "prompt")?,
        (None, Some(m)) => {
            let text = params::render_chat(m, &info, req.add_generation_prompt.unwrap_or(true))?;
            params::encode(&info, &text, req.add_special_tokens.unwrap_or(false), "messages")?
        }
        _ => return Err(ApiError::bad_request("give exactly one of prompt or messages", Some("prompt"))),
    };
    Ok(Json(TokenizeResponse { count: tokens.len(), max_model_len: info.max_model_len, tokens }))
}

async fn detokenize(
    State(st): State<Arc<AppState>>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let (info, name) = st.ready()?;
    check_model(req.model.as_deref(), name)?;
    let tok = info.tokenizer.as_ref().ok_or_else(|| ApiError::bad_request("this model has no tokenizer", None))?;
    if let Some(&bad) = req.tokens.iter().find(|&&t| t as usize >= tok.vocab_size().max(info.vocab_size)) {
        return Err(ApiError::bad_request(format!("tokens: id {bad} is outside the vocabulary"), Some("tokens")));
    }
    let prompt = tok.decode(&req.tokens, false).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(DetokenizeResponse { prompt }))
}
