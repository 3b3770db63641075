//! The runner detects every kind of failure, on targets that fail on purpose: a panic
//! (caught in the worker), an abort, an allocation past the memory cap, and a hang; and a
//! clean target reports executions and no failure.

use std::process::Command;

fn fuzz(args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_encore-fuzz"))
        .args(args)
        .arg("--artifacts")
        .arg(dir.path())
        .args(["--seed", "5"])
        .output()
        .expect("run encore-fuzz");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.code().unwrap_or(-1), stdout)
}

#[test]
fn a_clean_target_reports_executions_and_exits_0() {
    let (code, out) = fuzz(&["--target", "config_json", "--seconds", "1"]);
    assert_eq!(code, 0, "{out}");
    let line = out.lines().find(|l| l.starts_with("fuzz config_json:")).unwrap_or_else(|| panic!("{out}"));
    let n: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(n > 100 && line.contains("0 failures"), "{line}");
}

#[test]
fn panics_aborts_allocations_past_the_cap_and_hangs_are_failures() {
    for (target, kind) in [
        ("selftest_panic", "panic: selftest panic"),
        ("selftest_abort", "abort"),
        ("selftest_oom", "memory allocation of"),
        ("selftest_hang", "hang"),
    ] {
        let (code, out) = fuzz(&["--target", target, "--seconds", "2", "--hang-secs", "1", "--mem-mb", "1024"]);
        assert_eq!(code, 1, "{target}: {out}");
        assert!(out.contains(kind) && out.contains("(input: "), "{target}: {out}");
    }
}

#[test]
fn a_worker_that_leaks_is_replaced_not_reported() {
    // 1 MiB leaked per execution, a 512 MiB cap: the worker passes half the cap and is
    // replaced, again and again, without a failure
    let (code, out) = fuzz(&["--target", "selftest_leak", "--seconds", "3", "--mem-mb", "512"]);
    assert_eq!(code, 0, "{out}");
    let line = out.lines().find(|l| l.starts_with("fuzz selftest_leak:")).unwrap_or_else(|| panic!("{out}"));
    let n: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(n > 512 && line.contains("0 failures"), "more executions than one worker could hold: {line}");
}
