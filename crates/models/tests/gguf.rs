//! GGUF: metadata of every value type, tensor infos and alignment, HF names and shapes, the
//! Q/K un-permutation, the config from `llama.*` keys, and one-line errors for bad files.

mod common;

use common::{f32_bytes, tiny_llama_gguf, ty, write, GgufBuilder};
use encore_models::gguf::{hf_name, GgufFile, GgufValue, GgufWeights};
use encore_models::weights::{open_weights, WeightSource};
use encore_tensor::testing::Rng;
use encore_tensor::DType;
use half::f16;
use std::path::PathBuf;

fn save(b: &GgufBuilder) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    write(&p, &b.build());
    (dir, p)
}

fn one_line(e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "multi-line error: {s}");
    s
}

#[test]
fn metadata_of_every_value_type() {
    let b = GgufBuilder::default()
        .kv_raw("u8", ty::U8, &[200])
        .kv_raw("i8", ty::I8, &[0xFE])
        .kv_raw("u16", ty::U16, &40000u16.to_le_bytes())
        .kv_raw("i16", ty::I16, &(-300i16).to_le_bytes())
        .kv_u32("u32", 4_000_000_000)
        .kv_raw("i32", ty::I32, &(-7i32).to_le_bytes())
        .kv_f32("f32", 0.25)
        .kv_bool("bool", true)
        .kv_str("string", "héllo")
        .kv_raw("u64", ty::U64, &(1u64 << 40).to_le_bytes())
        .kv_raw("i64", ty::I64, &(-5i64).to_le_bytes())
        .kv_raw("f64", ty::F64, &1e-300f64.to_le_bytes())
        .kv_str_array("strs", &["a", "", "ü"])
        .kv_i32_array("ints", &[3, -1])
        .kv_raw("f64s", ty::ARRAY, &[&ty::F64.to_le_bytes()[..], &1u64.to_le_bytes(), &2.5f64.to_le_bytes()].concat())
        .kv_raw("general.alignment", ty::U32, &64u32.to_le_bytes());
    let (_d, p) =
        save(&b.with_alignment(64).tensor("token_embd.weight", &[2, 3], 0, f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])));
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.version, 3);
    let m = &f.metadata;
    assert_eq!(m["u8"], GgufValue::U8(200));
    assert_eq!(m["i8"], GgufValue::I8(-2));
    assert_eq!(m["u16"], GgufValue::U16(40000));
    assert_eq!(m["i16"], GgufValue::I16(-300));
    assert_eq!(m["u32"].as_u64(), Some(4_000_000_000));
    assert_eq!(m["i32"].as_i64(), Some(-7));
    assert_eq!(m["i32"].as_u64(), None);
    assert_eq!(m["f32"].as_f64(), Some(0.25));
    assert_eq!(m["bool"].as_bool(), Some(true));
    assert_eq!(f.str("string"), Some("héllo"));
    assert_eq!(m["u64"], GgufValue::U64(1 << 40));
    assert_eq!(m["i64"], GgufValue::I64(-5));
    assert_eq!(m["f64"], GgufValue::F64(1e-300));
    let strs: Vec<_> = m["strs"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(strs, ["a", "", "ü"]);
    assert_eq!(m["ints"], GgufValue::Array(vec![GgufValue::I32(3), GgufValue::I32(-1)]));
    assert_eq!(m["f64s"], GgufValue::Array(vec![GgufValue::F64(2.5)]));
    assert_eq!(f.tensors[0].start % 64, 0, "data section aligned to general.alignment");
    let w = GgufWeights::new(f).unwrap();
    assert_eq!(w.get("model.embed_tokens.weight", DType::F32).unwrap().to_f32(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

/// llama.cpp's `permute` (convert_hf_to_gguf.py): HF row `j * half + i` of each head goes to
/// GGUF row `2i + j`.
fn llama_cpp_permute(hf: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let (head_rows, half) = (rows / n_head, rows / n_head / 2);
    let mut out = vec![0.0; hf.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let (src, dst) = (h * head_rows + j * half + i, h * head_rows + 2 * i + j);
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&hf[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// (HF name, HF dims, values in HF layout)
type HfTensor = (String, Vec<usize>, Vec<f32>);

/// A tiny llama GGUF with random tensors; returns the HF-layout f32 values by HF name.
fn tiny_model(rng: &mut Rng, with_output: bool) -> (GgufBuilder, Vec<HfTensor>) {
    let (c, h, hkv, d, i, v) = (32usize, 2usize, 1usize, 16usize, 64usize, 6usize);
    let shapes: Vec<(&str, &str, Vec<usize>)> = vec![
        ("token_embd.weight", "model.embed_tokens.weight", vec![v, c]),
        ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight", vec![c]),
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", vec![h * d, c]),
        ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", vec![hkv * d, c]),
        ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight", vec![hkv * d, c]),
        ("blk.0.attn_output.weight", "model.layers.0.self_attn.o_proj.weight", vec![c, h * d]),
        ("blk.0.ffn_norm.weight", "model.layers.0.post_attention_layernorm.weight", vec![c]),
        ("blk.0.ffn_gate.weight", "model.layers.0.mlp.gate_proj.weight", vec![i, c]),
        ("blk.0.ffn_up.weight", "model.layers.0.mlp.up_proj.weight", vec![i, c]),
        ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight", vec![c, i]),
        ("output_norm.weight", "model.norm.weight", vec![c]),
        ("output.weight", "lm_head.weight", vec![v, c]),
    ];
    let mut b = tiny_llama_gguf();
    let mut hf = Vec::new();
    for (gname, hname, dims) in shapes {
        if gname == "output.weight" && !with_output {
            continue;
        }
        let n: usize = dims.iter().product();
        let vals = rng.vec(n, -1.0, 1.0);
        let (rows, cols) = (dims[0], dims.iter().skip(1).product::<usize>().max(1));
        let stored = match gname {
            "blk.0.attn_q.weight" => llama_cpp_permute(&vals, rows, cols, h),
            "blk.0.attn_k.weight" => llama_cpp_permute(&vals, rows, cols, hkv),
            _ => vals.clone(),
        };
        let ggml_dims: Vec<u64> = dims.iter().rev().map(|&x| x as u64).collect();
        // alternate storage types: f32, f16 and Q8_0 (rows of 32) all go through the loader
        b = match gname {
            "blk.0.ffn_up.weight" => {
                let data = stored.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect();
                let vals = stored.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
                hf.push((hname.to_string(), dims.clone(), vals));
                b.tensor(gname, &ggml_dims, 1, data)
            }
            _ => {
                hf.push((hname.to_string(), dims.clone(), vals));
                b.tensor(gname, &ggml_dims, 0, f32_bytes(&stored))
            }
        };
    }
    (b, hf)
}

#[test]
fn tensors_come_back_under_hf_names_in_hf_shapes_with_qk_unpermuted() {
    let mut rng = Rng::fresh("tensors_come_back_under_hf_names_in_hf_shapes_with_qk_unpermuted");
    let (b, hf) = tiny_model(&mut rng, true);
    let (_d, p) = save(&b);
    let w = open_weights(&p).unwrap();
    let mut names: Vec<String> = hf.iter().map(|(n, _, _)| n.clone()).collect();
    names.sort();
    assert_eq!(w.names(), names);
    for (name, dims, vals) in &hf {
        assert_eq!(w.dims(name).as_ref(), Some(dims), "{name}");
        let t = w.get_shaped(name, dims, DType::F32).unwrap();
        assert_eq!(&t.to_f32(), vals, "{name}");
        let t = w.get(name, DType::BF16).unwrap();
        assert_eq!((t.dtype, &t.dims), (DType::BF16, dims));
    }
}

#[test]
fn q8_0_tensor_is_dequantised_and_transposed_dims_are_reported_in_hf_order() {
    // ggml dims [32, 2]: two rows of 32 (HF [2, 32]); row r = d_r * q
    let mut data = Vec::new();
    for (r, d) in [0.5f32, -0.25].iter().enumerate() {
        data.extend(f16::from_f32(*d).to_le_bytes());
        data.extend((0..32).map(|j| (j as i8 - r as i8 * 5) as u8));
    }
    let b = tiny_llama_gguf().tensor("blk.3.attn_v.weight", &[32, 2], 8, data);
    let (_d, p) = save(&b);
    let w = GgufWeights::new(GgufFile::open(&p).unwrap()).unwrap();
    let t = w.get("model.layers.3.self_attn.v_proj.weight", DType::F32).unwrap();
    assert_eq!(t.dims, vec![2, 32]);
    let x = t.to_f32();
    assert_eq!((x[1], x[31], x[32], x[63]), (0.5, 15.5, 1.25, -6.5));
}

#[test]
fn config_from_llama_metadata() {
    let mut rng = Rng::fresh("config_from_llama_metadata");
    for with_output in [false, true] {
        let (b, _) = tiny_model(&mut rng, with_output);
        let (_d, p) = save(&b);
        let c = GgufFile::open(&p).unwrap().model_config().unwrap();
        assert_eq!((c.hidden_size, c.intermediate_size, c.num_hidden_layers), (32, 64, 1));
        assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.vocab_size), (2, 1, 16, 6));
        assert_eq!((c.rms_norm_eps, c.rope_theta, c.max_position_embeddings), (1e-5, 10000.0, 64));
        assert_eq!((c.bos_token_id, c.eos_token_ids.clone()), (Some(0), vec![1]));
        assert_eq!(c.tie_word_embeddings, !with_output);
    }
}

#[test]
fn name_mapping() {
    assert_eq!(hf_name("blk.12.ffn_down.weight").unwrap().0, "model.layers.12.mlp.down_proj.weight");
    assert_eq!(hf_name("blk.0.attn_q.bias").unwrap(), ("model.layers.0.self_attn.q_proj.bias".to_string(), "attn_q"));
    assert_eq!(hf_name("output_norm.weight").unwrap().0, "model.norm.weight");
    assert_eq!(hf_name("output.weight").unwrap().0, "lm_head.weight");
    assert!(hf_name("blk.x.attn_q.weight").is_none() && hf_name("rope_freqs.weight").is_none());
}

#[test]
fn bad_files_are_one_line_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.gguf");
    let e = one_line(GgufFile::open(&p).err().unwrap());
    assert!(e.contains("bad.gguf"), "{e}");
    let good = tiny_llama_gguf().tensor("token_embd.weight", &[32, 6], 0, f32_bytes(&[0.5; 192])).build();
    let bad_bool = tiny_llama_gguf().kv_raw("flag", ty::BOOL, &[7]).build();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad magic", [b"GGML".as_slice(), &good[4..]].concat(), "magic"),
        ("version 1", [&good[..4], &1u32.to_le_bytes()[..], &good[8..]].concat(), "version 1"),
        ("truncated metadata", good[..100].to_vec(), "truncated"),
        ("truncated tensor data", good[..good.len() - 10].to_vec(), "token_embd.weight"),
        ("bool byte", bad_bool, "bool"),
        ("huge count", [&good[..8], &u64::MAX.to_le_bytes()[..], &good[16..]].concat(), "tensor count"),
        ("Q8_0 row of 6", tiny_llama_gguf().tensor("x.weight", &[6, 2], 8, vec![0; 68]).build(), "block"),
    ];
    for (what, bytes, needle) in cases {
        write(&p, &bytes);
        let e = one_line(GgufFile::open(&p).err().expect(what));
        assert!(e.contains("bad.gguf") && e.contains(needle), "{what}: {e}");
    }
}

#[test]
fn unsupported_types_and_metadata_name_the_tensor_or_key() {
    let b = tiny_llama_gguf().tensor("blk.0.ffn_up.weight", &[256, 1], 11, vec![0; 110]);
    let (_d, p) = save(&b);
    let w = GgufWeights::new(GgufFile::open(&p).unwrap()).unwrap();
    let e = one_line(w.get("model.layers.0.mlp.up_proj.weight", DType::F32).unwrap_err());
    assert!(e.contains("up_proj") && e.contains("Q3_K"), "{e}");
    let e = one_line(w.get("lm_head.weight", DType::F32).unwrap_err());
    assert!(e.contains("lm_head.weight") && e.contains("m.gguf"), "{e}");

    let (_d, p) = save(&tiny_llama_gguf().kv_str("general.architecture", "qwen2"));
    let e = one_line(GgufFile::open(&p).unwrap().model_config().unwrap_err());
    assert!(e.contains("qwen2.embedding_length") && e.contains("missing"), "keys are read under the arch: {e}");
    let (_d, p) = save(&tiny_llama_gguf().kv_u32("llama.attention.head_count_kv", 3));
    let e = one_line(GgufFile::open(&p).unwrap().model_config().unwrap_err());
    assert!(e.contains("num_key_value_heads"), "{e}");
    let (_d, p) = save(&tiny_llama_gguf().kv_str("llama.rope.scaling.type", "yarn"));
    let e = one_line(GgufFile::open(&p).unwrap().model_config().unwrap_err());
    assert!(e.contains("rope.scaling.type") && e.contains("yarn"), "{e}");
    let mut b = GgufBuilder::default().kv_str("general.architecture", "llama");
    b = b.kv_u32("llama.embedding_length", 32);
    let (_d, p) = save(&b);
    let e = one_line(GgufFile::open(&p).unwrap().model_config().unwrap_err());
    assert!(e.contains("llama.attention.head_count") && e.contains("missing"), "{e}");
}

/// The byte position of the `offset` field of tensor `name`'s info in a built file.
fn offset_field(bytes: &[u8], name: &str, n_dims: usize) -> usize {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    let at = bytes.windows(key.len()).position(|w| w == key.as_slice()).expect("tensor info");
    at + key.len() + 4 + 8 * n_dims + 4
}

fn open_err(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.gguf");
    write(&p, bytes);
    one_line(GgufFile::open(&p).err().expect("the file should be refused"))
}

#[test]
fn qk_tensor_with_a_zero_dimension_is_an_error_not_a_division_by_zero() {
    let e = open_err(&tiny_llama_gguf().tensor("blk.0.attn_q.weight", &[32, 0], 0, vec![]).build());
    assert!(e.contains("blk.0.attn_q.weight") && e.contains("dimension 1 is 0"), "{e}");
    let e = open_err(&tiny_llama_gguf().tensor("blk.0.attn_k.weight", &[0, 16], 0, vec![]).build());
    assert!(e.contains("blk.0.attn_k.weight") && e.contains("dimension 0 is 0"), "{e}");
    assert_eq!(encore_models::gguf::unpermute_rows(&[], 0, 2), None);
    assert_eq!(encore_models::gguf::unpermute_rows(&[0; 12], 3, 2), None, "3 rows are not 2 heads of pairs");
    // a Q weight whose rows do not split into heads of pairs is refused by name at open
    let (_d, p) = save(&tiny_llama_gguf().tensor("blk.0.attn_q.weight", &[32, 6], 0, f32_bytes(&[0.0; 192])));
    let e = one_line(GgufWeights::new(GgufFile::open(&p).unwrap()).err().unwrap());
    assert!(e.contains("blk.0.attn_q.weight") && e.contains("heads of pairs"), "{e}");
}

#[test]
fn gguf_byte_size_overflow_is_an_error_not_a_panic() {
    // numel fits usize but numel x 4 bytes does not
    let e = open_err(&tiny_llama_gguf().tensor("token_embd.weight", &[1 << 31, 1 << 31], 0, vec![]).build());
    assert!(e.contains("token_embd.weight") && e.contains("overflow"), "{e}");
    let e = open_err(&tiny_llama_gguf().tensor("x.weight", &[u64::MAX / 2, 3], 0, vec![]).build());
    assert!(e.contains("x.weight") && e.contains("overflow"), "{e}");
    // F16: 2^63 elements of 2 bytes
    let e = open_err(&tiny_llama_gguf().tensor("h.weight", &[1 << 32, 1 << 31], 1, vec![]).build());
    assert!(e.contains("h.weight") && e.contains("overflow"), "{e}");
}

#[test]
fn gguf_array_counts_are_checked_against_the_bytes_left_before_allocating() {
    // 2^40 u32 items need 4 TiB; the file has a few hundred bytes
    let mut p = ty::U32.to_le_bytes().to_vec();
    p.extend((1u64 << 40).to_le_bytes());
    let e = open_err(&tiny_llama_gguf().kv_raw("big", ty::ARRAY, &p).build());
    assert!(e.contains("`big`") && e.contains("needs more bytes than the file has"), "{e}");
    // a count that fits at 1 byte per item but not at 8 (u64 items)
    let mut p = ty::U64.to_le_bytes().to_vec();
    p.extend(40u64.to_le_bytes());
    p.extend([0u8; 100]);
    let e = open_err(&GgufBuilder::default().kv_raw("u64s", ty::ARRAY, &p).build());
    assert!(e.contains("`u64s`") && e.contains("needs more bytes"), "{e}");
    // nested and unknown item types are refused before any item is read
    let mut p = 99u32.to_le_bytes().to_vec();
    p.extend(1u64.to_le_bytes());
    let e = open_err(&GgufBuilder::default().kv_raw("odd", ty::ARRAY, &p).build());
    assert!(e.contains("`odd`") && e.contains("unknown array item type 99"), "{e}");
}

#[test]
fn gguf_metadata_arrays_past_the_item_limit_are_refused() {
    let n = (1u64 << 24) + 1;
    let mut p = ty::U8.to_le_bytes().to_vec();
    p.extend(n.to_le_bytes());
    p.resize(p.len() + n as usize, 0);
    let e = open_err(&GgufBuilder::default().kv_raw("bytes", ty::ARRAY, &p).build());
    assert!(e.contains("`bytes`") && e.contains("over 16777216 items"), "{e}");
}

#[test]
fn gguf_tensor_count_larger_than_the_file_can_hold_is_refused() {
    let good = tiny_llama_gguf().build();
    // each tensor info takes at least 32 bytes: a count of len/16 cannot fit
    let n = (good.len() / 16) as u64;
    let e = open_err(&[&good[..8], &n.to_le_bytes()[..], &good[16..]].concat());
    assert!(e.contains("tensor count") && e.contains("needs more bytes"), "{e}");
}

#[test]
fn duplicate_gguf_metadata_keys_are_an_error_not_last_one_wins() {
    let e = open_err(&tiny_llama_gguf().kv_duplicate("llama.block_count").build());
    assert!(e.contains("`llama.block_count` appears twice"), "{e}");
}

#[test]
fn duplicate_gguf_tensor_names_are_an_error() {
    let b = tiny_llama_gguf().tensor("output_norm.weight", &[32], 0, f32_bytes(&[1.0; 32])).tensor(
        "output_norm.weight",
        &[32],
        0,
        f32_bytes(&[2.0; 32]),
    );
    let e = open_err(&b.build());
    assert!(e.contains("`output_norm.weight` appears twice"), "{e}");
    // two names that load as the same HF tensor
    let b = tiny_llama_gguf().tensor("output.weight", &[32, 6], 0, f32_bytes(&[1.0; 192])).tensor(
        "lm_head.weight",
        &[32, 6],
        0,
        f32_bytes(&[2.0; 192]),
    );
    let (_d, p) = save(&b);
    let e = one_line(GgufWeights::new(GgufFile::open(&p).unwrap()).err().unwrap());
    assert!(e.contains("`output.weight`") && e.contains("`lm_head.weight`"), "{e}");
}

#[test]
fn overlapping_gguf_tensor_data_is_an_error_naming_both_tensors() {
    let b = tiny_llama_gguf().tensor("blk.0.attn_norm.weight", &[32], 0, f32_bytes(&[1.0; 32])).tensor(
        "blk.0.ffn_norm.weight",
        &[32],
        0,
        f32_bytes(&[2.0; 32]),
    );
    let mut bytes = b.build();
    let at = offset_field(&bytes, "blk.0.ffn_norm.weight", 1);
    bytes[at..at + 8].copy_from_slice(&64u64.to_le_bytes()); // second tensor starts inside the first's 128 bytes
    let e = open_err(&bytes);
    assert!(
        e.contains("blk.0.attn_norm.weight") && e.contains("blk.0.ffn_norm.weight") && e.contains("overlap"),
        "{e}"
    );
    bytes[at..at + 8].copy_from_slice(&0u64.to_le_bytes()); // exactly the same bytes
    let e = open_err(&bytes);
    assert!(e.contains("overlap"), "{e}");
}

#[test]
fn gguf_keys_with_control_characters_are_escaped_in_errors() {
    let e = open_err(&tiny_llama_gguf().kv_raw("evil\nkey\x1b[2J", ty::BOOL, &[7]).build());
    assert!(e.contains("evil\\nkey\\u{1b}[2J"), "{e}");
    assert!(!e.chars().any(|c| c.is_control()), "{e:?}");
    let e = open_err(&tiny_llama_gguf().tensor("t\r\n.weight", &[32, 0], 0, vec![]).build());
    assert!(e.contains("t\\r\\n.weight") && !e.chars().any(|c| c.is_control()), "{e:?}");
    let (_d, p) = save(&tiny_llama_gguf().kv_str("general.architecture", "gpt\u{1b}[31m"));
    let e = one_line(GgufFile::open(&p).unwrap().model_config().unwrap_err());
    assert!(e.contains("gpt\\u{1b}[31m"), "{e}");
}

#[test]
fn gguf_block_count_is_bounded_like_config_json() {
    let (_d, p) = save(&tiny_llama_gguf().kv_u32("llama.block_count", 4_000_000_000));
    let e = one_line(GgufFile::open(&p).unwrap().model_config().unwrap_err());
    assert!(e.contains("num_hidden_layers") && e.contains("over the limit"), "{e}");
}

#[test]
fn gguf_from_bytes_parses_like_open() {
    let bytes = tiny_llama_gguf().tensor("output_norm.weight", &[32], 0, f32_bytes(&[1.0; 32])).build();
    let f = GgufFile::from_bytes(std::path::Path::new("mem.gguf"), bytes).unwrap();
    assert_eq!(f.tensors.len(), 1);
    let e = one_line(GgufFile::from_bytes(std::path::Path::new("mem.gguf"), b"GGUF".to_vec()).err().unwrap());
    assert!(e.contains("mem.gguf") && e.contains("truncated"), "{e}");
}

#[test]
fn gguf_token_ids_past_u32_are_an_error_not_truncated() {
    // 2^32 + 1 used to become token 1 (a valid EOS) silently
    let b = tiny_llama_gguf().kv_raw("tokenizer.ggml.eos_token_id", ty::U64, &((1u64 << 32) + 1).to_le_bytes());
    let (_d, p) = save(&b);
    let e = one_line(GgufFile::open(&p).unwrap().model_config().unwrap_err());
    assert!(e.contains("tokenizer.ggml.eos_token_id") && e.contains("not a token id"), "{e}");
}
