//! safetensors checkpoints, single-file or sharded (`model.safetensors.index.json`), memory
//! mapped: headers are parsed once at open, and a tensor's bytes are read (and converted to
//! the compute dtype) only when the decoder asks for it.
//!
//! The header is parsed and checked here, not by the `safetensors` crate, so that every
//! error names its tensor: an unknown dtype, a shape whose byte size is not what its
//! `data_offsets` hold, two tensors sharing bytes, a name that appears twice (JSON would
//! keep the last), bytes that belong to no tensor, a file shorter than its header says.

use crate::error::{escaped, ModelError, Result};
use crate::weights::{convert, map_file, FileBytes, LoadProgress, WeightSource};
use encore_tensor::{DType, HostTensor};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The header size limit of the format (the `safetensors` crate's `MAX_HEADER_SIZE`).
const MAX_HEADER_BYTES: u64 = 100_000_000;
/// More dims than any checkpoint tensor has.
const MAX_RANK: usize = 8;

struct Shard {
    path: PathBuf,
    bytes: FileBytes,
}

struct Entry {
    shard: usize,
    /// `None` for dtypes encore does not load (the error is raised by `get`, not at open).
    dtype: Option<DType>,
    /// The dtype as the header spells it.
    stored: String,
    dims: Vec<usize>,
    /// Byte range in the shard.
    start: usize,
    end: usize,
}

pub struct SafetensorsWeights {
    shards: Vec<Shard>,
    entries: BTreeMap<String, Entry>,
    desc: String,
    progress: LoadProgress,
}

impl SafetensorsWeights {
    /// A directory with `model.safetensors.index.json` (sharded) or `model.safetensors`.
    /// (A FIFO or device under either name is opened, so that it is reported as one.)
    pub fn open_dir(dir: &Path) -> Result<Self> {
        if dir.join(INDEX_FILE).exists() {
            Self::open_index(&dir.join(INDEX_FILE))
        } else if dir.join(SINGLE_FILE).exists() {
            Self::open_file(&dir.join(SINGLE_FILE))
        } else {
            let msg = format!("no {SINGLE_FILE} or {INDEX_FILE} in this directory");
            Err(ModelError::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, msg)))
        }
    }

    pub fn open_file(path: &Path) -> Result<Self> {
        let bytes = map_file(path)?;
        Self::from_shard(path, bytes)
    }

    /// A single safetensors file already in memory; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        Self::from_shard(path, FileBytes::Owned(bytes))
    }

    fn from_shard(path: &Path, bytes: FileBytes) -> Result<Self> {
        let mut entries = BTreeMap::new();
        let shard = read_shard(path, bytes, 0, &mut entries)?;
        Ok(Self::finish(vec![shard], entries, path.display().to_string()))
    }

    /// `model.safetensors.index.json`: `{"weight_map": {tensor name: shard file name}}`. The
    /// index and the shards must agree exactly: every listed tensor is in its shard, and
    /// every tensor of a shard is listed, for that shard.
    pub fn open_index(index: &Path) -> Result<Self> {
        let text = crate::weights::read_text(index)?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::json(index, e))?;
        let bad = |msg: String| ModelError::Safetensors { path: index.to_path_buf(), msg };
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no `weight_map` object".to_string()))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut files: Vec<&str> = Vec::new();
        for (name, file) in map {
            let name = escaped(name);
            let file = file.as_str().ok_or_else(|| bad(format!("weight_map[{name}] is not a file name")))?;
            if file.is_empty() || file.contains('/') || file.contains('\\') || file == ".." || file == "." {
                return Err(bad(format!("weight_map[{name}] = `{}` is not a file in this directory", escaped(file))));
            }
            if !files.contains(&file) {
                files.push(file);
            }
        }
        files.sort_unstable();
        let mut entries = BTreeMap::new();
        let mut shards = Vec::with_capacity(files.len());
        for (i, file) in files.iter().enumerate() {
            let path = dir.join(file);
            let bytes = map_file(&path)?;
            shards.push(read_shard(&path, bytes, i, &mut entries)?);
        }
        for (name, file) in map {
            let file = file.as_str().unwrap_or_default();
            match entries.get(name) {
                Some(e) if files[e.shard] == file => {}
                Some(e) => {
                    return Err(bad(format!(
                        "tensor `{}` is listed in shard {} but is in {}",
                        escaped(name),
                        escaped(file),
                        escaped(files[e.shard])
                    )))
                }
                None => {
                    return Err(bad(format!(
                        "tensor `{}` is listed in shard {} but is not in it",
                        escaped(name),
                        escaped(file)
                    )))
                }
            }
        }
        if let Some((name, e)) = entries.iter().find(|(name, _)| !map.contains_key(*name)) {
            return Err(bad(format!(
                "tensor `{}` of shard {} is not in the weight_map",
                escaped(name),
                escaped(files[e.shard])
            )));
        }
        Ok(Self::finish(shards, entries, format!("{} ({} shards)", index.display(), files.len())))
    }

    fn finish(shards: Vec<Shard>, entries: BTreeMap<String, Entry>, desc: String) -> Self {
        let total: u64 = entries.values().map(|e| (e.end - e.start) as u64).sum();
        let progress = LoadProgress::new(total, &desc);
        SafetensorsWeights { shards, entries, desc, progress }
    }

    /// The files mapped, in shard order.
    pub fn files(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }
}

/// Parses and checks the header of `bytes` (see [`parse_header`]) and records its tensors in
/// `entries`.
fn read_shard(path: &Path, bytes: FileBytes, index: usize, entries: &mut BTreeMap<String, Entry>) -> Result<Shard> {
    let bad = |msg: String| ModelError::Safetensors { path: path.to_path_buf(), msg };
    let tensors = parse_header(&bytes).map_err(bad)?;
    for t in tensors {
        let entry = Entry {
            shard: index,
            dtype: match t.dtype.as_str() {
                "F32" => Some(DType::F32),
                "BF16" => Some(DType::BF16),
                "F16" => Some(DType::F16),
                _ => None,
            },
            stored: t.dtype,
            dims: t.shape,
            start: t.start,
            end: t.end,
        };
        if entries.insert(t.name.clone(), entry).is_some() {
            return Err(bad(format!("tensor `{}` also appears in another shard", escaped(&t.name))));
        }
    }
    Ok(Shard { path: path.to_path_buf(), bytes })
}

/// One tensor of a checked header; `start..end` is its absolute byte range in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// Bits per element of every safetensors dtype.
fn dtype_bits(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 8,
        "I16" | "U16" | "F16" | "BF16" => 16,
        "I32" | "U32" | "F32" => 32,
        "I64" | "U64" | "F64" | "C64" => 64,
        "F4" => 4,
        "F6_E2M3" | "F6_E3M2" => 6,
        _ => return None,
    })
}

#[derive(Deserialize)]
struct RawInfo {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// The header object: tensors in file order; a key that appears twice is an error.
struct RawHeader(Vec<(String, RawInfo)>);

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of tensors")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<RawHeader, A::Error> {
                use serde::de::Error;
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                while let Some(name) = m.next_key::<String>()? {
                    if !seen.insert(name.clone()) {
                        return Err(A::Error::custom(format!("`{}` appears twice in the header", escaped(&name))));
                    }
                    if name == "__metadata__" {
                        m.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    let info = m
                        .next_value::<RawInfo>()
                        .map_err(|e| A::Error::custom(format!("tensor `{}`: {e}", escaped(&name))))?;
                    out.push((name, info));
                }
                Ok(RawHeader(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The tensors of a safetensors file (`u64` header length, JSON header, data), checked:
/// known dtypes, byte sizes equal to dtype x shape, data that covers the data section
/// exactly with no tensor overlapping another. Every error names its tensor.
pub fn parse_header(buf: &[u8]) -> std::result::Result<Vec<HeaderTensor>, String> {
    if buf.len() < 8 {
        return Err(format!("only {} bytes, too short for a header", buf.len()));
    }
    let n = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    if n > MAX_HEADER_BYTES {
        return Err(format!("header length {n} is over the format's limit of {MAX_HEADER_BYTES} bytes"));
    }
    let header_end = 8 + n as usize;
    if header_end > buf.len() {
        return Err(format!("header length {n} is past the end of the {}-byte file", buf.len()));
    }
    let text = std::str::from_utf8(&buf[8..header_end]).map_err(|e| format!("header is not UTF-8: {e}"))?;
    let RawHeader(raw) = serde_json::from_str(text).map_err(|e| format!("header: {e}"))?;
    let data_len = buf.len() - header_end;
    let mut tensors = Vec::new();
    tensors.try_reserve_exact(raw.len()).map_err(|_| format!("cannot allocate {} tensor entries", raw.len()))?;
    for (name, info) in raw {
        let shown = escaped(&name);
        let bits = dtype_bits(&info.dtype)
            .ok_or_else(|| format!("tensor `{shown}`: unknown dtype `{}`", escaped(&info.dtype)))?;
        if info.shape.len() > MAX_RANK {
            return Err(format!("tensor `{shown}`: rank {} is over the limit of {MAX_RANK}", info.shape.len()));
        }
        let numel = info.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let nbits = numel.and_then(|n| n.checked_mul(bits as u64));
        let Some(nbits) = nbits else {
            return Err(format!("tensor `{shown}`: {} {:?} overflows the byte count", info.dtype, info.shape));
        };
        if nbits % 8 != 0 {
            return Err(format!("tensor `{shown}`: {} {:?} is not a whole number of bytes", info.dtype, info.shape));
        }
        let (s, e) = info.data_offsets;
        if e < s {
            return Err(format!("tensor `{shown}`: data_offsets [{s}, {e}] end before they start"));
        }
        if nbits / 8 != e - s {
            return Err(format!(
                "tensor `{shown}`: {} {:?} needs {} bytes but data_offsets [{s}, {e}] hold {}",
                info.dtype,
                info.shape,
                nbits / 8,
                e - s
            ));
        }
        if e > data_len as u64 {
            return Err(format!(
                "truncated: tensor `{shown}` (data bytes {s}..{e}) runs past the end of the {data_len}-byte data section"
            ));
        }
        tensors.push(HeaderTensor {
            name,
            dtype: info.dtype,
            shape: info.shape.iter().map(|&d| d as usize).collect(),
            start: header_end + s as usize,
            end: header_end + e as usize,
        });
    }
    let mut by_start: Vec<&HeaderTensor> = tensors.iter().collect();
    by_start.sort_by_key(|t| (t.start, t.end));
    let mut covered = header_end;
    let mut last: Option<&HeaderTensor> = None;
    for t in by_start {
        if t.start < covered {
            let other = last.map(|l| escaped(&l.name)).unwrap_or_default();
            return Err(format!(
                "tensors `{other}` and `{}` overlap (data bytes from {})",
                escaped(&t.name),
                t.start - header_end
            ));
        }
        if t.start > covered {
            return Err(format!(
                "data bytes {}..{} belong to no tensor (before `{}`)",
                covered - header_end,
                t.start - header_end,
                escaped(&t.name)
            ));
        }
        covered = t.end;
        if t.end > t.start {
            last = Some(t);
        }
    }
    if covered != buf.len() {
        return Err(format!(
            "{} bytes after the last tensor belong to no tensor (the header does not match the file)",
            buf.len() - covered
        ));
    }
    Ok(tensors)
}

impl WeightSource for SafetensorsWeights {
    fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.entries.get(name).map(|e| e.dims.clone())
    }

    fn get(&self, name: &str, dtype: DType) -> Result<HostTensor> {
        let e = self.entries.get(name).ok_or_else(|| self.missing(name))?;
        let stored = e
            .dtype
            .ok_or_else(|| ModelError::UnsupportedTensorType { name: escaped(name), dtype: e.stored.clone() })?;
        let bytes = &self.shards[e.shard].bytes[e.start..e.end];
        let t = convert(name, stored, bytes, e.dims.clone(), dtype)?;
        self.progress.advance(bytes.len() as u64);
        Ok(t)
    }

    fn missing(&self, name: &str) -> ModelError {
        ModelError::MissingTensor { name: escaped(name), source_desc: self.desc.clone() }
    }
}
