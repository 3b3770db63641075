//! GGUF (v2/v3) files: the header, metadata key/values (every value type, arrays included),
//! tensor infos and the aligned data section, memory mapped. [`GgufWeights`] serves the tensors
//! under their Hugging Face names, dequantised, with llama.cpp's Q/K row permutation undone and
//! dims reversed to HF order — the same conversion as `shared/tools/gguf2hf.py`.
//! The decoder config is read from the metadata in `gguf_config.rs`; the tokenizer in
//! `tokenizer.rs` / `sentencepiece.rs`.

use crate::dequant::{dequantize, GgmlType};
use crate::error::{escaped, ModelError, Result};
use crate::gguf_config::GgufArch;
use crate::weights::{convert, from_f32, map_file, FileBytes, LoadProgress, WeightSource};
use encore_tensor::{DType, HostQTensor, HostTensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// The most array items in all metadata together (a 256k vocabulary with merges and token
/// types is about a million): bounds what a corrupt count can make the parser allocate.
const MAX_METADATA_ITEMS: usize = 1 << 24;
/// Smallest encodings: a key/value (key length, type, one byte) and a tensor info (name
/// length, n_dims, one dim, type, offset).
const MIN_KV_BYTES: usize = 8 + 4 + 1;
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 8 + 4 + 8;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// Any integer type, when non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v as i64),
            GgufValue::I16(v) => Some(v as i64),
            GgufValue::I32(v) => Some(v as i64),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor as the file describes it (ggml order: `dims[0]` is the contiguous one).
#[derive(Clone, Debug)]
pub struct GgufTensorInfo {
    pub name: String,
    pub dims: Vec<usize>,
    /// `Err(description)` for a type encore does not dequantise.
    pub ggml_type: std::result::Result<GgmlType, String>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

pub struct GgufFile {
    path: PathBuf,
    mmap: FileBytes,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
}

/// A bounds-checked little-endian reader over the mapped file.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> std::result::Result<&'a [u8], String> {
        match self.pos.checked_add(n).filter(|&end| end <= self.buf.len()) {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(format!("truncated: {what} at byte {} runs past the end ({} bytes)", self.pos, self.buf.len())),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N, what)?.try_into().expect("take returns N bytes"))
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each at least `min_size` bytes, checked against the bytes left so a
    /// corrupt count cannot trigger a huge allocation.
    fn count(&mut self, min_size: usize, what: &str) -> std::result::Result<usize, String> {
        let n = self.u64(what)?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > left {
            return Err(format!(
                "{what} = {n} at byte {} needs more bytes than the file has (truncated or corrupt)",
                self.pos - 8
            ));
        }
        usize::try_from(n).map_err(|_| format!("{what} = {n} does not fit this machine's address space"))
    }

    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let n = self.count(1, what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} at byte {} is not UTF-8", self.pos - n))
    }

    /// `key` is already escaped for messages.
    fn value(&mut self, ty: u32, key: &str, depth: usize, items: &mut usize) -> std::result::Result<GgufValue, String> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(key)?[0]),
            1 => GgufValue::I8(self.array::<1>(key)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => GgufValue::U32(self.u32(key)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(format!("`{key}`: bool byte {b} is neither 0 nor 1")),
            },
            8 => GgufValue::String(self.string(&format!("`{key}`"))?),
            9 if depth == 0 => {
                let item_ty = self.u32(key)?;
                let min_size = match item_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => return Err(format!("`{key}`: nested arrays are not supported")),
                    t => return Err(format!("`{key}`: unknown array item type {t}")),
                };
                let n = self.count(min_size, &format!("`{key}`"))?;
                *items = items.saturating_add(n);
                if *items > MAX_METADATA_ITEMS {
                    return Err(format!(
                        "`{key}`: the metadata arrays hold over {MAX_METADATA_ITEMS} items (corrupt counts?)"
                    ));
                }
                let mut values = Vec::new();
                values.try_reserve_exact(n).map_err(|_| format!("`{key}`: cannot allocate an array of {n} values"))?;
                for _ in 0..n {
                    values.push(self.value(item_ty, key, depth + 1, items)?);
                }
                GgufValue::Array(values)
            }
            10 => GgufValue::U64(self.u64(key)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(key)?)),
            9 => return Err(format!("`{key}`: nested arrays are not supported")),
            t => return Err(format!("`{key}`: unknown value type {t}")),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        Self::from_data(path, map_file(path)?)
    }

    /// A GGUF file already in memory; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        Self::from_data(path, FileBytes::Owned(bytes))
    }

    fn from_data(path: &Path, mmap: FileBytes) -> Result<Self> {
        let (version, metadata, tensors) =
            parse(&mmap).map_err(|msg| ModelError::Gguf { path: path.to_path_buf(), msg })?;
        Ok(GgufFile { path: path.to_path_buf(), mmap, version, metadata, tensors })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    pub(crate) fn err(&self, msg: impl Into<String>) -> ModelError {
        ModelError::Gguf { path: self.path.clone(), msg: msg.into() }
    }

    pub(crate) fn field_err(&self, key: &str, msg: impl Into<String>) -> ModelError {
        ModelError::config(self.path.display().to_string(), key, msg)
    }

    pub(crate) fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_u64().map(Some).ok_or_else(|| self.field_err(key, format!("expected an integer, found {v:?}")))
            }
        }
    }

    pub(crate) fn usize(&self, key: &str) -> Result<usize> {
        self.opt_u64(key)?.map(|v| v as usize).ok_or_else(|| self.field_err(key, "missing"))
    }

    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_f64().map(Some).ok_or_else(|| self.field_err(key, format!("expected a number, found {v:?}")))
            }
        }
    }

    /// A string-valued key.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(GgufValue::as_str)
    }

    /// `tokenizer.chat_template`, if the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.str("tokenizer.chat_template")
    }

    /// The bytes of one tensor (checked to lie inside the file when the file was opened).
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> &[u8] {
        &self.mmap[info.start..info.end]
    }
}

type Parsed = (u32, BTreeMap<String, GgufValue>, Vec<GgufTensorInfo>);

fn parse(buf: &[u8]) -> std::result::Result<Parsed, String> {
    let mut r = Reader { buf, pos: 0 };
    let magic = r.take(4, "magic")?;
    if magic != MAGIC {
        return Err(format!("bad magic {magic:02x?} (expected \"GGUF\")"));
    }
    let version = r.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(format!("version {version} is not supported (2 or 3)"));
    }
    let n_tensors = r.count(MIN_TENSOR_INFO_BYTES, "tensor count")?;
    let n_kv = r.count(MIN_KV_BYTES, "metadata count")?;
    let mut metadata = BTreeMap::new();
    let mut items = 0usize;
    for _ in 0..n_kv {
        let key = r.string("metadata key")?;
        let shown = escaped(&key);
        let ty = r.u32(&shown)?;
        let value = r.value(ty, &shown, 0, &mut items)?;
        // llama.cpp refuses duplicates too; taking the last one would hide a corrupt file
        if metadata.insert(key, value).is_some() {
            return Err(format!("metadata key `{shown}` appears twice"));
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => return Err(format!("general.alignment = {v:?} is not a power of two")),
        },
    };
    let mut raw = Vec::new();
    raw.try_reserve_exact(n_tensors).map_err(|_| format!("cannot allocate {n_tensors} tensor infos"))?;
    for _ in 0..n_tensors {
        let name = r.string("tensor name")?;
        let shown = escaped(&name);
        let n_dims = r.u32(&shown)? as usize;
        if n_dims == 0 || n_dims > 4 {
            return Err(format!("tensor `{shown}`: {n_dims} dims (1 to 4 allowed)"));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for i in 0..n_dims {
            let d = r.u64(&shown)?;
            if d == 0 {
                return Err(format!("tensor `{shown}`: dimension {i} is 0"));
            }
            dims.push(usize::try_from(d).map_err(|_| format!("tensor `{shown}`: dimension {i} = {d} is too large"))?);
        }
        let code = r.u32(&shown)?;
        let offset = r.u64(&shown)?;
        raw.push((name, dims, code, offset));
    }
    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    let mut tensors: Vec<GgufTensorInfo> = Vec::new();
    tensors.try_reserve_exact(raw.len()).map_err(|_| format!("cannot allocate {} tensor infos", raw.len()))?;
    let mut names = std::collections::HashSet::new();
    for (name, dims, code, offset) in raw {
        let shown = escaped(&name);
        if !names.insert(name.clone()) {
            return Err(format!("tensor `{shown}` appears twice"));
        }
        if offset % alignment != 0 {
            return Err(format!("tensor `{shown}`: offset {offset} is not aligned to {alignment}"));
        }
        let ggml_type = GgmlType::from_code(code);
        let numel = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let start = data_start.checked_add(offset).and_then(|s| usize::try_from(s).ok());
        let (start, end) = match (&ggml_type, numel, start) {
            (Ok(ty), Some(numel), Some(start)) => {
                if dims[0] % ty.block_len() != 0 {
                    return Err(format!(
                        "tensor `{shown}`: row of {} is not a multiple of the {} block of {}",
                        dims[0],
                        ty.name(),
                        ty.block_len()
                    ));
                }
                let Some(bytes) = ty.bytes_for(numel) else {
                    return Err(format!("tensor `{shown}`: {} {dims:?} overflows the byte count", ty.name()));
                };
                match start.checked_add(bytes).filter(|&e| e <= buf.len()) {
                    Some(end) => (start, end),
                    None => {
                        return Err(format!(
                            "truncated: tensor `{shown}` ({} {dims:?}, {bytes} bytes at offset {offset}) runs past the end of the {}-byte file",
                            ty.name(),
                            buf.len()
                        ))
                    }
                }
            }
            // Unsupported types keep their place; `get` reports them by name.
            (Err(_), Some(_), Some(start)) => (start, start),
            _ => return Err(format!("tensor `{shown}`: dims {dims:?} / offset {offset} overflow")),
        };
        tensors.push(GgufTensorInfo { name, dims, ggml_type, start, end });
    }
    check_no_overlap(&tensors)?;
    Ok((version, metadata, tensors))
}

/// Two tensors whose bytes overlap would alias each other's weights (a corrupt or
/// hand-edited file): refuse them, naming both.
fn check_no_overlap(tensors: &[GgufTensorInfo]) -> std::result::Result<(), String> {
    let mut by_start: Vec<&GgufTensorInfo> = tensors.iter().filter(|t| t.end > t.start).collect();
    by_start.sort_by_key(|t| (t.start, t.end));
    for w in by_start.windows(2) {
        if w[1].start < w[0].end {
            return Err(format!(
                "tensors `{}` (bytes {}..{}) and `{}` (bytes {}..{}) overlap",
                escaped(&w[0].name),
                w[0].start,
                w[0].end,
                escaped(&w[1].name),
                w[1].start,
                w[1].end
            ));
        }
    }
    Ok(())
}

/// The Hugging Face name of a llama.cpp tensor name, and the llama.cpp kind ("attn_q", ...),
/// for the Llama layout.
pub fn hf_name(gguf_name: &str) -> Option<(String, &str)> {
    hf_name_for("llama", gguf_name)
}

/// [`hf_name`] for the file's `general.architecture`: Gemma 3's `ffn_norm` is the MLP's
/// pre-norm (`pre_feedforward_layernorm`) and its `post_attention_norm` / `post_ffw_norm`
/// the sandwich post-norms; Qwen3 and Gemma 3 add `attn_q_norm` / `attn_k_norm`.
pub fn hf_name_for<'a>(arch: &str, gguf_name: &'a str) -> Option<(String, &'a str)> {
    let (base, suffix) = gguf_name.rsplit_once('.')?;
    if let Some(rest) = base.strip_prefix("blk.") {
        let (layer, kind) = rest.split_once('.')?;
        layer.parse::<usize>().ok()?;
        let gemma = arch == "gemma3";
        let hf = match kind {
            "ffn_norm" if gemma => "pre_feedforward_layernorm",
            "post_attention_norm" if gemma => "post_attention_layernorm",
            "post_ffw_norm" if gemma => "post_feedforward_layernorm",
            "attn_q_norm" => "self_attn.q_norm",
            "attn_k_norm" => "self_attn.k_norm",
            "attn_norm" => "input_layernorm",
            "attn_q" => "self_attn.q_proj",
            "attn_k" => "self_attn.k_proj",
            "attn_v" => "self_attn.v_proj",
            "attn_output" => "self_attn.o_proj",
            "ffn_norm" => "post_attention_layernorm",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_down" => "mlp.down_proj",
            _ => return None,
        };
        return Some((format!("model.layers.{layer}.{hf}.{suffix}"), kind));
    }
    let hf = match base {
        "token_embd" => "model.embed_tokens",
        "output_norm" => "model.norm",
        "output" => "lm_head",
        _ => return None,
    };
    Some((format!("{hf}.{suffix}"), base))
}

/// Undoes llama.cpp's `permute` of Q/K rows (rope pairs interleaved per head): within each
/// head of `rows / n_head` rows, GGUF row `2i + j` is HF row `j * half + i`. `None` when the
/// rows do not split into `n_head` heads of pairs of whole rows.
pub fn unpermute_rows(data: &[u8], rows: usize, n_head: usize) -> Option<Vec<u8>> {
    if rows == 0 || n_head == 0 || rows % (2 * n_head) != 0 || data.len() % rows != 0 {
        return None;
    }
    let row_bytes = data.len() / rows;
    let head_rows = rows / n_head;
    let half = head_rows / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * head_rows + 2 * i + j) * row_bytes;
                let dst = (h * head_rows + j * half + i) * row_bytes;
                out[dst..dst + row_bytes].copy_from_slice(&data[src..src + row_bytes]);
            }
        }
    }
    Some(out)
}

/// A GGUF file's tensors under their HF names, in HF shapes.
pub struct GgufWeights {
    file: GgufFile,
    /// HF name -> (index into `file.tensors`, heads to unpermute by)
    by_name: BTreeMap<String, (usize, Option<usize>)>,
    /// Gemma: llama.cpp stores the norm weights as `1 + w`; served as HF's `w` (as
    /// transformers' GGUF loader does), the decoder adds the one back.
    norm_offset: bool,
    progress: LoadProgress,
}

impl GgufWeights {
    pub fn new(file: GgufFile) -> Result<Self> {
        // a file with no architecture is read as llama (tensor-only files, tests)
        let arch = match file.get("general.architecture") {
            None => GgufArch::Llama,
            Some(_) => file.arch()?,
        };
        let (permutes_qk, arch) = (arch.permutes_qk(), arch.name());
        let heads = file.opt_u64(&format!("{arch}.attention.head_count"))?.map(|v| v as usize);
        let kv_heads = file.opt_u64(&format!("{arch}.attention.head_count_kv"))?.map(|v| v as usize).or(heads);
        let mut by_name = BTreeMap::new();
        for (i, t) in file.tensors.iter().enumerate() {
            let Some((hf, kind)) = hf_name_for(arch, &t.name) else {
                if let Some((j, _)) = by_name.insert(t.name.clone(), (i, None)) {
                    return Err(file.err(format!(
                        "tensors `{}` and `{}` both load as `{}`",
                        escaped(&file.tensors[j].name),
                        escaped(&t.name),
                        escaped(&t.name)
                    )));
                }
                continue;
            };
            // llama.cpp permutes q/k rows for Llama only (see permutes_qk)
            let permute = match kind {
                _ if !permutes_qk => None,
                "attn_q" => {
                    Some(heads.ok_or_else(|| file.field_err(&format!("{arch}.attention.head_count"), "missing"))?)
                }
                "attn_k" => Some(
                    kv_heads.ok_or_else(|| file.field_err(&format!("{arch}.attention.head_count_kv"), "missing"))?,
                ),
                _ => None,
            };
            if let Some(n) = permute {
                // HF rows are the outermost ggml dim (a bias: its length)
                let rows = *t.dims.last().unwrap_or(&0);
                if n == 0 || rows == 0 || rows % (2 * n) != 0 {
                    return Err(file.err(format!(
                        "tensor `{}` {:?}: {rows} rows do not split into {n} heads of pairs",
                        escaped(&t.name),
                        t.dims
                    )));
                }
            }
            if let Some((j, _)) = by_name.insert(hf.clone(), (i, permute)) {
                return Err(file.err(format!(
                    "tensors `{}` and `{}` both load as `{hf}`",
                    escaped(&file.tensors[j].name),
                    escaped(&t.name)
                )));
            }
        }
        let total = file.tensors.iter().map(|t| (t.end - t.start) as u64).sum();
        let progress = LoadProgress::new(total, &file.path.display().to_string());
        let norm_offset = arch == "gemma3";
        Ok(GgufWeights { file, by_name, norm_offset, progress })
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }
}

impl WeightSource for GgufWeights {
    fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    fn dims(&self, name: &str) -> Option<Vec<usize>> {
        let &(i, _) = self.by_name.get(name)?;
        Some(self.file.tensors[i].dims.iter().rev().copied().collect())
    }

    fn get(&self, name: &str, dtype: DType) -> Result<HostTensor> {
        let &(i, permute) = self.by_name.get(name).ok_or_else(|| self.missing(name))?;
        let info = &self.file.tensors[i];
        let ty = info
            .ggml_type
            .clone()
            .map_err(|d| ModelError::UnsupportedTensorType { name: name.to_string(), dtype: d })?;
        let bytes = self.file.tensor_bytes(info);
        let dims: Vec<usize> = info.dims.iter().rev().copied().collect();
        let mut t = match ty {
            GgmlType::F32 => convert(name, DType::F32, bytes, dims.clone(), dtype)?,
            GgmlType::F16 => convert(name, DType::F16, bytes, dims.clone(), dtype)?,
            GgmlType::BF16 => convert(name, DType::BF16, bytes, dims.clone(), dtype)?,
            _ => from_f32(name, dims.clone(), &dequantize(ty, bytes), dtype)?,
        };
        if self.norm_offset && name.ends_with("norm.weight") {
            let w: Vec<f32> = t.to_f32().iter().map(|v| v - 1.0).collect();
            t = from_f32(name, dims.clone(), &w, dtype)?;
        }
        if let Some(n_head) = permute {
            t.data = unpermute_rows(&t.data, dims[0], n_head).ok_or_else(|| {
                self.file.err(format!(
                    "tensor `{}`: {} rows do not split into {n_head} heads of pairs",
                    escaped(&info.name),
                    dims[0]
                ))
            })?;
        }
        self.progress.advance(bytes.len() as u64);
        Ok(t)
    }

    fn missing(&self, name: &str) -> ModelError {
        ModelError::MissingTensor { name: name.to_string(), source_desc: self.file.path.display().to_string() }
    }

    fn notes(&self) -> Vec<String> {
        let expanded = self.file.tensors.iter().filter(|t| t.ggml_type == Ok(GgmlType::Q5_0)).count();
        match expanded {
            0 => Vec::new(),
            n => vec![format!(
                "{}: {n} Q5_0 tensors are expanded to the compute dtype at load (no Q5_0 kernels)",
                self.file.path.display()
            )],
        }
    }

    fn get_raw(&self, name: &str) -> Result<Option<HostQTensor>> {
        let &(i, permute) = self.by_name.get(name).ok_or_else(|| self.missing(name))?;
        let info = &self.file.tensors[i];
        let Some(qtype) = info.ggml_type.as_ref().ok().and_then(|t| t.quant_type()) else {
            return Ok(None);
        };
        let &[cols, rows] = &info.dims[..] else {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                expected: vec![0, 0],
                found: info.dims.iter().rev().copied().collect(),
            });
        };
        let bytes = self.file.tensor_bytes(info);
        let mut q = HostQTensor::new(name, qtype, rows, cols, bytes.to_vec())
            .map_err(|e| self.file.err(format!("tensor `{}`: {e}", info.name)))?;
        // whole rows of blocks move, so the permutation of `get` applies to the bytes as is
        if let Some(n_head) = permute {
            q.data = unpermute_rows(&q.data, rows, n_head).ok_or_else(|| {
                self.file
                    .err(format!("tensor `{}`: {rows} rows do not split into {n_head} heads of row pairs", info.name))
            })?;
        }
        self.progress.advance(bytes.len() as u64);
        Ok(Some(q))
    }
}
