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
    kvs: Vec<u8>,
    n_kv: u64,
    tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        GgufBuilder { version: 3, alignment: 32, kvs: Vec::new(), n_kv: 0, tensors: Vec::new() }
    }
}

impl GgufBuilder {
    /// Data alignment (write a matching `general.alignment` key for anything but 32).
    pub fn with_alignment(mut self, alignment: usize) -> Self {
        self.alignment = alignment;
        self
    }

    /// A key with a raw payload of value type `ty`.
    pub fn kv_raw(mut self, key: &str, ty: u32, payload: &[u8]) -> Self {
        self.kvs.extend(gguf_string(key));
        self.kvs.extend(ty.to_le_bytes());
        self.kvs.extend_from_slice(payload);
        self.n_kv += 1;
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
        out.extend(self.n_kv.to_le_bytes());
        out.extend_from_slice(&self.kvs);
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
