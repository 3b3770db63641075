//! Writers for the small safetensors and GGUF files the loader tests build in temp dirs.
#![allow(dead_code)]

use std::path::Path;

/// A safetensors file from `(name, dtype string, shape, bytes)`; header padded to 8 bytes.
pub fn safetensors_bytes(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, dtype, shape, data) in tensors {
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.len()]}),
        );
        offset += data.len();
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    for (_, _, _, data) in tensors {
        out.extend_from_slice(data);
    }
    out
}

pub fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// GGUF value type codes.
pub mod ty {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

fn gguf_string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

/// A GGUF v3 file built key by key and tensor by tensor.
pub struct GgufBuilder {
    pub version: u32,
    pub alignment: usize,
    /// (key, type, payload), in file order; setting a key again replaces it in place.
    kvs: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        GgufBuilder { version: 3, alignment: 32, kvs: Vec::new(), tensors: Vec::new() }
    }
}

impl GgufBuilder {
    /// Data alignment (write a matching `general.alignment` key for anything but 32).
    pub fn with_alignment(mut self, alignment: usize) -> Self {
        self.alignment = alignment;
        self
    }

    /// A key with a raw payload of value type `ty` (replacing an earlier value of `key`).
    pub fn kv_raw(mut self, key: &str, ty: u32, payload: &[u8]) -> Self {
        match self.kvs.iter_mut().find(|(k, _, _)| k == key) {
            Some(kv) => *kv = (key.to_string(), ty, payload.to_vec()),
            None => self.kvs.push((key.to_string(), ty, payload.to_vec())),
        }
        self
    }

    /// A second copy of a key already set (a corrupt file).
    pub fn kv_duplicate(mut self, key: &str) -> Self {
        let kv = self.kvs.iter().find(|(k, _, _)| k == key).expect("key set before").clone();
        self.kvs.push(kv);
        self
    }

    /// Every key starting with `from` renamed to start with `to` (in place).
    pub fn rename_prefix(mut self, from: &str, to: &str) -> Self {
        for (k, _, _) in &mut self.kvs {
            if let Some(rest) = k.strip_prefix(from) {
                *k = format!("{to}{rest}");
            }
        }
        self
    }

    pub fn kv_u32(self, key: &str, v: u32) -> Self {
        self.kv_raw(key, ty::U32, &v.to_le_bytes())
    }

    pub fn kv_f32(self, key: &str, v: f32) -> Self {
        self.kv_raw(key, ty::F32, &v.to_le_bytes())
    }

    pub fn kv_bool(self, key: &str, v: bool) -> Self {
        self.kv_raw(key, ty::BOOL, &[v as u8])
    }

    pub fn kv_str(self, key: &str, v: &str) -> Self {
        self.kv_raw(key, ty::STRING, &gguf_string(v))
    }

    pub fn kv_str_array(self, key: &str, items: &[&str]) -> Self {
        let mut p = ty::STRING.to_le_bytes().to_vec();
        p.extend((items.len() as u64).to_le_bytes());
        for s in items {
            p.extend(gguf_string(s));
        }
        self.kv_raw(key, ty::ARRAY, &p)
    }

    pub fn kv_i32_array(self, key: &str, items: &[i32]) -> Self {
        let mut p = ty::I32.to_le_bytes().to_vec();
        p.extend((items.len() as u64).to_le_bytes());
        for v in items {
            p.extend(v.to_le_bytes());
        }
        self.kv_raw(key, ty::ARRAY, &p)
    }

    /// `dims` in ggml order (contiguous dim first); `ggml_type` a ggml type code.
    pub fn tensor(mut self, name: &str, dims: &[u64], ggml_type: u32, data: Vec<u8>) -> Self {
        self.tensors.push((name.to_string(), dims.to_vec(), ggml_type, data));
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        for (key, ty, payload) in &self.kvs {
            out.extend(gguf_string(key));
            out.extend(ty.to_le_bytes());
            out.extend_from_slice(payload);
        }
        let align = |n: usize| n.div_ceil(self.alignment) * self.alignment;
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for (name, dims, t, data) in &self.tensors {
            out.extend(gguf_string(name));
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = align(offset + data.len());
        }
        out.resize(align(out.len()), 0);
        let start = out.len();
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(start + off, 0);
            out.extend_from_slice(data);
        }
        out
    }
}

/// The metadata of a small llama GGUF: C=32, H=2, Hkv=1, D=16, I=64, L=1, V=6.
pub fn tiny_llama_gguf() -> GgufBuilder {
    GgufBuilder::default()
        .kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 1)
        .kv_u32("llama.context_length", 64)
        .kv_u32("llama.embedding_length", 32)
        .kv_u32("llama.feed_forward_length", 64)
        .kv_u32("llama.attention.head_count", 2)
        .kv_u32("llama.attention.head_count_kv", 1)
        .kv_f32("llama.rope.freq_base", 10000.0)
        .kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .kv_str("tokenizer.ggml.model", "gpt2")
        .kv_str_array("tokenizer.ggml.tokens", &["<s>", "</s>", "a", "b", "ab", "Ġ"])
        .kv_i32_array("tokenizer.ggml.token_type", &[3, 3, 1, 1, 1, 1])
        .kv_str_array("tokenizer.ggml.merges", &["a b"])
        .kv_u32("tokenizer.ggml.bos_token_id", 0)
        .kv_u32("tokenizer.ggml.eos_token_id", 1)
}

/// `n` deterministic values in [-0.5, 0.5) (no RNG: this file is shared with the CLI tests).
pub fn pattern(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 1000.0 - 0.5).collect()
}

/// [`tiny_llama_gguf`] with every tensor the decoder loads (f32, ggml dims), so the file
/// opens and runs: C=32, H=2, Hkv=1, D=16, I=64, L=1, V=6; `output.weight` unless tied.
pub fn tiny_llama_model_gguf(tied: bool) -> GgufBuilder {
    let (c, h, hkv, d, i, v) = (32u64, 2u64, 1u64, 16u64, 64u64, 6u64);
    let mut tensors: Vec<(&str, Vec<u64>)> = vec![
        ("token_embd.weight", vec![c, v]),
        ("blk.0.attn_norm.weight", vec![c]),
        ("blk.0.attn_q.weight", vec![c, h * d]),
        ("blk.0.attn_k.weight", vec![c, hkv * d]),
        ("blk.0.attn_v.weight", vec![c, hkv * d]),
        ("blk.0.attn_output.weight", vec![h * d, c]),
        ("blk.0.ffn_norm.weight", vec![c]),
        ("blk.0.ffn_gate.weight", vec![c, i]),
        ("blk.0.ffn_up.weight", vec![c, i]),
        ("blk.0.ffn_down.weight", vec![i, c]),
        ("output_norm.weight", vec![c]),
    ];
    if !tied {
        tensors.push(("output.weight", vec![c, v]));
    }
    let mut b = tiny_llama_gguf();
    for (k, (name, dims)) in tensors.into_iter().enumerate() {
        let n = dims.iter().product::<u64>() as usize;
        let vals = if name.ends_with("norm.weight") { vec![1.0; n] } else { pattern(n, k) };
        b = b.tensor(name, &dims, 0, f32_bytes(&vals));
    }
    b
}
