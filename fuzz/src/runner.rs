//! The stable-Rust fuzz runner. A supervisor (the process the user started) runs each
//! target in a worker child process for a fixed time and reports executions and failures:
//!
//! - the worker caps its address space (`setrlimit(RLIMIT_AS)`), so an allocation sized by
//!   a corrupt number aborts the worker instead of the machine;
//! - before each execution the worker copies its input into a small shared file and bumps
//!   the execution counter there, so when it dies (abort, signal) or stops making progress
//!   (a hang), the supervisor knows which input did it, saves it, and starts a new worker;
//! - panics are caught in the worker (`catch_unwind`), saved and counted there;
//! - a worker whose memory grows past half the cap exits and is replaced (not a failure).
//!
//! Inputs are seeds ([`crate::seeds`]) plus extra corpus files, mutated by
//! [`crate::mutate::Mutator`]; a quarter of the time the last input is mutated further
//! (a short random walk away from the seeds). Saved inputs replay with `--replay FILE`.

use crate::mutate::{Mutator, Rng};
use memmap2::MmapMut;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One target's run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub target: String,
    pub seconds: f64,
    pub seed: u64,
    /// Address-space cap of the worker, MiB.
    pub mem_mb: u64,
    /// No execution finished for this long: the worker is hung on its input.
    pub hang_secs: f64,
    pub max_len: usize,
    /// Where failing inputs (and the workers' stderr) are saved.
    pub artifacts: PathBuf,
    /// Extra inputs: every file of this folder and of its `<target>/` subfolder.
    pub corpus: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct Failure {
    /// panic, abort, signal N, exit N, hang
    pub kind: String,
    pub message: String,
    pub input: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub target: String,
    pub executions: u64,
    pub secs: f64,
    pub workers: usize,
    pub failures: Vec<Failure>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fuzz {}: {} executions in {:.1} s ({:.0}/s), {} failure{}",
            self.target,
            self.executions,
            self.secs,
            self.executions as f64 / self.secs.max(1e-9),
            self.failures.len(),
            if self.failures.len() == 1 { "" } else { "s" }
        )?;
        // identical failures (kind and message) once, with their count and first input
        let mut groups: Vec<(&Failure, usize)> = Vec::new();
        for x in &self.failures {
            match groups.iter_mut().find(|(g, _)| g.kind == x.kind && g.message == x.message) {
                Some((_, n)) => *n += 1,
                None => groups.push((x, 1)),
            }
        }
        for (x, n) in groups {
            write!(f, "\n  {n} x {}: {} (input: {})", x.kind, x.message, x.input.display())?;
        }
        Ok(())
    }
}

/// Shared-file layout: execution counter, panic counter, input length, input bytes.
const EXECS: usize = 0;
const INPUT_LEN: usize = 8;
const HEADER: usize = 64;

struct Shared {
    map: MmapMut,
}

impl Shared {
    fn create(path: &Path, max_len: usize) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        f.set_len((HEADER + max_len) as u64)?;
        // SAFETY: a private scratch file of ours; the other process only reads or writes
        // the header words through atomics and the input bytes while the counter says so.
        let map = unsafe { MmapMut::map_mut(&f)? };
        Ok(Shared { map })
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        // SAFETY: `at` is 8-aligned inside the page-aligned header, and the map lives as
        // long as `self`; AtomicU64 has the layout of u64.
        unsafe { &*(self.map.as_ptr().add(at) as *const AtomicU64) }
    }

    fn set_input(&mut self, input: &[u8]) {
        self.word(INPUT_LEN).store(0, Ordering::Release);
        self.map[HEADER..HEADER + input.len()].copy_from_slice(input);
        self.word(INPUT_LEN).store(input.len() as u64, Ordering::Release);
    }

    fn input(&self) -> Vec<u8> {
        let n = (self.word(INPUT_LEN).load(Ordering::Acquire) as usize).min(self.map.len() - HEADER);
        self.map[HEADER..HEADER + n].to_vec()
    }
}

/// A temp dir in memory (`/dev/shm`) where there is one: a file write per execution on a
/// disk-backed /tmp costs milliseconds.
pub fn scratch_dir(prefix: &str) -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let b = tempfile::Builder::new().prefix(prefix).tempdir_in(shm);
    match b {
        Ok(d) => Ok(d),
        Err(_) => tempfile::Builder::new().prefix(prefix).tempdir(),
    }
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3))
}

fn save_input(dir: &Path, target: &str, kind: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(format!("{target}-{kind}-{:016x}.bin", fnv1a(data)));
    let _ = std::fs::write(&p, data);
    p
}

/// Targets whose input is text (JSON, Jinja): text mutations too.
fn is_text(target: &str) -> bool {
    matches!(target, "config_json" | "tokenizer_json" | "chat_template" | "safetensors_index")
}

/// Seeds plus the extra corpus files of `cfg`.
pub fn corpus(cfg: &RunConfig) -> Vec<Vec<u8>> {
    let mut c = crate::seeds::seeds(&cfg.target);
    if let Some(dir) = &cfg.corpus {
        for d in [dir.clone(), dir.join(&cfg.target)] {
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            let mut files: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
            files.sort();
            c.extend(files.iter().filter_map(|p| std::fs::read(p).ok()).filter(|b| b.len() <= cfg.max_len));
        }
    }
    c
}

/// Supervise `cfg.target` for `cfg.seconds` with workers started from `exe` (this binary).
pub fn supervise(cfg: &RunConfig, exe: &Path) -> std::io::Result<Report> {
    std::fs::create_dir_all(&cfg.artifacts)?;
    let scratch = scratch_dir("encore-fuzz-")?;
    let shm_path = scratch.path().join("shared");
    let shared = Shared::create(&shm_path, cfg.max_len)?;
    let failures_log = scratch.path().join("failures");
    let stderr_log = cfg.artifacts.join(format!("{}-worker-stderr.log", cfg.target));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(cfg.seconds);
    let mut failures = Vec::new();
    let mut workers = 0;
    while Instant::now() < deadline && failures.len() < 50 {
        workers += 1;
        let left = deadline.saturating_duration_since(Instant::now()).as_secs_f64();
        let mut cmd = Command::new(exe);
        cmd.arg("--worker")
            .args(["--target", &cfg.target])
            .args(["--seconds", &format!("{left:.3}")])
            .args(["--seed", &cfg.seed.wrapping_add(workers as u64 * 7919).to_string()])
            .args(["--mem-mb", &cfg.mem_mb.to_string()])
            .args(["--max-len", &cfg.max_len.to_string()])
            .arg("--artifacts")
            .arg(&cfg.artifacts)
            .arg("--shared")
            .arg(&shm_path)
            .arg("--failures-log")
            .arg(&failures_log)
            .env("RAYON_NUM_THREADS", "1")
            .env("RUST_BACKTRACE", "0")
            .env("TOKENIZERS_PARALLELISM", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&stderr_log)?);
        if let Some(c) = &cfg.corpus {
            cmd.arg("--corpus").arg(c);
        }
        let log_start = std::fs::metadata(&stderr_log).map(|m| m.len() as usize).unwrap_or(0);
        let mut child = cmd.spawn()?;
        let mut last = (shared.word(EXECS).load(Ordering::Acquire), Instant::now());
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            let n = shared.word(EXECS).load(Ordering::Acquire);
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed().as_secs_f64() > cfg.hang_secs {
                let _ = child.kill();
                let _ = child.wait();
                let input = shared.input();
                let path = save_input(&cfg.artifacts, &cfg.target, "hang", &input);
                let message =
                    format!("no execution finished for {:.0} s ({} bytes of input)", cfg.hang_secs, input.len());
                failures.push(Failure { kind: "hang".into(), message, input: path });
                break None;
            }
            if Instant::now() > deadline + Duration::from_secs_f64(cfg.hang_secs) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        match status {
            Some(s) if s.success() => break,
            Some(s) if s.code() == Some(RECYCLE) => {} // grew past half the cap: a fresh one
            Some(s) => {
                use std::os::unix::process::ExitStatusExt;
                let kind = match (s.signal(), s.code()) {
                    (Some(libc::SIGABRT), _) => "abort".to_string(),
                    (Some(sig), _) => format!("signal {sig}"),
                    (None, Some(code)) => format!("exit {code}"),
                    _ => "exit".to_string(),
                };
                let input = shared.input();
                let path = save_input(&cfg.artifacts, &cfg.target, "crash", &input);
                // what this worker printed last ("memory allocation of N bytes failed", ...)
                let last_line = std::fs::read(&stderr_log)
                    .ok()
                    .map(|t| String::from_utf8_lossy(t.get(log_start..).unwrap_or_default()).to_string())
                    .and_then(|t| {
                        t.lines().rev().find(|l| !l.trim().is_empty() && !l.starts_with("note:")).map(str::to_string)
                    })
                    .unwrap_or_default();
                failures.push(Failure { kind, message: last_line, input: path });
            }
            None => {}
        }
    }
    if let Ok(text) = std::fs::read_to_string(&failures_log) {
        for line in text.lines() {
            let mut parts = line.splitn(3, '\t');
            if let (Some(kind), Some(input), Some(message)) = (parts.next(), parts.next(), parts.next()) {
                failures.push(Failure { kind: kind.into(), message: message.into(), input: input.into() });
            }
        }
    }
    Ok(Report {
        target: cfg.target.clone(),
        executions: shared.word(EXECS).load(Ordering::Acquire),
        secs: t0.elapsed().as_secs_f64(),
        workers,
        failures,
    })
}

/// The exit code of a worker whose memory grew past half its cap (slow leaks in a
/// dependency: tokenizers 0.23 keeps a per-thread BPE cache entry for every tokenizer ever
/// used); the supervisor starts a fresh one, it is not a failure.
const RECYCLE: i32 = 75;

/// Resident set size of this process, bytes (Linux).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Panicking inputs a worker saves (it counts them all).
const MAX_SAVED_PANICS: usize = 16;

/// The message of the last panic on this process (set by the worker's hook).
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Caps the address space at `mem_mb` MiB and turns off core files.
fn limit_memory(mem_mb: u64) {
    let cap = mem_mb.saturating_mul(1 << 20);
    let limits = [(libc::RLIMIT_AS, cap), (libc::RLIMIT_CORE, 0)];
    for (resource, value) in limits {
        let r = libc::rlimit { rlim_cur: value as libc::rlim_t, rlim_max: value as libc::rlim_t };
        // SAFETY: setrlimit reads the struct we pass; lowering our own limits is always allowed.
        if unsafe { libc::setrlimit(resource, &r) } != 0 {
            eprintln!("encore-fuzz: setrlimit failed: {}", std::io::Error::last_os_error());
        }
    }
}

/// The worker: runs `target` on mutated inputs until `seconds` have passed (see the module
/// doc for the protocol). Panics are saved and logged to `failures_log`.
pub fn worker(cfg: &RunConfig, shared_path: &Path, failures_log: &Path) -> std::io::Result<()> {
    let Some(target) = crate::target(&cfg.target) else {
        return Err(std::io::Error::other(format!("unknown target {}", cfg.target)));
    };
    limit_memory(cfg.mem_mb);
    std::panic::set_hook(Box::new(|info| {
        let loc = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{}{loc}", msg.replace('\n', " ")));
    }));
    let f = std::fs::OpenOptions::new().read(true).write(true).open(shared_path)?;
    // SAFETY: the supervisor's scratch file, sized by it; see `Shared`.
    let map = unsafe { MmapMut::map_mut(&f)? };
    let mut shared = Shared { map };
    let mut corpus = corpus(cfg);
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    let text = is_text(&cfg.target);
    let mut saved = 0;
    let mut m = Mutator::new(cfg.seed, cfg.max_len.min(shared.map.len() - HEADER));
    let mut pick = Rng::new(cfg.seed ^ 0x5EED);
    let deadline = Instant::now() + Duration::from_secs_f64(cfg.seconds);
    let mut current: Vec<u8> = Vec::new();
    let mut n = 0u64;
    while n % 64 != 0 || Instant::now() < deadline {
        n += 1;
        if n % 64 == 0 && rss_bytes().is_some_and(|r| r > cfg.mem_mb.saturating_mul(1 << 20) / 2) {
            crate::targets::cleanup();
            std::process::exit(RECYCLE);
        }
        // mostly a seed, sometimes the last input again (a short walk away from the seeds:
        // deep walks end up as inputs every parser rejects at its first byte)
        let base = if current.is_empty() || !pick.chance(4) { &corpus[pick.below(corpus.len())] } else { &current };
        let other = &corpus[pick.below(corpus.len())];
        let input = if pick.chance(50) { base.clone() } else { m.mutate(base, other, text) };
        shared.set_input(&input);
        shared.word(EXECS).fetch_add(1, Ordering::AcqRel);
        let r = std::panic::catch_unwind(|| target(&input));
        if r.is_err() {
            let msg = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
            // every panic is counted; the first few inputs are saved
            let path = if saved < MAX_SAVED_PANICS {
                saved += 1;
                save_input(&cfg.artifacts, &cfg.target, "panic", &input)
            } else {
                PathBuf::from("(not saved: too many)")
            };
            let mut log = std::fs::OpenOptions::new().create(true).append(true).open(failures_log)?;
            writeln!(log, "panic\t{}\t{msg}", path.display())?;
            current.clear();
        } else {
            current = input;
        }
    }
    crate::targets::cleanup();
    Ok(())
}

/// Runs one saved input in this process: `Ok` if the target returned, `Err(panic message)`.
pub fn replay(target: &str, input: &[u8]) -> Result<(), String> {
    let f = crate::target(target).ok_or_else(|| format!("unknown target {target}"))?;
    std::panic::catch_unwind(|| f(input)).map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into())
    })
}
