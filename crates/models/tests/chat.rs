//! Chat templates rendered as transformers renders them: SmolLM2's template, trim/lstrip
//! blocks, Python string methods, `raise_exception`, `tojson`, `strftime_now`, and where the
//! template comes from in `tokenizer_config.json`.

mod common;

use common::write;
use encore_models::chat::{strftime, ChatTemplate, Message, TemplateLimits};

const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[test]
fn smollm2_template() {
    let t = ChatTemplate::new(SMOLLM2, Some("<|im_start|>"), Some("<|im_end|>")).unwrap();
    let out = t.render(&[Message::new("user", "Hi!")], true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    );
    let msgs = [Message::new("system", "Be brief."), Message::new("user", "Hi!"), Message::new("assistant", "Hello.")];
    let out = t.render(&msgs, false).unwrap();
    assert_eq!(out, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n");
}

#[test]
fn jinja_features_hf_templates_use() {
    // trim_blocks + lstrip_blocks, bos_token, .strip(), |trim, loop controls, raise_exception
    let src = "{{- bos_token }}\n{% for m in messages %}\n    {% if m.role == 'stop' %}{% break %}{% endif %}\n[{{ m['role'] | upper }}] {{ m['content'].strip() }}|{{ m.content | trim }}\n{% endfor %}\n{% if add_generation_prompt %}[ASSISTANT]{% endif %}";
    let t = ChatTemplate::new(src, Some("<s>"), Some("</s>")).unwrap();
    let msgs = [Message::new("user", "  a b  "), Message::new("stop", ""), Message::new("user", "never")];
    assert_eq!(t.render(&msgs, true).unwrap(), "<s>\n[USER] a b|a b\n[ASSISTANT]", "checked against jinja2");

    let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must start with user') }}{% endif %}ok";
    let t = ChatTemplate::new(src, None, None).unwrap();
    assert_eq!(t.render(&[Message::new("user", "x")], false).unwrap(), "ok");
    let e = t.render(&[Message::new("assistant", "x")], false).unwrap_err().to_string();
    assert!(e.contains("Conversation roles must start with user") && !e.contains('\n'), "{e}");

    let src = "{% if messages[0].content.startswith('/') %}true{% endif %} {{ messages[0].content.split(' ') | length }} {{ messages[0].content.replace('a', 'b') }}";
    let t = ChatTemplate::new(src, None, None).unwrap();
    assert_eq!(t.render(&[Message::new("user", "/a a")], false).unwrap(), "true 2 /b b");
}

#[test]
fn tojson_prints_like_python_json_dumps() {
    let t =
        ChatTemplate::new("{{ messages[0] | tojson }}|{{ ['<a>', 1, none, 2.5, {}] | tojson }}", None, None).unwrap();
    let out = t.render(&[Message::new("user", "é \"q\"")], false).unwrap();
    assert_eq!(
        out, r#"{"role": "user", "content": "é \"q\""}|["<a>", 1, null, 2.5, {}]"#,
        "checked against json.dumps"
    );
    let t = ChatTemplate::new("{{ {'a': [1, 2]} | tojson(indent=2) }}", None, None).unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "{\n  \"a\": [\n    1,\n    2\n  ]\n}");
}

#[test]
fn tojson_with_a_huge_indent_is_an_error_not_an_allocation_abort() {
    // found by the chat_template fuzz target: `indent=1e18` asked for 1e18 spaces
    for n in ["1e18", "9223372036854775807", "18446744073709551615", "65"] {
        let t = ChatTemplate::new(&format!("{{{{ messages | tojson(indent={n}) }}}}"), None, None).unwrap();
        let e = t.render(&[Message::new("user", "x")], false).unwrap_err().to_string();
        assert!(e.contains("tojson") || e.contains("indent"), "{n}: {e}");
    }
    let t = ChatTemplate::new("{{ [1] | tojson(indent=64) }}", None, None).unwrap();
    assert_eq!(t.render(&[], false).unwrap(), format!("[\n{}1\n]", " ".repeat(64)));
}

#[test]
fn strftime_now_and_its_formats() {
    assert_eq!(strftime("%d %b %Y", 0), "01 Jan 1970");
    // 2023-11-14 22:13:20 UTC
    assert_eq!(strftime("%d %B %Y %H:%M:%S %m/%y %%", 1_700_000_000), "14 November 2023 22:13:20 11/23 %");
    // a leap day: 2024-02-29 12:00:00 UTC
    assert_eq!(strftime("%Y-%m-%d", 1_709_208_000), "2024-02-29");
    let t = ChatTemplate::new("{{ strftime_now('%Y') }}", None, None).unwrap();
    let year: i32 = t.render(&[], false).unwrap().parse().unwrap();
    assert!((2024..2200).contains(&year));
}

#[test]
fn template_sources_in_tokenizer_config() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer_config.json");
    let cfg = serde_json::json!({"chat_template": "{{ bos_token }}{{ messages[0].content }}", "bos_token": {"content": "<s>"}});
    write(&p, cfg.to_string().as_bytes());
    let t = ChatTemplate::from_tokenizer_config(&p).unwrap().unwrap();
    assert_eq!(t.render(&[Message::new("user", "x")], false).unwrap(), "<s>x");

    let cfg = serde_json::json!({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]});
    write(&p, cfg.to_string().as_bytes());
    assert_eq!(ChatTemplate::from_tokenizer_config(&p).unwrap().unwrap().render(&[], false).unwrap(), "D");

    write(&p, b"{}");
    assert!(ChatTemplate::from_tokenizer_config(&p).unwrap().is_none());
    write(&dir.path().join("chat_template.jinja"), b"J{{ eos_token }}");
    write(&p, br#"{"eos_token": "</s>"}"#);
    assert_eq!(ChatTemplate::from_tokenizer_config(&p).unwrap().unwrap().render(&[], false).unwrap(), "J</s>");

    // a template that does not compile loads (the model stays usable without --chat); the
    // error comes with the first render, naming the file
    write(&p, br#"{"chat_template": "{% for m in messages %}"}"#);
    let t = ChatTemplate::from_tokenizer_config(&p).unwrap().unwrap();
    let e = t.render(&[Message::new("user", "x")], true).unwrap_err().to_string();
    assert!(e.contains("tokenizer_config.json") && e.starts_with("chat template") && !e.contains('\n'), "{e}");
    assert_eq!(t.check().unwrap_err().to_string(), e);
    write(&p, br#"{"chat_template": "#);
    let e = ChatTemplate::from_tokenizer_config(&p).err().unwrap().to_string();
    assert!(e.contains("tokenizer_config.json") && e.contains("invalid JSON"), "{e}");
}

#[test]
fn a_template_that_does_not_compile_is_an_error_of_new_but_not_of_lenient() {
    assert!(ChatTemplate::new("{% if %}", None, None).is_err());
    let t = ChatTemplate::lenient("{% if %}", None, None, "m.gguf: tokenizer.chat_template");
    let e = t.render(&[], true).unwrap_err().to_string();
    assert!(e.starts_with("chat template: m.gguf: tokenizer.chat_template: "), "{e}");
}

#[test]
fn chat_template_that_loops_forever_runs_out_of_fuel() {
    let src = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
    let t =
        ChatTemplate::new(src, None, None).unwrap().with_limits(TemplateLimits { fuel: 100_000, ..Default::default() });
    let t0 = std::time::Instant::now();
    let e = t.render(&[Message::new("user", "x")], true).unwrap_err().to_string();
    assert!(e.contains("stopped after 100000 instructions") && !e.contains('\n'), "{e}");
    assert!(t0.elapsed().as_secs() < 10);
    // the default limit stops it too, in well under a minute
    let t = ChatTemplate::new(src, None, None).unwrap();
    let t0 = std::time::Instant::now();
    let e = t.render(&[], true).unwrap_err().to_string();
    assert!(e.contains("instructions"), "{e}");
    assert!(t0.elapsed().as_secs() < 30, "{:?}", t0.elapsed());
}

#[test]
fn chat_template_that_prints_gigabytes_hits_the_output_limit() {
    let src = "{% for i in range(100000) %}{{ 'x' * 10000 }}{% endfor %}";
    let limits = TemplateLimits { max_output_bytes: 1 << 20, fuel: u64::MAX };
    let t = ChatTemplate::new(src, None, None).unwrap().with_limits(limits);
    let e = t.render(&[Message::new("user", "hi")], true).unwrap_err().to_string();
    assert!(e.contains("output passed the limit of 1.0 MiB") && !e.contains('\n'), "{e}");
    // a long message is not what the limit is about: it is added on top
    let long = "y".repeat(3 << 20);
    let t = ChatTemplate::new("{{ messages[0].content }}", None, None).unwrap().with_limits(limits);
    assert_eq!(t.render(&[Message::new("user", &long)], false).unwrap().len(), long.len());
}

#[test]
fn smollm2_template_renders_a_long_conversation_within_the_default_limits() {
    let t = ChatTemplate::new(SMOLLM2, None, None).unwrap();
    let msgs: Vec<Message> =
        (0..500).map(|i| Message::new(if i % 2 == 0 { "user" } else { "assistant" }, "some words here")).collect();
    assert!(t.render(&msgs, true).unwrap().len() > 500 * 15);
}
