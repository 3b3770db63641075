//! safetensors loading: single and sharded files, dtype conversion, the committed tiny
//! models, and a one-line error naming the file or tensor for every kind of bad input.

mod common;

use common::{f32_bytes, safetensors_bytes, write};
use encore_models::config::ModelConfig;
use encore_models::golden::golden_dir;
use encore_models::safetensors::SafetensorsWeights;
use encore_models::weights::{open_weights, WeightSource};
use encore_tensor::testing::Rng;
use encore_tensor::{DType, HostTensor};

fn one_line(e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "multi-line error: {s}");
    s
}

#[test]
fn single_file_every_dtype_to_every_dtype() {
    let mut rng = Rng::fresh("single_file_every_dtype_to_every_dtype");
    let values = rng.vec(6, -4.0, 4.0);
    let stored: Vec<HostTensor> = DType::FLOATS.iter().map(|&d| HostTensor::from_f32_as(&[2, 3], &values, d)).collect();
    let names = ["w.f32", "w.bf16", "w.f16"];
    let st = ["F32", "BF16", "F16"];
    let entries: Vec<_> = (0..3).map(|i| (names[i], st[i], vec![2, 3], stored[i].data.clone())).collect();
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("model.safetensors"), &safetensors_bytes(&entries));
    let w = open_weights(dir.path()).unwrap();
    assert_eq!(w.names(), vec!["w.bf16", "w.f16", "w.f32"]);
    for (i, name) in names.iter().enumerate() {
        assert_eq!(w.dims(name), Some(vec![2, 3]));
        for to in DType::FLOATS {
            let t = w.get(name, to).unwrap();
            assert_eq!((t.dtype, &t.dims), (to, &vec![2, 3]));
            assert_eq!(t, stored[i].cast(to).unwrap(), "{name} -> {to}");
        }
    }
    assert!(w.has("w.f32") && !w.has("w.f64"));
}

#[test]
fn sharded_checkpoint_through_the_index() {
    let mut rng = Rng::fresh("sharded_checkpoint_through_the_index");
    let (a, b, c) = (rng.vec(4, -1.0, 1.0), rng.vec(8, -1.0, 1.0), rng.vec(2, -1.0, 1.0));
    let dir = tempfile::tempdir().unwrap();
    let s1 = "model-00001-of-00002.safetensors";
    let s2 = "model-00002-of-00002.safetensors";
    write(
        &dir.path().join(s1),
        &safetensors_bytes(&[("a", "F32", vec![4], f32_bytes(&a)), ("c", "F32", vec![2], f32_bytes(&c))]),
    );
    write(&dir.path().join(s2), &safetensors_bytes(&[("b", "F32", vec![2, 4], f32_bytes(&b))]));
    let index = serde_json::json!({"metadata": {"total_size": 56}, "weight_map": {"a": s1, "c": s1, "b": s2}});
    write(&dir.path().join("model.safetensors.index.json"), index.to_string().as_bytes());
    let w = SafetensorsWeights::open_dir(dir.path()).unwrap();
    assert_eq!(w.files().len(), 2);
    assert_eq!(w.get("a", DType::F32).unwrap().to_f32(), a);
    assert_eq!(w.get("b", DType::F32).unwrap().to_f32(), b);
    assert_eq!(w.get_shaped("c", &[2], DType::F32).unwrap().to_f32(), c);

    // the index names a tensor its shard does not hold
    let index = serde_json::json!({"weight_map": {"a": s1, "b": s1}});
    write(&dir.path().join("model.safetensors.index.json"), index.to_string().as_bytes());
    let e = one_line(SafetensorsWeights::open_dir(dir.path()).err().unwrap());
    assert!(e.contains("index.json") && e.contains("`b`"), "{e}");

    // a shard is missing
    std::fs::remove_file(dir.path().join(s2)).unwrap();
    let index = serde_json::json!({"weight_map": {"a": s1, "b": s2}});
    write(&dir.path().join("model.safetensors.index.json"), index.to_string().as_bytes());
    let e = one_line(SafetensorsWeights::open_dir(dir.path()).err().unwrap());
    assert!(e.contains(s2), "{e}");
}

#[test]
fn missing_truncated_and_corrupt_files_are_one_line_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = one_line(open_weights(dir.path()).err().unwrap());
    assert!(e.contains("no model.safetensors"), "{e}");
    let p = dir.path().join("model.safetensors");
    let e = one_line(SafetensorsWeights::open_file(&p).err().unwrap());
    assert!(e.contains("model.safetensors"), "{e}");

    let good = safetensors_bytes(&[("w", "F32", vec![4, 4], f32_bytes(&[0.5; 16]))]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated data", good[..good.len() - 4].to_vec(), "truncated"),
        ("truncated header", good[..20].to_vec(), "past the end"),
        ("empty", Vec::new(), "too short"),
        ("garbage header", [&good[..8], &vec![b'x'; good.len() - 8][..]].concat(), "safetensors"),
        (
            "shape disagrees with offsets",
            safetensors_bytes(&[("w", "F32", vec![4, 5], f32_bytes(&[0.5; 16]))]),
            "safetensors",
        ),
    ];
    for (what, bytes, needle) in cases {
        write(&p, &bytes);
        let e = one_line(SafetensorsWeights::open_file(&p).err().expect(what));
        assert!(e.contains(&p.display().to_string()) && e.contains(needle), "{what}: {e}");
    }

    write(&dir.path().join("model.safetensors.index.json"), b"{\"weight_map\": ");
    let e = one_line(SafetensorsWeights::open_dir(dir.path()).err().unwrap());
    assert!(e.contains("index.json") && e.contains("JSON"), "{e}");
}

#[test]
fn missing_tensor_wrong_shape_and_unsupported_dtype_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.safetensors");
    write(
        &p,
        &safetensors_bytes(&[("w", "F32", vec![2, 2], f32_bytes(&[1.0; 4])), ("ids", "I64", vec![2], vec![1; 16])]),
    );
    let w = SafetensorsWeights::open_file(&p).unwrap();
    let e = one_line(w.get("lm_head.weight", DType::F32).unwrap_err());
    assert!(e.contains("`lm_head.weight`") && e.contains("model.safetensors"), "{e}");
    let e = one_line(w.get_shaped("w", &[4, 1], DType::F32).unwrap_err());
    assert_eq!(e, "tensor `w`: expected shape [4, 1], found [2, 2]");
    let e = one_line(w.get("ids", DType::F32).unwrap_err());
    assert!(e.contains("`ids`") && e.contains("I64"), "{e}");
}

#[test]
fn committed_tiny_models_load_with_the_shapes_their_config_names() {
    for name in ["tiny-llama3", "tiny-qwen2", "tiny-mistral", "tiny-qwen3", "tiny-gemma3"] {
        let dir = golden_dir().join(name);
        let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let w = open_weights(&dir).unwrap();
        let (c, d) = (cfg.hidden_size, cfg.head_dim);
        let q = w
            .get_shaped("model.layers.1.self_attn.q_proj.weight", &[cfg.num_attention_heads * d, c], DType::BF16)
            .unwrap();
        assert_eq!(q.dtype, DType::BF16);
        let k = w
            .get_shaped("model.layers.0.self_attn.k_proj.weight", &[cfg.num_key_value_heads * d, c], DType::F32)
            .unwrap();
        assert!(k.to_f32().iter().all(|v| v.is_finite()) && k.to_f32().iter().any(|&v| v != 0.0));
        w.get_shaped("model.embed_tokens.weight", &[cfg.vocab_size, c], DType::F32).unwrap();
        w.get_shaped("model.norm.weight", &[c], DType::F32).unwrap();
        assert_eq!(w.has("lm_head.weight"), !cfg.tie_word_embeddings, "{name}");
        assert_eq!(w.has("model.layers.0.self_attn.q_proj.bias"), cfg.attention_bias, "{name}");
        let per_layer = 9
            + if cfg.attention_bias { 3 } else { 0 }
            + if cfg.flags.qk_norm { 2 } else { 0 }
            + if cfg.flags.sandwich_norms { 2 } else { 0 };
        let expected = 2 + usize::from(!cfg.tie_word_embeddings) + cfg.num_hidden_layers * per_layer;
        assert_eq!(w.names().len(), expected, "{name}");
    }
}

/// A safetensors file from a raw JSON header text (no checks: for corrupt headers).
fn raw_file(header: &str, data_len: usize) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.resize(out.len() + data_len, 0);
    out
}

fn open_err(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.safetensors");
    write(&p, bytes);
    let e = one_line(SafetensorsWeights::open_file(&p).err().expect("the file should be refused"));
    assert!(e.contains("model.safetensors"), "{e}");
    e
}

#[test]
fn safetensors_shape_dtype_error_names_the_tensor() {
    let e = open_err(&safetensors_bytes(&[
        ("ok", "F32", vec![1], f32_bytes(&[1.0])),
        ("model.norm.weight", "F32", vec![4, 5], f32_bytes(&[0.5; 16])),
    ]));
    assert!(e.contains("`model.norm.weight`") && e.contains("needs 80 bytes") && e.contains("hold 64"), "{e}");
    let e = open_err(&raw_file(r#"{"w":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}"#, 4));
    assert!(e.contains("`w`") && e.contains("unknown dtype `F33`"), "{e}");
    let e = open_err(&raw_file(r#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, 4));
    assert!(e.contains("`w`"), "{e}");
    let e = open_err(&raw_file(r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#, 4));
    assert!(e.contains("`w`") && e.contains("overflows"), "{e}");
    let e = open_err(&raw_file(r#"{"w":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#, 2));
    assert!(e.contains("`w`") && e.contains("not a whole number of bytes"), "{e}");
}

#[test]
fn overlapping_safetensors_tensor_data_is_an_error_naming_both() {
    let h = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;
    let e = open_err(&raw_file(h, 16));
    assert!(e.contains("`a`") && e.contains("`b`") && e.contains("overlap"), "{e}");
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let e = open_err(&raw_file(h, 8));
    assert!(e.contains("overlap"), "{e}");
}

#[test]
fn duplicate_safetensors_tensor_names_are_an_error_not_last_one_wins() {
    let h = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let e = open_err(&raw_file(h, 8));
    assert!(e.contains("`w` appears twice"), "{e}");
}

#[test]
fn safetensors_bytes_that_belong_to_no_tensor_are_an_error() {
    let h = r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let e = open_err(&raw_file(h, 8));
    assert!(e.contains("data bytes 0..4 belong to no tensor"), "{e}");
    let e = open_err(&raw_file(r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 12));
    assert!(e.contains("8 bytes after the last tensor"), "{e}");
    let e = open_err(&raw_file(r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#, 8));
    assert!(e.contains("`w`") && e.contains("end before they start"), "{e}");
    let e = open_err(&[&(u64::MAX).to_le_bytes()[..], b"{}"].concat());
    assert!(e.contains("over the format's limit"), "{e}");
}

#[test]
fn safetensors_metadata_and_zero_sized_tensors_are_accepted() {
    let h = r#"{"__metadata__":{"format":"pt"},"e":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#;
    let w = SafetensorsWeights::from_bytes(std::path::Path::new("mem.safetensors"), raw_file(h, 4)).unwrap();
    assert_eq!(w.names(), vec!["e", "w"]);
    assert_eq!(w.get("w", DType::F32).unwrap().to_f32(), vec![0.0, 0.0]);
}

#[test]
fn sharded_index_that_disagrees_with_its_shards_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = ("s1.safetensors", "s2.safetensors");
    write(
        &dir.path().join(s1),
        &safetensors_bytes(&[("a", "F32", vec![1], f32_bytes(&[1.0])), ("x", "F32", vec![1], f32_bytes(&[3.0]))]),
    );
    write(&dir.path().join(s2), &safetensors_bytes(&[("b", "F32", vec![1], f32_bytes(&[2.0]))]));
    let idx = dir.path().join("model.safetensors.index.json");
    let open = |map: serde_json::Value| {
        write(&idx, serde_json::json!({ "weight_map": map }).to_string().as_bytes());
        SafetensorsWeights::open_index(&idx).map(|w| w.names())
    };
    assert_eq!(open(serde_json::json!({"a": s1, "x": s1, "b": s2})).unwrap(), vec!["a", "b", "x"]);
    // `x` is in shard s1 but the index does not list it
    let e = one_line(open(serde_json::json!({"a": s1, "b": s2})).unwrap_err());
    assert!(e.contains("`x`") && e.contains("s1.safetensors") && e.contains("not in the weight_map"), "{e}");
    // `x` is in shard s1 but the index maps it to s2
    let e = one_line(open(serde_json::json!({"a": s1, "x": s2, "b": s2})).unwrap_err());
    assert!(e.contains("`x`") && e.contains("listed in shard s2.safetensors but is in s1.safetensors"), "{e}");
    // listed in a shard that does not hold it
    let e = one_line(open(serde_json::json!({"a": s1, "x": s1, "b": s2, "c": s2})).unwrap_err());
    assert!(e.contains("`c`") && e.contains("is not in it"), "{e}");
}
