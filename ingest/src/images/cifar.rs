//! The CIFAR-10 "binary version" batch: records of 3,073 bytes, a label byte then 1024 red,
//! 1024 green and 1024 blue bytes of a 32×32 image, rows first.

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::RgbImage;

pub const SIDE: u32 = 32;
const PLANE: usize = (SIDE * SIDE) as usize;
pub const RECORD_LEN: usize = 1 + 3 * PLANE;

#[derive(Clone, Debug)]
pub struct CifarBatch {
    bytes: Vec<u8>,
    classes: Vec<String>,
}

impl CifarBatch {
    /// Reads a batch file and its class names (one per line, in label order).
    pub fn open(batch: &Path, classes: &Path) -> Result<CifarBatch> {
        let bytes =
            std::fs::read(batch).with_context(|| format!("cannot read the CIFAR-10 batch {}", batch.display()))?;
        let names = std::fs::read_to_string(classes)
            .with_context(|| format!("cannot read the CIFAR-10 class names {}", classes.display()))?;
        let classes = names.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
        CifarBatch::from_bytes(bytes, classes)
            .with_context(|| format!("{} is not a CIFAR-10 binary batch", batch.display()))
    }

    /// Checks the layout: whole records only, every label naming a class.
    pub fn from_bytes(bytes: Vec<u8>, classes: Vec<String>) -> Result<CifarBatch> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD_LEN) {
            bail!("{} bytes is not a whole number of {RECORD_LEN}-byte records", bytes.len());
        }
        if classes.is_empty() {
            bail!("no class names");
        }
        if let Some((index, label)) =
            bytes.chunks_exact(RECORD_LEN).map(|r| r[0]).enumerate().find(|(_, l)| *l as usize >= classes.len())
        {
            bail!("record {index} has label {label}, but there are only {} classes", classes.len());
        }
        Ok(CifarBatch { bytes, classes })
    }

    pub fn len(&self) -> usize {
        self.bytes.len() / RECORD_LEN
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn record(&self, index: usize) -> &[u8] {
        &self.bytes[index * RECORD_LEN..(index + 1) * RECORD_LEN]
    }

    /// The class name of record `index` (< `len()`).
    pub fn label(&self, index: usize) -> &str {
        &self.classes[self.record(index)[0] as usize]
    }

    /// The 32×32 image of record `index` (< `len()`), planes interleaved into RGB pixels.
    pub fn image(&self, index: usize) -> RgbImage {
        let record = &self.record(index)[1..];
        let (red, rest) = record.split_at(PLANE);
        let (green, blue) = rest.split_at(PLANE);
        let mut pixels = Vec::with_capacity(3 * PLANE);
        for i in 0..PLANE {
            pixels.extend_from_slice(&[red[i], green[i], blue[i]]);
        }
        // The buffer has exactly SIDE*SIDE*3 bytes.
        RgbImage::from_raw(SIDE, SIDE, pixels).expect("a 32x32 RGB buffer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        ["airplane", "automobile", "bird"].map(String::from).to_vec()
    }

    /// Two records: label 2 with pixel i of each plane = (i, 2i, 3i) mod 256, then label 0 black.
    fn two_records() -> Vec<u8> {
        let mut bytes = vec![2u8];
        for factor in 1..=3usize {
            bytes.extend((0..PLANE).map(|i| (i * factor % 256) as u8));
        }
        bytes.push(0);
        bytes.extend(std::iter::repeat_n(0u8, 3 * PLANE));
        bytes
    }

    #[test]
    fn reads_labels_and_interleaves_planes() {
        let batch = CifarBatch::from_bytes(two_records(), classes()).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!((batch.label(0), batch.label(1)), ("bird", "airplane"));
        let img = batch.image(0);
        assert_eq!(img.dimensions(), (32, 32));
        // Pixel (x=5, y=1) is plane index 37.
        assert_eq!(img.get_pixel(5, 1).0, [37, 74, 111]);
        assert_eq!(batch.image(1).get_pixel(31, 31).0, [0, 0, 0]);
    }

    #[test]
    fn rejects_a_truncated_file() {
        let mut bytes = two_records();
        bytes.pop();
        let err = CifarBatch::from_bytes(bytes, classes()).unwrap_err().to_string();
        assert!(err.contains("whole number"), "{err}");
        assert!(CifarBatch::from_bytes(Vec::new(), classes()).is_err());
    }

    #[test]
    fn rejects_a_label_without_a_class() {
        let mut bytes = two_records();
        bytes[RECORD_LEN] = 7;
        let err = CifarBatch::from_bytes(bytes, classes()).unwrap_err().to_string();
        assert!(err.contains("record 1 has label 7"), "{err}");
    }

    #[test]
    fn reads_the_real_test_batch() {
        let dir = crate::assets::default_dir();
        let (batch, names) = (dir.join(crate::assets::CIFAR_BATCH_FILE), dir.join(crate::assets::CIFAR_CLASSES_FILE));
        assert!(batch.is_file(), "{} is missing: set IOT_ASSETS_DIR to the assets folder", batch.display());
        let batch = CifarBatch::open(&batch, &names).unwrap();
        assert_eq!(batch.len(), 10_000);
        // The official test set starts cat, ship, ship, airplane, frog.
        let first: Vec<_> = (0..5).map(|i| batch.label(i)).collect();
        assert_eq!(first, ["cat", "ship", "ship", "airplane", "frog"]);
    }
}
