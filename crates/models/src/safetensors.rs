//! safetensors checkpoints, single-file or sharded (`model.safetensors.index.json`), memory
//! mapped: headers are parsed once at open, and a tensor's bytes are read (and converted to
//! the compute dtype) only when the decoder asks for it.

use crate::error::{ModelError, Result};
use crate::weights::{convert, LoadProgress, WeightSource};
use encore_tensor::{DType, HostTensor};
use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

struct Entry {
    shard: usize,
    /// `None` for dtypes encore does not load (the error is raised by `get`, not at open).
    dtype: Option<DType>,
    stored: StDtype,
    dims: Vec<usize>,
    /// Byte range in the shard's mmap.
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
    pub fn open_dir(dir: &Path) -> Result<Self> {
        if dir.join(INDEX_FILE).is_file() {
            Self::open_index(&dir.join(INDEX_FILE))
        } else if dir.join(SINGLE_FILE).is_file() {
            Self::open_file(&dir.join(SINGLE_FILE))
        } else {
            let msg = format!("no {SINGLE_FILE} or {INDEX_FILE} in this directory");
            Err(ModelError::io(dir, std::io::Error::new(std::io::ErrorKind::NotFound, msg)))
        }
    }

    pub fn open_file(path: &Path) -> Result<Self> {
        let mut entries = BTreeMap::new();
        let shard = read_shard(path, 0, &mut entries)?;
        Ok(Self::finish(vec![shard], entries, path.display().to_string()))
    }

    /// `model.safetensors.index.json`: `{"weight_map": {tensor name: shard file name}}`.
    pub fn open_index(index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Json { path: index.to_path_buf(), source: e })?;
        let bad = |msg: String| ModelError::Safetensors { path: index.to_path_buf(), msg };
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no `weight_map` object".to_string()))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut files: Vec<&str> = Vec::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| bad(format!("weight_map[{name}] is not a file name")))?;
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(bad(format!("weight_map[{name}] = `{file}` is not a file in this directory")));
            }
            if !files.contains(&file) {
                files.push(file);
            }
        }
        files.sort_unstable();
        let mut entries = BTreeMap::new();
        let mut shards = Vec::with_capacity(files.len());
        for (i, file) in files.iter().enumerate() {
            shards.push(read_shard(&dir.join(file), i, &mut entries)?);
        }
        for (name, file) in map {
            let file = file.as_str().unwrap_or_default();
            match entries.get(name) {
                Some(e) if shards[e.shard].path.file_name().and_then(|f| f.to_str()) == Some(file) => {}
                _ => return Err(bad(format!("tensor `{name}` is listed in shard {file} but is not in it"))),
            }
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

/// Maps `path`, validates its header (the safetensors crate checks that offsets are
/// contiguous and that the file is exactly as long as the header says), and records its
/// tensors in `entries`.
fn read_shard(path: &Path, index: usize, entries: &mut BTreeMap<String, Entry>) -> Result<Shard> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // SAFETY: the map is read-only and model files are not written while encore runs; a
    // file truncated underneath us by another process is outside what we can defend against.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
    let bad = |msg: String| ModelError::Safetensors { path: path.to_path_buf(), msg };
    let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| bad(describe(&e, mmap.len())))?;
    let data_start = 8 + header_len;
    let infos: HashMap<String, _> = metadata.tensors();
    for (name, info) in infos {
        let dtype = match info.dtype {
            StDtype::F32 => Some(DType::F32),
            StDtype::BF16 => Some(DType::BF16),
            StDtype::F16 => Some(DType::F16),
            _ => None,
        };
        let entry = Entry {
            shard: index,
            dtype,
            stored: info.dtype,
            dims: info.shape.clone(),
            start: data_start + info.data_offsets.0,
            end: data_start + info.data_offsets.1,
        };
        if entries.insert(name.clone(), entry).is_some() {
            return Err(bad(format!("tensor `{name}` also appears in another shard")));
        }
    }
    Ok(Shard { path: path.to_path_buf(), mmap })
}

fn describe(e: &safetensors::SafeTensorError, file_len: usize) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => format!("only {file_len} bytes, too short for a header"),
        E::MetadataIncompleteBuffer => format!("{file_len} bytes do not match the header's tensor sizes (truncated?)"),
        E::InvalidHeaderLength => format!("header length is past the end of the {file_len}-byte file"),
        other => other.to_string(),
    }
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
        let stored = e.dtype.ok_or_else(|| ModelError::UnsupportedTensorType {
            name: name.to_string(),
            dtype: format!("{:?}", e.stored),
        })?;
        let bytes = &self.shards[e.shard].mmap[e.start..e.end];
        let t = convert(name, stored, bytes, e.dims.clone(), dtype)?;
        self.progress.advance(bytes.len() as u64);
        Ok(t)
    }

    fn missing(&self, name: &str) -> ModelError {
        ModelError::MissingTensor { name: name.to_string(), source_desc: self.desc.clone() }
    }
}
