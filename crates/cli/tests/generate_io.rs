//! `encore generate` as a shell user meets it, on the CPU with the default model: a prompt
//! from standard input, `--jsonl` batch output, and a reader that goes away (`| head`) ends
//! the run quietly with exit 0.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

fn encore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_encore"))
}

#[test]
fn the_prompt_can_come_from_stdin() {
    let mut child = encore()
        .args(["generate", "--max-tokens", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Water boils at\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("Water boils at") && text.len() > "Water boils at".len(), "{text:?}");
}

#[test]
fn jsonl_prints_one_object_per_prompt() {
    let out = encore()
        .args(["generate", "--prompt", "1, 2, 3,", "--prompt", "a", "--max-tokens", "3", "--jsonl"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["index"], i);
        assert_eq!(l["tokens"], 3);
        assert_eq!(l["finish_reason"], "length");
    }
    assert_eq!(lines[0]["prompt"], "1, 2, 3,");
}

#[test]
fn a_closed_pipe_ends_quietly_with_exit_0() {
    let mut child = encore()
        .args(["generate", "--prompt", "Once upon a time", "--max-tokens", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 8];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(child.stdout.take()); // the reader goes away, as `| head -c 8` does
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}: {err}");
    assert!(!err.contains("error"), "{err}");
}

#[test]
fn bench_runs_on_the_cpu_with_a_real_model_file() {
    let out = encore()
        .args(["bench", "--device", "cpu", "--batch", "1,2", "--prefill", "8", "--steps", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("on cpu (f32") && text.contains("prefill"), "{text}");
    let rows = text.lines().filter(|l| l.trim_start().starts_with(['1', '2'])).count();
    assert_eq!(rows, 2, "one row per batch size:\n{text}");
}
