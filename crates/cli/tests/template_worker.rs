//! Chat templates rendered in the `encore` binary's worker process
//! (`encore_models::chat_worker`): the same text and errors as in this process, a memory
//! cap and a time limit that fail one render and not the caller, and a fresh worker after.

use encore_models::chat::{ChatTemplate, Message, TemplateLimits};
use encore_models::chat_worker::Isolation;
use std::path::PathBuf;
use std::time::Duration;

fn isolation() -> Isolation {
    Isolation {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_encore")),
        memory_bytes: 256 << 20,
        timeout: Duration::from_secs(20),
    }
}

/// A Llama-3-like template: namespace, trim, tojson, raise_exception, non-ASCII content.
const TEMPLATE: &str = "{{- bos_token }}{%- set ns = namespace(system='') %}{%- for m in messages %}\
    {%- if m['role'] == 'system' %}{%- set ns.system = m['content'] | trim %}\
    {%- elif m['role'] == 'tool' %}{{ raise_exception('no tools here') }}\
    {%- else %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}\
    {%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}\
    {%- endif %}{{ ns.system | tojson }}";

#[test]
fn the_worker_renders_what_this_process_renders() {
    let here = ChatTemplate::new(TEMPLATE, Some("<s>"), Some("</s>")).unwrap();
    let there = ChatTemplate::new(TEMPLATE, Some("<s>"), Some("</s>")).unwrap().isolated(isolation());
    assert!(there.isolation().is_some() && here.isolation().is_none());
    let conversations = [
        vec![Message::new("user", "Hi!")],
        vec![
            Message::new("system", "  Be brief. \"é\" \n"),
            Message::new("user", "a\nb"),
            Message::new("assistant", "ok"),
        ],
        vec![Message::new("user", &"long ".repeat(20_000))],
        vec![],
    ];
    for (k, msgs) in conversations.iter().enumerate() {
        for gen in [false, true] {
            assert_eq!(there.render(msgs, gen).unwrap(), here.render(msgs, gen).unwrap(), "conversation {k}, {gen}");
        }
    }
    let tool = [Message::new("tool", "x")];
    let (a, b) =
        (there.render(&tool, true).unwrap_err().to_string(), here.render(&tool, true).unwrap_err().to_string());
    assert!(a == b && a.contains("no tools here"), "{a} | {b}");
}

#[test]
fn fuel_and_output_limits_travel_to_the_worker() {
    let limits = TemplateLimits { fuel: 10_000, max_output_bytes: 100 };
    let looping = "{% for i in range(100000) %}{% endfor %}";
    let t = ChatTemplate::lenient(looping, None, None, "loop.json").with_limits(limits).isolated(isolation());
    let e = t.render(&[], false).unwrap_err().to_string();
    assert!(e.contains("loop.json") && e.contains("stopped after 10000 instructions"), "{e}");
    let flooding = "{% for i in range(1000) %}xxxxxxxx{% endfor %}";
    let t = ChatTemplate::lenient(flooding, None, None, "flood.json").with_limits(limits).isolated(isolation());
    let e = t.render(&[], false).unwrap_err().to_string();
    assert!(e.contains("flood.json") && e.contains("output passed the limit"), "{e}");
}

#[test]
fn running_out_of_memory_or_time_fails_one_render_then_a_fresh_worker_serves() {
    let src = "{% if messages[0].content == 'boom' %}{% set ns = namespace(s='ab') %}\
        {% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{% endif %}\
        {% if messages[0].content == 'slow' %}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{% endif %}\
        [{{ messages[0].content }}]";
    let limits = TemplateLimits { fuel: u64::MAX, max_output_bytes: 1 << 20 };
    let t = ChatTemplate::lenient(src, None, None, "m.gguf").with_limits(limits).isolated(isolation());
    let ok = |t: &ChatTemplate| assert_eq!(t.render(&[Message::new("user", "ok")], false).unwrap(), "[ok]");
    ok(&t);
    let e = t.render(&[Message::new("user", "boom")], false).unwrap_err().to_string();
    assert!(e.contains("m.gguf") && e.contains("ran out of its 256.0 MiB memory limit"), "{e}");
    ok(&t);
    // a short time limit only for the slow render (filling 256 MiB takes a while on a busy CPU)
    let iso = Isolation { timeout: Duration::from_millis(1500), ..isolation() };
    let t = ChatTemplate::lenient(src, None, None, "m.gguf").with_limits(limits).isolated(iso);
    let e = t.render(&[Message::new("user", "slow")], false).unwrap_err().to_string();
    assert!(e.contains("m.gguf") && e.contains("took longer than 1.5s"), "{e}");
    ok(&t);
}

#[test]
fn a_missing_worker_executable_is_an_error_naming_it() {
    let iso = Isolation { exe: PathBuf::from("/nonexistent/encore"), ..isolation() };
    let t = ChatTemplate::new("x", None, None).unwrap().isolated(iso);
    let e = t.render(&[], false).unwrap_err().to_string();
    assert!(e.contains("cannot start the template worker /nonexistent/encore"), "{e}");
}
