//! Running the server: bind the port first (so clients get 503, not "connection refused",
//! while the model loads), start the engine thread, serve until SIGINT/SIGTERM, then stop
//! accepting, let running requests finish, drain the engine and return.

use crate::error::ServerError;
use crate::routes::{self, AppState};
use axum::serve::ListenerExt;
use encore_engine::{worker, EngineConfig, QueueLimits};
use encore_models::chat_worker::Isolation;
use encore_models::hub;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::Notify;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// A folder, a .gguf file or an `org/name` id; None: the default model.
    pub model: Option<String>,
    pub served_model_name: Option<String>,
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    pub limits: QueueLimits,
    pub engine: EngineConfig,
    /// Some: chat templates render in a capped worker process (the `encore` binary sets
    /// this); None: in this process.
    pub template_worker: Option<Isolation>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            model: None,
            served_model_name: None,
            api_key: None,
            max_body_bytes: 8 << 20,
            limits: QueueLimits::default(),
            engine: EngineConfig::default(),
            template_worker: None,
        }
    }
}

/// Serve on a runtime of its own until a signal (the `encore serve` entry point).
pub fn run(cfg: ServerConfig) -> Result<(), ServerError> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(cfg, shutdown_signal()))
}

/// SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Serve until `shutdown` resolves (or the model fails to load: that is the error).
pub async fn serve(cfg: ServerConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let listener = TcpListener::bind(&addr).await.map_err(|source| ServerError::Bind { addr, source })?;
    let local = listener.local_addr()?;
    eprintln!("encore: listening on http://{local} (503 until the model is loaded)");
    let spec = cfg.model.clone();
    let iso = cfg.template_worker.clone();
    match &iso {
        Some(iso) => eprintln!("encore: {}", iso.describe()),
        None => eprintln!("encore: chat templates render in this process (no memory cap)"),
    }
    let engine = worker::spawn(cfg.engine.clone(), cfg.limits, move || {
        let path = match &spec {
            Some(m) => hub::resolve_model(m)?,
            None => hub::default_model_path()?,
        };
        let mut files = hub::open_model(&path)?;
        if let Some(iso) = iso {
            files.chat_template = files.chat_template.map(|t| t.isolated(iso));
        }
        Ok(files)
    });
    let mut state = AppState::new(engine.clone(), cfg.model.clone(), cfg.served_model_name.clone());
    state.api_key = cfg.api_key.clone();
    state.max_body_bytes = cfg.max_body_bytes;
    let state = Arc::new(state);

    let failure = Arc::new(Mutex::new(None::<String>));
    let failed = Arc::new(Notify::new());
    let (f, n, st) = (failure.clone(), failed.clone(), state.clone());
    tokio::spawn(async move {
        match st.engine.wait_loaded().await {
            Ok(info) => {
                let r = &info.report;
                let name = st.ready().map(|(_, n)| n.to_string()).unwrap_or_default();
                let dtype = r.dtype.map(|d| d.to_string()).unwrap_or_default();
                eprintln!("encore: {}", r.kv_line());
                if r.capture_secs > 0.0 {
                    eprintln!("encore: step graphs captured in {:.3}s", r.capture_secs);
                }
                for (tokens, why) in &r.fallbacks {
                    eprintln!("warning: steps of {tokens} token rows run eagerly (capture failed): {why}");
                }
                eprintln!(
                    "encore: ready: model `{name}` on {} ({dtype}), loaded in {:.2}s; http://{local}/v1",
                    r.device_name, r.load_secs
                );
            }
            Err(m) => {
                *f.lock().unwrap_or_else(|e| e.into_inner()) = Some(m);
                n.notify_one();
            }
        }
    });
    let stop = async move {
        tokio::select! {
            _ = shutdown => eprintln!("encore: shutting down: no new connections; finishing running requests"),
            _ = failed.notified() => {}
        }
    };
    // TCP_NODELAY: a streamed token is a small write; without it Nagle's algorithm holds it
    // until the client's delayed ACK (40 ms on Linux) of the previous write.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            eprintln!("warning: cannot set TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, routes::router(state)).with_graceful_shutdown(stop).await?;
    if let Some(m) = failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(ServerError::Load(m));
    }
    if engine.info().is_some() {
        // the engine thread finishes what it holds, then exits
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    }
    eprintln!("encore: stopped");
    Ok(())
}
