//! Hub downloads against a local HTTP server started in the test, serving fixture repos in
//! the hub's URL layout (`/api/models/{repo}/revision/{rev}`, `/{repo}/resolve/{rev}/{file}`
//! with ETag, X-Repo-Commit, Content-Length and Range): a safetensors repo (the tiny-llama3
//! golden model), a GGUF file, a download cut mid-file and resumed, offline mode, and a gated
//! repo answering 401 without the token. Loopback only; every wait is bounded.

use encore_models::golden::golden_dir;
use encore_models::hub::open_model;
use encore_models::hub_download::{download_model, HubOptions};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_secret";

/// repo -> (file -> bytes); `gated` repos need `Authorization: Bearer TOKEN`.
#[derive(Default)]
struct Fixture {
    repos: HashMap<String, Vec<(String, Vec<u8>)>>,
    gated: Vec<String>,
    /// file name -> bytes to send before cutting the connection, once
    cut_once: Mutex<HashMap<String, usize>>,
    /// "GET path [range]" of every request
    log: Mutex<Vec<String>>,
}

struct Server {
    endpoint: String,
    fixture: Arc<Fixture>,
}

impl Server {
    fn start(fixture: Fixture) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let fixture = Arc::new(fixture);
        let f = fixture.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let f = f.clone();
                std::thread::spawn(move || {
                    let _ = serve(&f, stream);
                });
            }
        });
        Server { endpoint, fixture }
    }

    fn log(&self) -> Vec<String> {
        self.fixture.log.lock().unwrap().clone()
    }
}

fn serve(f: &Fixture, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_lowercase(), v.trim().to_string());
            }
        }
        let range = headers.get("range").cloned();
        f.log.lock().unwrap().push(format!("GET {path} {}", range.clone().unwrap_or_default()));
        let authorized = headers.get("authorization").is_some_and(|a| a == &format!("Bearer {TOKEN}"));
        if !respond(f, &mut stream, &path, range.as_deref(), authorized)? {
            return Ok(());
        }
    }
}

/// Writes one response; `false` when the connection was cut.
fn respond(f: &Fixture, s: &mut TcpStream, path: &str, range: Option<&str>, authorized: bool) -> std::io::Result<bool> {
    let reply = |s: &mut TcpStream, status: &str, extra: &str, body: &[u8]| {
        write!(s, "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}\r\n", body.len())?;
        s.write_all(body)
    };
    let (repo, rest) = if let Some(p) = path.strip_prefix("/api/models/") {
        let (repo, _) = p.split_once("/revision/").unwrap_or((p, ""));
        (repo.to_string(), None)
    } else {
        let p = path.trim_start_matches('/');
        match p.split_once("/resolve/main/") {
            Some((repo, file)) => (repo.to_string(), Some(file.to_string())),
            None => (String::new(), None),
        }
    };
    let Some(files) = f.repos.get(&repo) else {
        reply(s, "404 Not Found", "", b"{\"error\":\"Repository not found\"}")?;
        return Ok(true);
    };
    if f.gated.contains(&repo) && !authorized {
        reply(s, "401 Unauthorized", "", b"{\"error\":\"Access to model is restricted\"}")?;
        return Ok(true);
    }
    let Some(file) = rest else {
        let siblings: Vec<String> = files.iter().map(|(n, _)| format!("{{\"rfilename\":\"{n}\"}}")).collect();
        let body = format!("{{\"sha\":\"{COMMIT}\",\"siblings\":[{}]}}", siblings.join(","));
        reply(s, "200 OK", "Content-Type: application/json\r\n", body.as_bytes())?;
        return Ok(true);
    };
    let Some((_, data)) = files.iter().find(|(n, _)| *n == file) else {
        reply(s, "404 Not Found", "", b"{\"error\":\"Entry not found\"}")?;
        return Ok(true);
    };
    let etag = format!("\"etag-{}-{}\"", file.replace(['/', '.'], "_"), data.len());
    let meta = format!("ETag: {etag}\r\nX-Repo-Commit: {COMMIT}\r\n");
    let total = data.len();
    let start: usize = match range.and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => r.split('-').next().and_then(|a| a.parse().ok()).unwrap_or(0),
        None => 0,
    };
    let end = match range.and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.split_once('-')) {
        Some((_, e)) if !e.is_empty() => e.parse::<usize>().unwrap_or(total - 1).min(total - 1),
        _ => total - 1,
    };
    let body = &data[start.min(total)..=end.max(start).min(total - 1)];
    let body = if start >= total { &[][..] } else { body };
    let (status, extra) = match range {
        Some(_) => ("206 Partial Content", format!("{meta}Content-Range: bytes {start}-{end}/{total}\r\n")),
        None => ("200 OK", meta),
    };
    // a full body (not the 1-byte metadata probe) of a file marked to be cut: send part, close
    if body.len() > 1 {
        if let Some(n) = f.cut_once.lock().unwrap().remove(&file) {
            write!(s, "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}\r\n", body.len())?;
            s.write_all(&body[..n.min(body.len())])?;
            s.flush()?;
            let _ = s.shutdown(std::net::Shutdown::Both);
            return Ok(false);
        }
    }
    reply(s, status, &extra, body)?;
    Ok(true)
}

fn options(server: &Server, cache: &Path) -> HubOptions {
    HubOptions {
        cache: cache.to_path_buf(),
        endpoint: server.endpoint.clone(),
        token: None,
        offline: false,
        progress: false,
        max_retries: 0,
    }
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The tiny-llama3 golden model as `org/tiny` (config + safetensors + generation config).
fn tiny_llama_repo() -> Vec<(String, Vec<u8>)> {
    let dir = golden_dir().join("tiny-llama3");
    ["config.json", "generation_config.json", "model.safetensors"]
        .iter()
        .map(|f| (f.to_string(), read(&dir.join(f))))
        .collect()
}

fn gguf_bytes() -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend((0..200_000u32).map(|i| (i * 7 % 251) as u8));
    v
}

#[test]
fn a_safetensors_repo_downloads_into_the_hf_cache_and_opens() {
    let mut fx = Fixture::default();
    fx.repos.insert("org/tiny".into(), tiny_llama_repo());
    let server = Server::start(fx);
    let cache = tempfile::tempdir().unwrap();
    let snap = download_model(&options(&server, cache.path()), "org/tiny", None).unwrap();
    assert_eq!(snap, cache.path().join(format!("models--org--tiny/snapshots/{COMMIT}")));
    assert_eq!(std::fs::read_to_string(cache.path().join("models--org--tiny/refs/main")).unwrap(), COMMIT);
    for (name, data) in tiny_llama_repo() {
        assert_eq!(read(&snap.join(&name)), data, "{name}");
    }
    let blobs = std::fs::read_dir(cache.path().join("models--org--tiny/blobs"))
        .unwrap()
        .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".lock"))
        .count();
    assert_eq!(blobs, 3, "one blob per file (beside hf-hub's lock files)");
    let m = open_model(&snap).unwrap();
    assert_eq!(
        m.config.num_hidden_layers,
        open_model(&golden_dir().join("tiny-llama3")).unwrap().config.num_hidden_layers
    );

    // a second call is served by the cache: no request at all
    let before = server.log().len();
    assert_eq!(download_model(&options(&server, cache.path()), "org/tiny", None).unwrap(), snap);
    assert_eq!(server.log().len(), before);
    // offline, the cache is enough; a repo it lacks is a one-line error naming HF_HUB_OFFLINE
    let offline = HubOptions { offline: true, ..options(&server, cache.path()) };
    assert_eq!(download_model(&offline, "org/tiny", None).unwrap(), snap);
    let e = download_model(&offline, "org/absent", None).unwrap_err().to_string();
    assert!(e.contains("HF_HUB_OFFLINE") && e.contains("`org/absent`") && !e.contains('\n'), "{e}");
    assert_eq!(server.log().len(), before, "offline sends nothing");
    let e = download_model(&options(&server, cache.path()), "org/absent", None).unwrap_err().to_string();
    assert!(e.contains("`org/absent`") && e.contains("404"), "{e}");
}

#[test]
fn a_gguf_file_download_resumes_after_a_cut_connection() {
    let data = gguf_bytes();
    let mut fx = Fixture::default();
    fx.repos.insert("org/q".into(), vec![("m.Q4.gguf".into(), data.clone()), ("README.md".into(), b"hi".to_vec())]);
    fx.cut_once.lock().unwrap().insert("m.Q4.gguf".into(), 70_000);
    let server = Server::start(fx);
    let cache = tempfile::tempdir().unwrap();
    let opts = options(&server, cache.path());
    let e = download_model(&opts, "org/q", Some("m.Q4.gguf")).unwrap_err().to_string();
    assert!(e.contains("`org/q:m.Q4.gguf`") && !e.contains('\n'), "{e}");
    let parts: Vec<u64> = std::fs::read_dir(cache.path().join("models--org--q/blobs"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .map(|e| e.metadata().unwrap().len())
        .collect();
    assert_eq!(parts, [70_000], "the partial download is kept");
    let path = download_model(&opts, "org/q", Some("m.Q4.gguf")).unwrap();
    assert_eq!(path, cache.path().join(format!("models--org--q/snapshots/{COMMIT}/m.Q4.gguf")));
    assert_eq!(read(&path), data);
    assert!(server.log().iter().any(|l| l.ends_with("bytes=70000-")), "resumed with a Range: {:?}", server.log());
}

#[test]
fn a_gated_repo_needs_hf_token() {
    let mut fx = Fixture::default();
    fx.repos.insert("org/gated".into(), vec![("g.gguf".into(), gguf_bytes())]);
    fx.gated.push("org/gated".into());
    let server = Server::start(fx);
    let cache = tempfile::tempdir().unwrap();
    let e = download_model(&options(&server, cache.path()), "org/gated", Some("g.gguf")).unwrap_err().to_string();
    assert!(e.contains("401") && e.contains("HF_TOKEN is not set") && !e.contains('\n'), "{e}");
    let e = download_model(&options(&server, cache.path()), "org/gated", None).unwrap_err().to_string();
    assert!(e.contains("401") && e.contains("HF_TOKEN"), "{e}");
    let wrong = HubOptions { token: Some("hf_wrong".into()), ..options(&server, cache.path()) };
    let e = download_model(&wrong, "org/gated", Some("g.gguf")).unwrap_err().to_string();
    assert!(e.contains("the token in HF_TOKEN has no access"), "{e}");
    let ok = HubOptions { token: Some(TOKEN.into()), ..options(&server, cache.path()) };
    assert_eq!(read(&download_model(&ok, "org/gated", Some("g.gguf")).unwrap()), gguf_bytes());
}

#[test]
fn hub_specs() {
    use encore_models::hub_download::parse_hub_spec;
    assert_eq!(parse_hub_spec("org/name"), Some(("org/name", None)));
    assert_eq!(parse_hub_spec("org/name:sub/F.Q4_K_M.gguf"), Some(("org/name", Some("sub/F.Q4_K_M.gguf"))));
    for bad in ["org", "org/name/x", "/name", "org/.x", "org/name:f.bin", "org/name:../x.gguf", "org/name:/x.gguf"] {
        assert_eq!(parse_hub_spec(bad), None, "{bad}");
    }
}
