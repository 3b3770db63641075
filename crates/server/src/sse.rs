//! Engine events -> Server-Sent Events: `data: {chunk}\n\n` frames, the usage chunk when
//! `stream_options.include_usage` asks for it, then `data: [DONE]\n\n`. The body stream
//! owns the request's [`Submission`]: when the client goes away, hyper drops the body, the
//! event receiver closes, and the engine thread aborts the request before its next step.

use crate::metrics::RequestTimer;
use crate::output::Output;
use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::Response;
use encore_engine::{Event, Submission};
use futures_util::Stream;
use serde_json::Value;
use std::convert::Infallible;

pub const DONE: &str = "data: [DONE]\n\n";

pub fn frame(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// An error in the middle of a stream (the status line was already sent).
pub fn error_frame(message: &str) -> String {
    let e = crate::error::ApiError::internal(message);
    frame(&e.body())
}

struct State {
    sub: Submission,
    out: Output,
    include_usage: bool,
    timer: RequestTimer,
    started: bool,
    ended: bool,
}

/// The SSE frames of one request, as they become ready.
pub fn frames(sub: Submission, out: Output, include_usage: bool, timer: RequestTimer) -> impl Stream<Item = String> {
    let st = State { sub, out, include_usage, timer, started: false, ended: false };
    futures_util::stream::unfold(st, |mut st| async move {
        if st.ended {
            return None;
        }
        if !st.started {
            st.started = true;
            if let Some(c) = st.out.first_chunk() {
                return Some((frame(&c), st));
            }
        }
        loop {
            match st.sub.recv().await {
                Some(Event::Token { id, text, logprob }) => {
                    st.timer.token();
                    if let Some(c) = st.out.token_chunk(&text, id, logprob.as_ref()) {
                        return Some((frame(&c), st));
                    }
                }
                Some(Event::Done { text, finish, usage }) => {
                    st.timer.done(usage.completion_tokens);
                    let mut s = frame(&st.out.final_chunk(&text, finish));
                    if st.include_usage {
                        s.push_str(&frame(&st.out.usage_chunk(usage)));
                    }
                    s.push_str(DONE);
                    st.ended = true;
                    return Some((s, st));
                }
                Some(Event::Failed(m)) => {
                    st.ended = true;
                    return Some((error_frame(&m) + DONE, st));
                }
                None => {
                    st.ended = true;
                    return Some((error_frame("the engine dropped the request") + DONE, st));
                }
            }
        }
    })
}

pub fn response(sub: Submission, out: Output, include_usage: bool, timer: RequestTimer) -> Response {
    use futures_util::StreamExt;
    let body = frames(sub, out, include_usage, timer).map(|s| Ok::<_, Infallible>(Bytes::from(s)));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .expect("static headers are valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use encore_engine::{FinishReason, SamplingParams};

    #[test]
    fn frames_are_data_lines_ending_with_done() {
        assert_eq!(frame(&serde_json::json!({"a": 1})), "data: {\"a\":1}\n\n");
        let e = error_frame("boom");
        assert!(e.starts_with("data: {\"error\":") && e.ends_with("\n\n") && e.contains("boom"));
        assert_eq!(DONE, "data: [DONE]\n\n");
    }

    /// A whole stream over the tiny model (ids only): every frame parses, usage comes last.
    #[test]
    fn a_stream_of_chunks_then_usage_then_done() {
        let path = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/tiny-llama3"));
        let cfg = encore_engine::EngineConfig {
            max_ctx: Some(64),
            kv_blocks: Some(8),
            max_num_seqs: 2,
            ..Default::default()
        };
        let h =
            encore_engine::worker::spawn(cfg, Default::default(), move || Ok(encore_models::hub::open_model(&path)?));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let text: String = rt.block_on(async {
            let info = h.wait_loaded().await.unwrap();
            let params = SamplingParams { max_tokens: 3, logprobs: Some(1), ignore_eos: true, ..Default::default() };
            let sub = h.submit(vec![1, 2], params).unwrap();
            let out = Output::new(crate::output::Kind::Completion, "tiny", &info, true);
            let timer = std::sync::Arc::new(crate::metrics::Metrics::new()).timer();
            use futures_util::StreamExt;
            frames(sub, out, true, timer).collect::<Vec<_>>().await.concat()
        });
        let datas: Vec<&str> = text.split("\n\n").filter(|s| !s.is_empty()).collect();
        assert!(datas.iter().all(|d| d.starts_with("data: ")), "{text}");
        assert_eq!(*datas.last().unwrap(), "data: [DONE]");
        let chunks: Vec<Value> =
            datas[..datas.len() - 1].iter().map(|d| serde_json::from_str(&d[6..]).unwrap()).collect();
        let usage = chunks.last().unwrap();
        assert_eq!(usage["usage"]["completion_tokens"], 3);
        let finish = &chunks[chunks.len() - 2]["choices"][0]["finish_reason"];
        assert_eq!(finish, FinishReason::Length.as_str());
        let n_lp: usize =
            chunks.iter().filter_map(|c| c["choices"][0]["logprobs"]["tokens"].as_array()).map(|a| a.len()).sum();
        assert_eq!(n_lp, 3, "one logprob per token");
        h.shutdown();
    }
}
