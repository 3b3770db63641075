//! encore's OpenAI-compatible HTTP server.

pub mod error;
pub mod openai;
pub mod params;
