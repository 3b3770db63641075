//! Errors: [`ApiError`] is what a client sees, an OpenAI-shaped body
//! `{"error": {"message", "type", "param", "code"}}` with its HTTP status; [`ServerError`] is
//! what stops the server (bind, load). [`ApiJson`] parses a request body and names the field
//! that is wrong.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use encore_engine::{EngineError, SubmitError};
use serde::de::DeserializeOwned;
use serde_json::json;

#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400, naming the request field at fault.
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }
    pub fn unknown_model(model: &str, served: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("the model `{model}` does not exist (this server serves `{served}`)"),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }
    pub fn not_found(path: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no route {path}"),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }
    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "invalid or missing API key: send `Authorization: Bearer KEY`".into(),
            kind: "authentication_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }
    pub fn too_large(limit: usize) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the request body is larger than {limit} bytes (--max-body-bytes)"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
        }
    }
    pub fn loading() -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the model is loading; try again shortly".into(),
            kind: "service_unavailable_error",
            param: None,
            code: Some("model_loading"),
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "internal_error",
            param: None,
            code: None,
        }
    }

    /// A refused submission; `prompt_field` names where the prompt came from.
    pub fn from_submit(e: SubmitError, prompt_field: &str) -> Self {
        match e {
            SubmitError::Loading => ApiError::loading(),
            SubmitError::LoadFailed(m) => ApiError { message: m, ..ApiError::loading() },
            SubmitError::QueueFull(n) => ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: format!(
                    "queue full: {n} requests are already running or waiting (--max-concurrent, --max-queue)"
                ),
                kind: "rate_limit_error",
                param: None,
                code: Some("queue_full"),
            },
            SubmitError::Invalid(e) => ApiError::from_engine(e, prompt_field),
            SubmitError::Stopped => ApiError::internal("the engine thread has stopped"),
        }
    }

    /// An engine refusal, its CLI flag (`--top-p`) turned into the JSON field (`top_p`).
    pub fn from_engine(e: EngineError, prompt_field: &str) -> Self {
        match e {
            EngineError::Config(m) => {
                let (message, param) = flag_to_field(&m);
                match param {
                    Some(p) => ApiError::bad_request(message, Some(&p)),
                    None => ApiError::bad_request(format!("{prompt_field}: {message}"), Some(prompt_field)),
                }
            }
            EngineError::ContextFull { needed, max_ctx } => ApiError::bad_request(
                format!("the prompt needs {needed} positions but the context holds {max_ctx}"),
                Some(prompt_field),
            ),
            e => ApiError::internal(e.to_string()),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

/// `--top-p must be ...` -> (`top_p must be ...`, Some("top_p")).
fn flag_to_field(msg: &str) -> (String, Option<String>) {
    let Some(rest) = msg.strip_prefix("--") else { return (msg.to_string(), None) };
    let flag: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    let field = flag.replace('-', "_");
    (format!("{field}{}", &rest[flag.len()..]), Some(field))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// A JSON body whose parse errors are 400s naming the field (413 past the body limit).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(limit),
            _ => ApiError::bad_request(format!("cannot read the request body: {}", e.body_text()), None),
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// The body limit, carried as a request extension so the 413 can say it.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what = inner.to_string();
        let what = match what.find(" at line ") {
            Some(at) => what[..at].to_string(),
            None => what,
        };
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad_request(format!("the body is not valid JSON: {inner}"), None);
        }
        let field = match what.strip_prefix("missing field `") {
            Some(rest) if path == "." => rest.trim_end_matches('`').to_string(),
            _ => path,
        };
        let what = what.replace("data did not match any variant of untagged enum ", "unexpected value for ");
        if field == "." {
            ApiError::bad_request(format!("the body is not a JSON object of the right shape: {what}"), None)
        } else {
            ApiError::bad_request(format!("{field}: {what}"), Some(&field))
        }
    })?;
    Ok(value)
}

/// What stops the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("{0}")]
    Load(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[allow(dead_code)]
    #[derive(Deserialize, Debug)]
    struct Req {
        messages: Vec<String>,
        temperature: Option<f32>,
    }

    #[test]
    fn parse_errors_name_the_field() {
        let e = parse_json::<Req>(br#"{"messages": [], "temperature": "hot"}"#).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (StatusCode::BAD_REQUEST, Some("temperature")));
        assert!(e.message.starts_with("temperature: invalid type"), "{}", e.message);
        let e = parse_json::<Req>(br#"{"temperature": 1}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = parse_json::<Req>(br#"{"messages": [1]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0]"));
        let e = parse_json::<Req>(b"{not json").unwrap_err();
        assert!(e.param.is_none() && e.message.contains("not valid JSON"));
    }

    #[test]
    fn engine_flags_become_json_fields() {
        let e = ApiError::from_engine(EngineError::Config("--top-p must be in (0, 1], got 2".into()), "prompt");
        assert_eq!((e.message.as_str(), e.param.as_deref()), ("top_p must be in (0, 1], got 2", Some("top_p")));
        let e = ApiError::from_engine(EngineError::Config("the prompt is empty after tokenisation".into()), "prompt");
        assert_eq!(e.param.as_deref(), Some("prompt"));
    }

    #[test]
    fn error_bodies_are_openai_shaped() {
        let b = ApiError::unknown_model("gpt-9", "tiny").body();
        assert_eq!(b["error"]["code"], "model_not_found");
        assert_eq!(b["error"]["param"], "model");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert!(b["error"]["message"].as_str().unwrap().contains("gpt-9"));
    }
}
