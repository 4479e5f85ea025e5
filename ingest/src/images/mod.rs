//! Where producers get labelled images, and how they encode them for the wire.

pub mod cifar;
pub mod encode;
pub mod folder;
pub mod synthetic;

use anyhow::Result;
use image::RgbImage;

/// A numbered, labelled image collection.
#[derive(Clone, Debug)]
pub enum ImageSource {
    Cifar(cifar::CifarBatch),
    Folder(folder::FolderImages),
    Synthetic(synthetic::Synthetic),
}

impl ImageSource {
    /// How many distinct images there are; `None` for the endless synthetic source.
    pub fn distinct_images(&self) -> Option<usize> {
        match self {
            ImageSource::Cifar(batch) => Some(batch.len()),
            ImageSource::Folder(folder) => Some(folder.len()),
            ImageSource::Synthetic(_) => None,
        }
    }

    /// The label and image at `index` (any index: finite sources wrap around).
    pub fn get(&self, index: usize) -> Result<(String, RgbImage)> {
        let index = self.distinct_images().filter(|n| *n > 0).map_or(index, |n| index % n);
        Ok(match self {
            ImageSource::Cifar(batch) => (batch.label(index).to_owned(), batch.image(index)),
            ImageSource::Folder(folder) => (folder.label(index).to_owned(), folder.image(index)?),
            ImageSource::Synthetic(s) => (s.label(index).to_owned(), s.image(index)),
        })
    }
}
