//! The engine thread: one OS thread owns the [`Engine`] (a CUDA device is driven from one
//! thread), loads it, then loops `step()` while work exists and blocks on its command
//! channel when idle. Callers hold an [`EngineHandle`]: `submit` queues a request and hands
//! back its [`Event`] stream (text deltas, ids, logprobs, then the finish reason and usage).
//! A request whose event receiver is dropped (the client went away) is aborted before the
//! next step, so its KV blocks are free within one step. Knows nothing of HTTP.
//!
//! Limits: at most `max_concurrent` requests are in the engine at once; up to `max_queue`
//! more wait here in arrival order; beyond that `submit` answers [`SubmitError::QueueFull`].
//! A request holds its place until its [`Submission`] is dropped.

use crate::detokenize::Detokenizer;
use crate::llm_engine::{EngineCounters, EngineGauges, TokenLogprob};
use crate::sampler::SamplingParams;
use crate::sequence::{FinishReason, RequestId};
use crate::session::{build_engine, Engine, EngineConfig, RunReport};
use crate::EngineError;
use encore_models::chat::ChatTemplate;
use encore_models::hub::ModelFiles;
use encore_models::tokenizer::Tokenizer;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::{mpsc as events, watch};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Requests in the engine at once.
    pub max_concurrent: usize,
    /// Requests waiting for a place beyond those.
    pub max_queue: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits { max_concurrent: 256, max_queue: 1024 }
    }
}

/// What callers need once the model is loaded.
pub struct EngineInfo {
    pub path: PathBuf,
    pub report: RunReport,
    pub max_model_len: usize,
    pub vocab_size: usize,
    /// None for a model folder without `tokenizer.json` (token ids in, ids out).
    pub tokenizer: Option<Arc<Tokenizer>>,
    pub chat_template: Option<Arc<ChatTemplate>>,
}

#[derive(Clone)]
pub enum LoadState {
    Loading,
    Ready(Arc<EngineInfo>),
    Failed(String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens found in the prefix cache.
    pub cached_tokens: usize,
}

/// What happens to one request, in order: `Token`s, then `Done` or `Failed`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A generated token and the text it made safe to send (empty while a character is
    /// incomplete or a stop string may be starting).
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// The end: the text still held back, why it ended, and the counts.
    Done {
        text: String,
        finish: FinishReason,
        usage: Usage,
    },
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the model is still loading")]
    Loading,
    #[error("the model failed to load: {0}")]
    LoadFailed(String),
    #[error("queue full: {0} requests are already running or waiting")]
    QueueFull(usize),
    #[error(transparent)]
    Invalid(EngineError),
    #[error("the engine thread has stopped")]
    Stopped,
}

/// Engine counters and gauges as of the last step, plus this thread's own queue.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WorkerStats {
    pub counters: EngineCounters,
    pub gauges: EngineGauges,
    /// Requests waiting here for a place in the engine.
    pub queued: usize,
    /// Microseconds this thread spent detokenizing and sending the steps' events.
    pub output_us: u64,
}

enum Command {
    Add(Box<NewRequest>),
    Abort(u64),
    Drain,
}

struct NewRequest {
    key: u64,
    prompt: Vec<u32>,
    params: SamplingParams,
    events: events::UnboundedSender<Event>,
}

/// A queued request: its key (for `abort`) and its events. Dropping it gives its place back
/// and, if it is still running, aborts it.
pub struct Submission {
    pub key: u64,
    pub events: events::UnboundedReceiver<Event>,
    _place: Place,
}

impl Submission {
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<LoadState>,
    stats: Arc<Mutex<WorkerStats>>,
    in_flight: Arc<AtomicUsize>,
    next_key: Arc<AtomicU64>,
    limits: QueueLimits,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// Start the engine thread: it runs `load`, builds the engine from the files with `cfg`,
/// then serves. The handle answers `Loading` until then.
pub fn spawn<F>(cfg: EngineConfig, limits: QueueLimits, load: F) -> EngineHandle
where
    F: FnOnce() -> Result<ModelFiles, EngineError> + Send + 'static,
{
    let (commands, rx) = mpsc::channel();
    let (state_tx, state) = watch::channel(LoadState::Loading);
    let stats = Arc::new(Mutex::new(WorkerStats::default()));
    let worker_stats = stats.clone();
    let failed = state_tx.clone();
    let thread = std::thread::Builder::new().name("encore-engine".into()).spawn(move || {
        let (engine, info) = match load_engine(load, &cfg) {
            Ok(x) => x,
            Err(e) => {
                state_tx.send_replace(LoadState::Failed(e.to_string()));
                return;
            }
        };
        let tokenizer = info.tokenizer.clone();
        state_tx.send_replace(LoadState::Ready(Arc::new(info)));
        let worker = Worker {
            engine,
            tokenizer,
            limits,
            queued: VecDeque::new(),
            active: HashMap::new(),
            keys: HashMap::new(),
            stats: worker_stats,
            draining: false,
            output_us: 0,
        };
        worker.run(rx);
    });
    let thread = match thread {
        Ok(t) => Some(t),
        Err(e) => {
            failed.send_replace(LoadState::Failed(format!("cannot start the engine thread: {e}")));
            None
        }
    };
    EngineHandle {
        commands,
        state,
        stats,
        in_flight: Arc::new(AtomicUsize::new(0)),
        next_key: Arc::new(AtomicU64::new(0)),
        limits,
        thread: Arc::new(Mutex::new(thread)),
    }
}

fn load_engine<F>(load: F, cfg: &EngineConfig) -> Result<(Engine, EngineInfo), EngineError>
where
    F: FnOnce() -> Result<ModelFiles, EngineError>,
{
    let mut files = load()?;
    let (engine, report) = build_engine(&files, cfg)?;
    let info = EngineInfo {
        path: files.path.clone(),
        max_model_len: engine.max_model_len(),
        vocab_size: files.config.vocab_size,
        report,
        tokenizer: files.tokenizer.take().map(Arc::new),
        chat_template: files.chat_template.take().map(Arc::new),
    };
    Ok((engine, info))
}

/// The checks `add_request` makes, done before queueing so the caller can answer at once.
pub fn check_request(
    prompt: &[u32],
    params: &SamplingParams,
    vocab_size: usize,
    max_model_len: usize,
) -> Result<(), EngineError> {
    params.validate().map_err(EngineError::Config)?;
    if prompt.is_empty() {
        return Err(EngineError::Config("the prompt is empty after tokenisation".into()));
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab_size) {
        return Err(EngineError::Config(format!("token id {bad} is outside the vocabulary of {vocab_size}")));
    }
    if prompt.len() + 1 > max_model_len {
        return Err(EngineError::ContextFull { needed: prompt.len() + 1, max_ctx: max_model_len });
    }
    Ok(())
}

impl EngineHandle {
    pub fn load_state(&self) -> LoadState {
        self.state.borrow().clone()
    }

    /// The loaded engine's facts; None while loading (or after a failed load).
    pub fn info(&self) -> Option<Arc<EngineInfo>> {
        match &*self.state.borrow() {
            LoadState::Ready(i) => Some(i.clone()),
            _ => None,
        }
    }

    /// Waits until the model is loaded, or failed to.
    pub async fn wait_loaded(&self) -> Result<Arc<EngineInfo>, String> {
        let mut rx = self.state.clone();
        let state = rx.wait_for(|s| !matches!(s, LoadState::Loading)).await.map(|s| s.clone());
        match state {
            Ok(LoadState::Ready(i)) => Ok(i),
            Ok(LoadState::Failed(m)) => Err(m),
            _ => Err("the engine thread stopped while loading".into()),
        }
    }

    pub fn stats(&self) -> WorkerStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn limits(&self) -> QueueLimits {
        self.limits
    }

    /// Requests submitted and not yet dropped.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Queue a request; refused while loading, when invalid, or when the queue is full.
    pub fn submit(&self, prompt: Vec<u32>, params: SamplingParams) -> Result<Submission, SubmitError> {
        let info = match self.load_state() {
            LoadState::Loading => return Err(SubmitError::Loading),
            LoadState::Failed(m) => return Err(SubmitError::LoadFailed(m)),
            LoadState::Ready(i) => i,
        };
        check_request(&prompt, &params, info.vocab_size, info.max_model_len).map_err(SubmitError::Invalid)?;
        let cap = self.limits.max_concurrent + self.limits.max_queue;
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= cap {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(SubmitError::QueueFull(cap));
        }
        let place = Place(self.in_flight.clone());
        let (tx, events) = events::unbounded_channel();
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let req = NewRequest { key, prompt, params, events: tx };
        self.commands.send(Command::Add(Box::new(req))).map_err(|_| SubmitError::Stopped)?;
        Ok(Submission { key, events, _place: place })
    }

    /// End a request now (its stream ends with `Done { finish: Abort }`).
    pub fn abort(&self, key: u64) {
        let _ = self.commands.send(Command::Abort(key));
    }

    /// Finish what is running and queued, then stop the thread and wait for it. Returns at
    /// once if the thread already stopped; waits for a load in progress.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Drain);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

struct Active {
    key: u64,
    events: events::UnboundedSender<Event>,
    detok: Detokenizer,
    usage: Usage,
}

struct Worker {
    engine: Engine,
    tokenizer: Option<Arc<Tokenizer>>,
    limits: QueueLimits,
    queued: VecDeque<NewRequest>,
    active: HashMap<RequestId, Active>,
    /// Submission key -> engine id of the active requests.
    keys: HashMap<u64, RequestId>,
    stats: Arc<Mutex<WorkerStats>>,
    draining: bool,
    output_us: u64,
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        self.publish();
        loop {
            if self.active.is_empty() && self.queued.is_empty() {
                if self.draining {
                    break;
                }
                match rx.recv() {
                    Ok(c) => self.command(c),
                    Err(_) => break, // every handle is gone
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(c) => self.command(c),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.draining = true;
                        break;
                    }
                }
            }
            self.reap_closed();
            self.admit();
            if self.engine.has_unfinished() {
                self.step();
            } else if !self.active.is_empty() {
                // the engine holds none of them: a bug, but never spin on it
                self.fail_all("the engine lost track of its requests");
            }
            self.publish();
        }
        self.publish();
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Add(r) if self.draining => {
                let _ = r.events.send(Event::Failed("the server is shutting down".into()));
            }
            Command::Add(r) => self.queued.push_back(*r),
            Command::Abort(key) => {
                if let Some(id) = self.keys.get(&key).copied() {
                    self.engine.abort(id);
                    if let Some(a) = self.remove(id) {
                        let _ = a.events.send(Event::Done {
                            text: String::new(),
                            finish: FinishReason::Abort,
                            usage: a.usage,
                        });
                    }
                } else if let Some(at) = self.queued.iter().position(|r| r.key == key) {
                    let r = self.queued.remove(at).expect("position is in range");
                    let usage = Usage { prompt_tokens: r.prompt.len(), ..Default::default() };
                    let _ = r.events.send(Event::Done { text: String::new(), finish: FinishReason::Abort, usage });
                }
            }
            Command::Drain => self.draining = true,
        }
    }

    /// Abort the requests nobody listens to any more.
    fn reap_closed(&mut self) {
        let gone: Vec<RequestId> =
            self.active.iter().filter(|(_, a)| a.events.is_closed()).map(|(&id, _)| id).collect();
        for id in gone {
            self.engine.abort(id);
            self.remove(id);
        }
        self.queued.retain(|r| !r.events.is_closed());
    }

    fn admit(&mut self) {
        while self.active.len() < self.limits.max_concurrent {
            let Some(r) = self.queued.pop_front() else { break };
            let detok = Detokenizer::new(r.params.stop.clone(), true);
            let usage = Usage { prompt_tokens: r.prompt.len(), ..Default::default() };
            match self.engine.add_request(r.prompt, r.params) {
                Ok(id) => {
                    self.keys.insert(r.key, id);
                    self.active.insert(id, Active { key: r.key, events: r.events, detok, usage });
                }
                Err(e) => {
                    let _ = r.events.send(Event::Failed(e.to_string()));
                }
            }
        }
    }

    fn step(&mut self) {
        match self.engine.step() {
            Ok(outs) => {
                let t = std::time::Instant::now();
                for o in outs {
                    self.output(o);
                }
                self.output_us += t.elapsed().as_micros() as u64;
            }
            Err(e) => {
                eprintln!("error: engine step failed: {e}");
                self.fail_all(&format!("engine step failed: {e}"));
            }
        }
    }

    fn output(&mut self, o: crate::StepOutput) {
        let Some(a) = self.active.get_mut(&o.id) else { return };
        a.usage.prompt_tokens = o.num_prompt_tokens;
        a.usage.cached_tokens = o.num_cached_tokens;
        let tok = self.tokenizer.as_deref();
        if let Some(id) = o.token {
            a.usage.completion_tokens += 1;
            let text = match tok {
                Some(t) => a.detok.push(t, id),
                None => Ok(String::new()),
            };
            match text {
                Ok(text) => {
                    let _ = a.events.send(Event::Token { id, text, logprob: o.logprob });
                }
                Err(e) => return self.fail(o.id, &e.to_string()),
            }
        }
        let stopped_here = a.detok.stopped() && o.finished.is_none();
        let Some(reason) = (if stopped_here { Some(FinishReason::Stop) } else { o.finished }) else { return };
        if stopped_here {
            self.engine.finish(o.id, FinishReason::Stop);
        }
        let tail = match tok {
            Some(t) if !stopped_here => a.detok.finish(t),
            _ => Ok(String::new()),
        };
        let tail = match tail {
            Ok(t) => t,
            Err(e) => return self.fail(o.id, &e.to_string()),
        };
        let finish = if a.detok.stopped() { FinishReason::Stop } else { reason };
        let _ = a.events.send(Event::Done { text: tail, finish, usage: a.usage });
        self.remove(o.id);
    }

    fn fail(&mut self, id: RequestId, msg: &str) {
        self.engine.abort(id);
        if let Some(a) = self.remove(id) {
            let _ = a.events.send(Event::Failed(msg.to_string()));
        }
    }

    fn fail_all(&mut self, msg: &str) {
        let ids: Vec<RequestId> = self.active.keys().copied().collect();
        for id in ids {
            self.fail(id, msg);
        }
    }

    fn remove(&mut self, id: RequestId) -> Option<Active> {
        let a = self.active.remove(&id)?;
        self.keys.remove(&a.key);
        Some(a)
    }

    fn publish(&self) {
        let s = WorkerStats {
            counters: self.engine.counters(),
            gauges: self.engine.gauges(),
            queued: self.queued.len(),
            output_us: self.output_us,
        };
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn tiny_cfg() -> EngineConfig {
        EngineConfig { max_ctx: Some(256), kv_blocks: Some(32), max_num_seqs: 4, ..Default::default() }
    }

    fn tiny_loader() -> impl FnOnce() -> Result<ModelFiles, EngineError> + Send + 'static {
        let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/golden/tiny-llama3"));
        move || Ok(encore_models::hub::open_model(&path)?)
    }

    fn params(max_tokens: usize) -> SamplingParams {
        SamplingParams { max_tokens, ignore_eos: true, ..Default::default() }
    }

    fn ready(limits: QueueLimits) -> EngineHandle {
        let h = spawn(tiny_cfg(), limits, tiny_loader());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(h.wait_loaded()).expect("tiny model loads");
        h
    }

    /// Polls `f` for up to 10 s.
    fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn collect(s: &mut Submission) -> (Vec<u32>, FinishReason, Usage) {
        let mut ids = Vec::new();
        loop {
            match s.events.blocking_recv().expect("a stream ends with Done") {
                Event::Token { id, .. } => ids.push(id),
                Event::Done { finish, usage, .. } => return (ids, finish, usage),
                Event::Failed(m) => panic!("request failed: {m}"),
            }
        }
    }

    #[test]
    fn a_request_runs_to_its_length_with_usage() {
        let h = ready(QueueLimits::default());
        let mut s = h.submit(vec![1, 5, 9, 13], params(6)).unwrap();
        let (ids, finish, usage) = collect(&mut s);
        assert_eq!((ids.len(), finish), (6, FinishReason::Length));
        assert_eq!(usage, Usage { prompt_tokens: 4, completion_tokens: 6, cached_tokens: 0 });
        drop(s);
        h.shutdown();
    }

    #[test]
    fn concurrent_greedy_requests_match_the_same_request_alone() {
        let h = ready(QueueLimits::default());
        let alone = collect(&mut h.submit(vec![1, 7, 3], params(8)).unwrap()).0;
        let mut subs: Vec<Submission> = (0..3).map(|_| h.submit(vec![1, 7, 3], params(8)).unwrap()).collect();
        for s in &mut subs {
            assert_eq!(collect(s).0, alone);
        }
        h.shutdown();
    }

    #[test]
    fn worker_aborts_a_request_whose_receiver_is_dropped() {
        let h = ready(QueueLimits::default());
        let mut s = h.submit(vec![1, 2, 3], params(200)).unwrap();
        assert!(matches!(s.events.blocking_recv(), Some(Event::Token { .. })));
        drop(s);
        eventually("the abort", || {
            let st = h.stats();
            st.counters.aborted == 1 && st.gauges.running == 0 && st.gauges.kv_blocks_free == st.gauges.kv_blocks
        });
        assert!(h.stats().counters.generated_tokens < 200);
        assert_eq!(h.in_flight(), 0);
        h.shutdown();
    }

    #[test]
    fn queue_full_until_a_place_is_given_back() {
        let h = ready(QueueLimits { max_concurrent: 1, max_queue: 1 });
        let a = h.submit(vec![1, 2], params(100)).unwrap();
        let b = h.submit(vec![1, 2], params(100)).unwrap();
        assert!(matches!(h.submit(vec![1, 2], params(4)), Err(SubmitError::QueueFull(2))));
        drop(a);
        let mut c = h.submit(vec![1, 2], params(4)).unwrap();
        drop(b);
        assert_eq!(collect(&mut c).0.len(), 4);
        h.shutdown();
    }

    #[test]
    fn explicit_abort_ends_the_stream_with_abort() {
        let h = ready(QueueLimits::default());
        let mut s = h.submit(vec![1, 2, 3], params(200)).unwrap();
        h.abort(s.key);
        let (_, finish, _) = collect(&mut s);
        assert_eq!(finish, FinishReason::Abort);
        h.shutdown();
    }

    #[test]
    fn submit_answers_loading_then_invalid_requests_name_the_problem() {
        let (go, wait) = mpsc::channel::<()>();
        let load = tiny_loader();
        let h = spawn(tiny_cfg(), QueueLimits::default(), move || {
            let _ = wait.recv();
            load()
        });
        assert!(matches!(h.submit(vec![1], params(1)), Err(SubmitError::Loading)));
        go.send(()).unwrap();
        eventually("the load", || h.info().is_some());
        let err = |p: Vec<u32>, sp| h.submit(p, sp).err().expect("refused").to_string();
        assert!(err(vec![], params(1)).contains("empty"));
        assert!(err(vec![600], params(1)).contains("vocabulary"));
        assert!(err(vec![1; 256], params(1)).contains("context"));
        assert!(err(vec![1], SamplingParams { top_p: 2.0, ..params(1) }).contains("--top-p"));
        h.shutdown();
    }

    #[test]
    fn a_failed_load_is_reported() {
        let h = spawn(tiny_cfg(), QueueLimits::default(), || Err(EngineError::Config("no such model".into())));
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert!(rt.block_on(h.wait_loaded()).err().unwrap().contains("no such model"));
        assert!(matches!(h.submit(vec![1], params(1)), Err(SubmitError::LoadFailed(_))));
    }
}
