//! Chat templates: the Jinja template of `tokenizer_config.json` (or `chat_template.jinja`,
//! or GGUF's `tokenizer.chat_template`) rendered with minijinja the way transformers'
//! `apply_chat_template` renders it: `trim_blocks` + `lstrip_blocks`, loop controls,
//! Python string/dict methods (`.strip()`, `.items()`, ...), `raise_exception`,
//! `strftime_now`, and a `tojson` that prints like Python's `json.dumps`.

use crate::error::{ModelError, Result};
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

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// `bos_token` / `eos_token` are the strings the template sees (empty when the model has none).
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<JValue, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| strftime(&fmt, unix_now()));
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ModelError::ChatTemplate { msg: one_line(&e) })?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
        })
    }

    /// The template of a `tokenizer_config.json` (`chat_template` as a string, or a list of
    /// `{name, template}` of which `default` is taken), else of a `chat_template.jinja` beside
    /// it; `None` if neither has one.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let config: Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Json { path: path.to_path_buf(), source: e })?;
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
        let source = match source {
            Some(s) => s,
            None if jinja.is_file() => std::fs::read_to_string(&jinja).map_err(|e| ModelError::io(&jinja, e))?,
            None => return Ok(None),
        };
        let in_file = |e: ModelError| match e {
            ModelError::ChatTemplate { msg } => ModelError::ChatTemplate { msg: format!("{}: {msg}", path.display()) },
            e => e,
        };
        Self::new(&source, token("bos_token").as_deref(), token("eos_token").as_deref()).map(Some).map_err(in_file)
    }

    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat").map_err(|e| ModelError::ChatTemplate { msg: one_line(&e) })?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        tmpl.render(ctx).map_err(|e| ModelError::ChatTemplate { msg: one_line(&e) })
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

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent)`,
/// so `", "` / `": "` separators when not indented, and no HTML escaping.
fn tojson(value: JValue, kwargs: Kwargs) -> std::result::Result<JValue, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
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
