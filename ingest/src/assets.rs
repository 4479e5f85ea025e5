//! Where the test assets (CIFAR-10 batch, class names) live.

use std::path::PathBuf;

/// Environment variable naming the assets folder.
pub const ASSETS_ENV: &str = "IOT_ASSETS_DIR";
pub const CIFAR_BATCH_FILE: &str = "cifar10_test_batch.bin";
pub const CIFAR_CLASSES_FILE: &str = "cifar10_classes.txt";

/// The assets folder: `$IOT_ASSETS_DIR` when set, else `../shared/assets` beside the repository
/// root when that folder exists (the development machines' layout), else `assets`.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(ASSETS_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let repo_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = repo_root.join("../shared/assets");
    if shared.is_dir() {
        return shared;
    }
    PathBuf::from("assets")
}
