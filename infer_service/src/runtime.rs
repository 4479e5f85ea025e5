//! Finding and loading the ONNX Runtime shared library.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context};
use ort::environment::Environment;

/// Where `scripts/setup` installs ONNX Runtime, relative to the workspace root.
pub const ORT_LIBRARY_RELATIVE: &str = ".cache/onnxruntime/lib/libonnxruntime.so";

/// Environment variable that points at a specific `libonnxruntime.so`.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// Resolves the ONNX Runtime library: `explicit` (flag or `ORT_DYLIB_PATH`) when given, else the
/// project's installation found by walking up from the executable and from the current directory.
pub fn locate_onnxruntime(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!("ONNX Runtime library {} does not exist (from --ort-dylib / {ORT_DYLIB_ENV})", path.display());
    }
    let mut starts = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            starts.push(dir.to_path_buf());
        }
    }
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    for start in &starts {
        if let Some(found) = search_upwards(start, ORT_LIBRARY_RELATIVE) {
            return Ok(found);
        }
    }
    let searched: Vec<String> = starts.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "ONNX Runtime library not found: no {ORT_LIBRARY_RELATIVE} in any parent of {}; \
         run scripts/setup, or set {ORT_DYLIB_ENV} to a libonnxruntime.so",
        searched.join(" or ")
    )
}

/// First `dir/relative` that exists for `dir` = `start` and each of its ancestors.
pub fn search_upwards(start: &Path, relative: &str) -> Option<PathBuf> {
    start.ancestors().map(|dir| dir.join(relative)).find(|candidate| candidate.is_file())
}

// ONNX Runtime allows a single environment per process (ort refuses a second `build`), and the
// library itself can be loaded only once; every service started in this process shares it.
static ENVIRONMENT: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

/// Loads ONNX Runtime from `library` (once per process) and returns the shared environment.
pub fn environment(library: &Path) -> anyhow::Result<Environment> {
    let mut slot = ENVIRONMENT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((loaded_from, env)) = slot.as_ref() {
        if loaded_from != library {
            tracing::warn!(
                requested = %library.display(),
                loaded = %loaded_from.display(),
                "ONNX Runtime already loaded in this process; reusing it"
            );
        }
        return Ok(env.clone());
    }
    let env = ort::init_from(library)
        .map_err(|e| anyhow::anyhow!("cannot load ONNX Runtime from {}: {e}", library.display()))?
        .with_name("infer-service")
        .with_telemetry(false)
        .build()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("cannot create the ONNX Runtime environment")?;
    tracing::info!(library = %library.display(), "ONNX Runtime loaded");
    *slot = Some((library.to_path_buf(), env.clone()));
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_upwards_finds_the_nearest_ancestor() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join(ORT_LIBRARY_RELATIVE);
        std::fs::create_dir_all(lib.parent().unwrap()).unwrap();
        std::fs::write(&lib, b"").unwrap();
        let deep = root.path().join("target/debug/deps");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(search_upwards(&deep, ORT_LIBRARY_RELATIVE), Some(lib));
    }

    #[test]
    fn search_upwards_gives_none_when_absent() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(search_upwards(root.path(), "no/such/libonnxruntime.so"), None);
    }

    #[test]
    fn explicit_path_must_exist() {
        let err = locate_onnxruntime(Some(Path::new("/no/such/libonnxruntime.so"))).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
