//! Fuzzing encore's file parsers and the server's request JSON. Each target is written once, as a plain `fn(&[u8])`
//! ([`targets`]), and driven two ways: by the stable-Rust mutation runner of this crate
//! (`cargo run -p encore-fuzz -- --help`; seeds in [`seeds`], mutations in [`mutate`], the
//! supervisor in [`runner`]), and by libFuzzer through `cargo fuzz` (nightly, optional:
//! `fuzz/libfuzzer`). A target may return an error for any input; it must never panic,
//! abort, hang or allocate without bound.

pub mod mutate;
pub mod runner;
pub mod seeds;
pub mod targets;

pub use targets::{target, Target, TARGETS};
