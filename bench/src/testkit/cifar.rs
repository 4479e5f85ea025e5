//! The CIFAR-10 test batch of the shared assets, read by the producers' own reader.

use image::RgbImage;
use iot_ingest::assets::{CIFAR_BATCH_FILE, CIFAR_CLASSES_FILE};
pub use iot_ingest::images::cifar::CifarBatch;

use super::asset;

/// The CIFAR-10 test batch, read once per test process.
pub fn cifar_batch() -> &'static CifarBatch {
    static BATCH: std::sync::OnceLock<CifarBatch> = std::sync::OnceLock::new();
    BATCH.get_or_init(|| {
        CifarBatch::open(&asset(CIFAR_BATCH_FILE), &asset(CIFAR_CLASSES_FILE)).unwrap_or_else(|e| panic!("{e:#}"))
    })
}

/// The 32×32 picture of record `index` of the test batch.
pub fn cifar_image(index: usize) -> RgbImage {
    cifar_batch().image(index)
}

/// `image` as PNG bytes.
pub fn png_bytes(image: &RgbImage) -> Vec<u8> {
    let mut png = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).expect("PNG encoding in memory");
    png
}
