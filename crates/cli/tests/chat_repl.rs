//! `encore chat` driven through a pseudo-terminal (tools/pty_chat.py, Python's `pty`): a
//! streamed answer, a follow-up, Ctrl-C stopping an answer without ending the program,
//! `/reset`, and Ctrl-D ending it with exit 0. CPU, default model.

#[test]
fn chat_repl_through_a_pseudo_terminal() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new("python3")
        .arg(root.join("tools/pty_chat.py"))
        .arg(env!("CARGO_BIN_EXE_encore"))
        .output()
        .expect("python3 runs tools/pty_chat.py");
    assert!(
        out.status.success(),
        "tools/pty_chat.py failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
