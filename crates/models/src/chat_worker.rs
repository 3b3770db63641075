//! Chat templates rendered in a child process with a memory cap.
//!
//! A template is code from the model files. minijinja bounds its instructions (fuel) and
//! [`ChatTemplate`] bounds what it prints, but nothing bounds the values it builds without
//! printing them: `{% set ns.s = ns.s ~ ns.s %}` in a 40-step loop asks for a terabyte, and
//! a failed allocation aborts the process. So the binaries (`encore generate --chat`,
//! `chat`, `serve`) render in a worker: this same executable started with [`WORKER_ARG`],
//! its address space capped with `setrlimit(RLIMIT_AS)`. When a render runs the worker out
//! of memory (or time) it dies alone; the request gets a one-line error and the next render
//! starts a fresh worker.
//!
//! Protocol (one JSON object per line): the parent first sends a [`WorkerSetup`], then one
//! [`RenderRequest`] per render; the worker answers each with a [`RenderReply`].

use crate::chat::{ChatTemplate, Message, TemplateLimits};
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The first argument that makes the `encore` binary a template worker (not a subcommand
/// users see).
pub const WORKER_ARG: &str = "__chat-template-worker";

/// Where and how a template worker runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Isolation {
    /// The executable started as `exe __chat-template-worker`; its `main` must call
    /// [`worker_main`] for that argument.
    pub exe: PathBuf,
    /// Memory a render may use beyond the worker's own at start-up.
    pub memory_bytes: u64,
    /// Wall time per render (fuel stops loops long before this; it catches the rest).
    pub timeout: Duration,
}

impl Isolation {
    /// This executable, 512 MiB (real templates use kilobytes), 10 s.
    pub fn this_exe() -> std::io::Result<Self> {
        Ok(Isolation { exe: std::env::current_exe()?, memory_bytes: 512 << 20, timeout: Duration::from_secs(10) })
    }

    /// One line for start-up reports.
    pub fn describe(&self) -> String {
        format!(
            "chat templates render in a worker process capped at {} and {:?}",
            crate::limits::human_bytes(self.memory_bytes),
            self.timeout
        )
    }
}

/// What the parent sends first: the template and its limits.
#[derive(Serialize, Deserialize)]
struct WorkerSetup {
    source: String,
    bos_token: String,
    eos_token: String,
    origin: String,
    fuel: u64,
    max_output_bytes: usize,
    memory_bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct RenderRequest {
    messages: Vec<Message>,
    add_generation_prompt: bool,
}

#[derive(Serialize, Deserialize)]
enum RenderReply {
    #[serde(rename = "ok")]
    Ok(String),
    #[serde(rename = "err")]
    Err(String),
}

/// The parent's side: a worker started on first use and again after one dies.
pub struct IsolatedRenderer {
    iso: Isolation,
    worker: Mutex<Option<Worker>>,
}

impl IsolatedRenderer {
    pub fn new(iso: Isolation) -> Self {
        IsolatedRenderer { iso, worker: Mutex::new(None) }
    }

    pub fn isolation(&self) -> &Isolation {
        &self.iso
    }

    /// Renders `messages` with `t` in the worker. One render at a time (they take
    /// microseconds); a worker that dies or stalls is reaped and the error says why.
    pub fn render(&self, t: &ChatTemplate, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut slot = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot =
                Some(Worker::start(&self.iso, t).map_err(|e| {
                    t.error(&format!("cannot start the template worker {}: {e}", self.iso.exe.display()))
                })?);
        }
        let worker = slot.as_mut().expect("started above");
        let request = RenderRequest { messages: messages.to_vec(), add_generation_prompt };
        // the reply is at most the output limit plus JSON escaping (6 bytes per byte at worst)
        let input: usize = messages.iter().map(|m| m.content.len() + m.role.len()).sum();
        let cap = t.limits().max_output_bytes.saturating_add(input.saturating_mul(2)).saturating_mul(6) + 1024;
        match worker.call(&request, Instant::now() + self.iso.timeout, cap) {
            Ok(RenderReply::Ok(text)) => Ok(text),
            Ok(RenderReply::Err(msg)) => Err(crate::ModelError::ChatTemplate { msg }),
            Err(e) => {
                let worker = slot.take().expect("present");
                Err(t.error(&worker.reap(e, &self.iso)))
            }
        }
    }
}

/// One running worker process.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: ChildStderr,
    /// Bytes read past the last reply.
    pending: Vec<u8>,
}

impl Worker {
    fn start(iso: &Isolation, t: &ChatTemplate) -> std::io::Result<Self> {
        let mut child = Command::new(&iso.exe)
            .arg(WORKER_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            return Err(std::io::Error::other("no pipes to the worker"));
        };
        let mut w = Worker { child, stdin, stdout, stderr, pending: Vec::new() };
        let limits = t.limits();
        let (bos_token, eos_token) = t.special_tokens();
        let setup = WorkerSetup {
            source: t.source().to_string(),
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            origin: t.origin().to_string(),
            fuel: limits.fuel,
            max_output_bytes: limits.max_output_bytes,
            memory_bytes: iso.memory_bytes,
        };
        w.send(&setup)?;
        Ok(w)
    }

    fn send<T: Serialize>(&mut self, msg: &T) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.stdin.write_all(&line)?;
        self.stdin.flush()
    }

    fn call(&mut self, req: &RenderRequest, deadline: Instant, cap: usize) -> std::io::Result<RenderReply> {
        self.send(req)?;
        let line = self.read_line(deadline, cap)?;
        serde_json::from_slice(&line).map_err(|e| std::io::Error::other(format!("a reply that is not JSON: {e}")))
    }

    /// One line from the worker, waiting until `deadline`, at most `cap` bytes.
    fn read_line(&mut self, deadline: Instant, cap: usize) -> std::io::Result<Vec<u8>> {
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return Ok(line);
            }
            if self.pending.len() > cap {
                return Err(std::io::Error::other(format!("a reply over {cap} bytes")));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !readable(&self.stdout, left)? {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            let n = self.stdout.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// Stops the worker after `e` and says what happened, in words for the request.
    fn reap(mut self, e: std::io::Error, iso: &Isolation) -> String {
        let _ = self.child.kill();
        let status = self.child.wait();
        let mut err = String::new();
        let _ = (&mut self.stderr).take(4096).read_to_string(&mut err);
        let limit = crate::limits::human_bytes(iso.memory_bytes);
        if e.kind() == std::io::ErrorKind::TimedOut {
            format!("the render took longer than {:?} and was stopped", iso.timeout)
        } else if err.contains("memory allocation of") {
            format!("the render ran out of its {limit} memory limit (a template that builds a huge string?)")
        } else {
            let how = match status {
                Ok(s) => s.to_string(),
                Err(w) => w.to_string(),
            };
            let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
            format!(
                "the template worker stopped ({how}; {e}){}",
                if last.is_empty() { String::new() } else { format!(": {last}") }
            )
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `fd` has data (or EOF) within `wait`.
fn readable(fd: &impl AsRawFd, wait: Duration) -> std::io::Result<bool> {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = wait.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    loop {
        // SAFETY: one valid pollfd, and its count.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r >= 0 {
            return Ok(r > 0);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The worker process: reads the setup and render requests on stdin, answers on stdout,
/// exits 0 at EOF. Returns the exit code (`main` exits with it).
pub fn worker_main() -> i32 {
    match serve(std::io::stdin().lock(), std::io::stdout().lock()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("template worker: {e}");
            2
        }
    }
}

fn serve(input: impl BufRead, mut out: impl Write) -> std::io::Result<()> {
    let mut lines = input.lines();
    let Some(first) = lines.next() else { return Ok(()) };
    let setup: WorkerSetup = serde_json::from_str(&first?).map_err(std::io::Error::other)?;
    cap_memory(setup.memory_bytes)?;
    let limits = TemplateLimits { fuel: setup.fuel, max_output_bytes: setup.max_output_bytes };
    let t = ChatTemplate::lenient(&setup.source, Some(&setup.bos_token), Some(&setup.eos_token), &setup.origin)
        .with_limits(limits);
    // a panic in a render is that render's error, not the worker's end (and prints nothing)
    std::panic::set_hook(Box::new(|_| {}));
    for line in lines {
        let req: RenderRequest = serde_json::from_str(&line?).map_err(std::io::Error::other)?;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            t.render(&req.messages, req.add_generation_prompt)
        }));
        let reply = match result {
            Ok(Ok(text)) => RenderReply::Ok(text),
            Ok(Err(crate::ModelError::ChatTemplate { msg })) => RenderReply::Err(msg),
            Ok(Err(e)) => RenderReply::Err(e.to_string()),
            Err(p) => {
                let what =
                    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
                let msg = format!("the renderer panicked: {}", what.unwrap_or_default());
                RenderReply::Err(t.prefixed(&msg))
            }
        };
        let mut bytes = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        out.write_all(&bytes)?;
        out.flush()?;
    }
    Ok(())
}

/// Caps this process's address space at its current size plus `extra` bytes, and turns off
/// core files (a worker that runs out of memory aborts).
fn cap_memory(extra: u64) -> std::io::Result<()> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf reads a constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let cap = pages.saturating_mul(page).saturating_add(extra);
    for (resource, value) in [(libc::RLIMIT_AS, cap), (libc::RLIMIT_CORE, 0)] {
        let r = libc::rlimit { rlim_cur: value as libc::rlim_t, rlim_max: value as libc::rlim_t };
        // SAFETY: setrlimit reads the struct we pass; lowering our own limits is allowed.
        if unsafe { libc::setrlimit(resource, &r) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
