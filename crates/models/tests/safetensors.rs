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
    for name in ["tiny-llama3", "tiny-qwen2", "tiny-mistral"] {
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
        let per_layer = 9 + if cfg.attention_bias { 3 } else { 0 };
        let expected = 2 + usize::from(!cfg.tie_word_embeddings) + cfg.num_hidden_layers * per_layer;
        assert_eq!(w.names().len(), expected, "{name}");
    }
}
