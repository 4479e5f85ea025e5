//! Paths to the shared test assets and small helpers for the integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

use iot_bench::testkit::{asset, workspace_root};

pub fn int8_model() -> PathBuf {
    asset("mobilenetv2-12-int8.onnx")
}

pub fn imagenet_classes() -> PathBuf {
    asset("imagenet_classes.txt")
}

pub fn cifar_test_batch() -> PathBuf {
    asset("cifar10_test_batch.bin")
}

pub fn label_map() -> PathBuf {
    workspace_root().join("data/label_maps/imagenet_to_cifar10.csv")
}

/// `IOT_PYTHON`, else the project venv made by scripts/setup.
pub fn python() -> PathBuf {
    let python = match std::env::var_os("IOT_PYTHON") {
        Some(python) => PathBuf::from(python),
        None => workspace_root().join(".cache/venv/bin/python"),
    };
    assert!(
        python.exists(),
        "Python with onnxruntime/numpy/pillow not found at {}: run scripts/setup (or set IOT_PYTHON)",
        python.display()
    );
    python
}

/// ONNX Runtime library: `ORT_DYLIB_PATH`, else the project's installation.
pub fn onnxruntime() -> PathBuf {
    let explicit = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    iot_infer_service::runtime::locate_onnxruntime(explicit.as_deref()).unwrap_or_else(|e| panic!("{e:#}"))
}
