//! Chat templates: the Jinja template of `tokenizer_config.json` (or `chat_template.jinja`,
//! or GGUF's `tokenizer.chat_template`) rendered with minijinja the way transformers'
//! `apply_chat_template` renders it: `trim_blocks` + `lstrip_blocks`, loop controls,
//! Python string/dict methods (`.strip()`, `.items()`, ...), `raise_exception`,
//! `strftime_now`, and a `tojson` that prints like Python's `json.dumps`.

use crate::chat_worker::{IsolatedRenderer, Isolation};
use crate::error::{ModelError, Result};
use crate::weights::read_text;
use minijinja::value::{Kwargs, Value as JValue};
use minijinja::{Environment, ErrorKind};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message { role: role.to_string(), content: content.to_string() }
    }
}

/// What one render may cost. A template is code from the model files: without a bound a
/// loop can run for hours or print gigabytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TemplateLimits {
    /// minijinja instructions per render (`Environment::set_fuel`).
    pub fuel: u64,
    /// Output bytes per render, on top of the bytes of the messages themselves (a template
    /// prints each message once; a long prompt must not hit the limit).
    pub max_output_bytes: usize,
}

impl Default for TemplateLimits {
    /// 20M instructions (a fraction of a second; real templates use a few thousand per
    /// message) and 1 MiB of output beyond the messages.
    fn default() -> Self {
        TemplateLimits { fuel: 20_000_000, max_output_bytes: 1 << 20 }
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    /// The compile error of a template accepted by [`ChatTemplate::lenient`]: reported by
    /// `render`, so a broken template only breaks `--chat`.
    broken: Option<String>,
    /// Where the template came from ("m.gguf: tokenizer.chat_template"), for messages.
    origin: String,
    bos_token: String,
    eos_token: String,
    limits: TemplateLimits,
    /// The template text (a worker compiles it again).
    source: String,
    /// Some: renders run in a worker process ([`crate::chat_worker`]).
    isolated: Option<IsolatedRenderer>,
}

impl ChatTemplate {
    /// `bos_token` / `eos_token` are the strings the template sees (empty when the model has
    /// none). A template that does not compile is an error here.
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let t = Self::lenient(source, bos_token, eos_token, "");
        t.check()?;
        Ok(t)
    }

    /// Like [`ChatTemplate::new`], but a template that does not compile is accepted and the
    /// error (prefixed by `origin`) comes from [`ChatTemplate::render`] and
    /// [`ChatTemplate::check`]: loading a model must not fail because of its template.
    pub fn lenient(source: &str, bos_token: Option<&str>, eos_token: Option<&str>, origin: &str) -> Self {
        let limits = TemplateLimits::default();
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(fuel_level(limits.fuel)));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<JValue, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| strftime(&fmt, unix_now()));
        env.add_filter("tojson", tojson);
        let broken = env.add_template_owned("chat", source.to_string()).err().map(|e| one_line(&e));
        ChatTemplate {
            env,
            broken,
            origin: origin.to_string(),
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
            limits,
            source: source.to_string(),
            isolated: None,
        }
    }

    /// Renders from now on in a worker process with a memory cap (see
    /// [`crate::chat_worker`]); the binaries do this, library callers may.
    pub fn isolated(mut self, iso: Isolation) -> Self {
        self.isolated = Some(IsolatedRenderer::new(iso));
        self
    }

    /// Where renders run, if not in this process.
    pub fn isolation(&self) -> Option<&Isolation> {
        self.isolated.as_ref().map(IsolatedRenderer::isolation)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn limits(&self) -> TemplateLimits {
        self.limits
    }

    /// The `bos_token` and `eos_token` strings the template sees.
    pub fn special_tokens(&self) -> (&str, &str) {
        (&self.bos_token, &self.eos_token)
    }

    /// Replaces the default [`TemplateLimits`].
    pub fn with_limits(mut self, limits: TemplateLimits) -> Self {
        self.env.set_fuel(Some(fuel_level(limits.fuel)));
        self.limits = limits;
        self
    }

    /// `Err` when the template does not compile.
    pub fn check(&self) -> Result<()> {
        match &self.broken {
            Some(msg) => Err(self.error(msg)),
            None => Ok(()),
        }
    }

    pub(crate) fn error(&self, msg: &str) -> ModelError {
        ModelError::ChatTemplate { msg: self.prefixed(msg) }
    }

    /// `msg` after the template's origin.
    pub(crate) fn prefixed(&self, msg: &str) -> String {
        if self.origin.is_empty() {
            msg.to_string()
        } else {
            format!("{}: {msg}", self.origin)
        }
    }

    /// The template of a `tokenizer_config.json` (`chat_template` as a string, or a list of
    /// `{name, template}` of which `default` is taken), else of a `chat_template.jinja` beside
    /// it; `None` if neither has one. A template that does not compile is accepted (see
    /// [`ChatTemplate::lenient`]); a file that is not JSON is an error.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>> {
        let text = read_text(path)?;
        let config: Value = serde_json::from_str(&text).map_err(|e| ModelError::json(path, e))?;
        let token = |k: &str| match config.get(k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(m)) => m.get("content").and_then(Value::as_str).map(str::to_string),
            _ => None,
        };
        let source = match config.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        };
        let jinja = path.with_file_name("chat_template.jinja");
        let (source, origin) = match source {
            Some(s) => (s, format!("{}: chat_template", path.display())),
            None if jinja.is_file() => (read_text(&jinja)?, jinja.display().to_string()),
            None => return Ok(None),
        };
        Ok(Some(Self::lenient(&source, token("bos_token").as_deref(), token("eos_token").as_deref(), &origin)))
    }

    /// Renders the conversation, within the [`TemplateLimits`]: running out of fuel or
    /// printing past the output limit is an error that says which (and, isolated, running
    /// out of memory or time).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.check()?;
        match &self.isolated {
            Some(worker) => worker.render(self, messages, add_generation_prompt),
            None => self.render_here(messages, add_generation_prompt),
        }
    }

    /// [`ChatTemplate::render`] in this process.
    fn render_here(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(|e| self.error(&one_line(&e)))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        let input: usize = messages.iter().map(|m| m.content.len() + m.role.len()).sum();
        let limit = self.limits.max_output_bytes.saturating_add(input.saturating_mul(2));
        let mut out = LimitedWriter { buf: Vec::new(), limit, exceeded: false };
        if let Err(e) = tmpl.render_captured_to(ctx, &mut out) {
            let msg = if out.exceeded {
                format!(
                    "the output passed the limit of {} (a template that does not stop printing?)",
                    crate::limits::human_bytes(limit as u64)
                )
            } else if e.kind() == ErrorKind::OutOfFuel {
                format!("stopped after {} instructions (a loop that does not end?)", self.limits.fuel)
            } else {
                one_line(&e)
            };
            return Err(self.error(&msg));
        }
        String::from_utf8(out.buf).map_err(|_| self.error("the output is not UTF-8"))
    }
}

/// minijinja keeps the remaining fuel in an `isize`: a larger level would wrap negative and
/// stop every render at its first instruction.
fn fuel_level(fuel: u64) -> u64 {
    fuel.min(isize::MAX as u64)
}

/// Collects rendered output up to `limit` bytes; past it, writes fail (and minijinja stops).
struct LimitedWriter {
    buf: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl std::io::Write for LimitedWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("chat template output limit"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// minijinja errors carry their cause chain; keep it on one line.
fn one_line(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    msg.replace('\n', " ")
}

/// The widest `tojson(indent=...)` accepted (templates use 2 or 4).
const MAX_TOJSON_INDENT: usize = 64;

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent)`,
/// so `", "` / `": "` separators when not indented, and no HTML escaping.
fn tojson(value: JValue, kwargs: Kwargs) -> std::result::Result<JValue, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    // the template's number: `indent=1e18` must be an error, not an allocation of 1e18 spaces
    if let Some(n) = indent.filter(|&n| n > MAX_TOJSON_INDENT) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: indent={n} is over the limit of {MAX_TOJSON_INDENT}"),
        ));
    }
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    py_json(&json, indent, 0, &mut out);
    Ok(JValue::from_safe_string(out))
}

fn py_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let items: Vec<(Option<&String>, &Value)> = match v {
        Value::Array(a) if !a.is_empty() => a.iter().map(|x| (None, x)).collect(),
        Value::Object(m) if !m.is_empty() => m.iter().map(|(k, x)| (Some(k), x)).collect(),
        Value::Array(_) => return out.push_str("[]"),
        Value::Object(_) => return out.push_str("{}"),
        scalar => return out.push_str(&scalar.to_string()),
    };
    let (open, close) = if v.is_array() { ('[', ']') } else { ('{', '}') };
    out.push(open);
    for (i, (key, x)) in items.into_iter().enumerate() {
        match (i, indent) {
            (_, Some(n)) => {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                out.push_str(&" ".repeat(n * (depth + 1)));
            }
            (0, None) => {}
            (_, None) => out.push_str(", "),
        }
        if let Some(k) = key {
            out.push_str(&Value::String(k.clone()).to_string());
            out.push_str(": ");
        }
        py_json(x, indent, depth + 1, out);
    }
    if let Some(n) = indent {
        out.push('\n');
        out.push_str(&" ".repeat(n * depth));
    }
    out.push(close);
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// `strftime` for the few codes chat templates use (`%d %b %Y`, `%B`, `%m`, `%y`, `%H:%M`);
/// UTC. Unknown codes are copied through.
pub fn strftime(fmt: &str, unix_secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('b') => out.push_str(&MONTHS[month as usize - 1][..3]),
            Some('B') => out.push_str(MONTHS[month as usize - 1]),
            Some('H') => out.push_str(&format!("{:02}", secs / 3600)),
            Some('M') => out.push_str(&format!("{:02}", secs % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", secs % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}
