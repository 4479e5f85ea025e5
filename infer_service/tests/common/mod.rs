//! Paths to the shared test assets and small helpers for the integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

use image::{ImageEncoder, RgbImage};

pub const CIFAR_RECORD_BYTES: usize = 3073;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crate sits in the workspace").to_path_buf()
}

/// `IOT_ASSETS_DIR`, else `../shared/assets` next to the repository.
pub fn assets_dir() -> PathBuf {
    let dir = match std::env::var_os("IOT_ASSETS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("../shared/assets"),
    };
    assert!(
        dir.join("mobilenetv2-12-int8.onnx").is_file(),
        "test assets not found in {}: set IOT_ASSETS_DIR to the folder holding mobilenetv2-12-int8.onnx",
        dir.display()
    );
    dir
}

pub fn int8_model() -> PathBuf {
    assets_dir().join("mobilenetv2-12-int8.onnx")
}

pub fn imagenet_classes() -> PathBuf {
    assets_dir().join("imagenet_classes.txt")
}

pub fn cifar_test_batch() -> PathBuf {
    assets_dir().join("cifar10_test_batch.bin")
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

/// CIFAR-10 label and 32×32 RGB picture of test record `index`.
pub fn cifar_record(index: usize) -> (u8, RgbImage) {
    use std::io::{Read, Seek, SeekFrom};
    let path = cifar_test_batch();
    let mut record = vec![0u8; CIFAR_RECORD_BYTES];
    std::fs::File::open(&path)
        .and_then(|mut file| {
            file.seek(SeekFrom::Start((index * CIFAR_RECORD_BYTES) as u64))?;
            file.read_exact(&mut record)
        })
        .unwrap_or_else(|e| panic!("cannot read record {index} of {}: {e}", path.display()));
    let planes = &record[1..];
    let image = RgbImage::from_fn(32, 32, |x, y| {
        let i = (y * 32 + x) as usize;
        image::Rgb([planes[i], planes[1024 + i], planes[2048 + i]])
    });
    (record[0], image)
}

pub fn png_bytes(image: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(image.as_raw(), image.width(), image.height(), image::ExtendedColorType::Rgb8)
        .expect("PNG encoding of an in-memory image");
    out
}
