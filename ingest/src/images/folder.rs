//! Images from a folder laid out as `LABEL/*.jpg|*.jpeg|*.png`: the subfolder names the label.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::RgbImage;

#[derive(Clone, Debug)]
pub struct FolderImages {
    /// (label, file), sorted by label then file name so that indices are stable.
    files: Vec<(String, PathBuf)>,
}

fn is_image(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png"))
}

impl FolderImages {
    pub fn open(dir: &Path) -> Result<FolderImages> {
        let mut files = Vec::new();
        let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read the folder {}", dir.display()))?;
        for entry in entries {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                continue;
            }
            let label = entry.file_name().to_string_lossy().into_owned();
            for file in std::fs::read_dir(entry.path())? {
                let path = file?.path();
                if path.is_file() && is_image(&path) {
                    files.push((label.clone(), path));
                }
            }
        }
        if files.is_empty() {
            bail!("{} has no LABEL/*.jpg, *.jpeg or *.png images", dir.display());
        }
        files.sort();
        Ok(FolderImages { files })
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn label(&self, index: usize) -> &str {
        &self.files[index].0
    }

    pub fn image(&self, index: usize) -> Result<RgbImage> {
        let path = &self.files[index].1;
        let img = image::open(path).with_context(|| format!("cannot decode {}", path.display()))?;
        Ok(img.to_rgb8())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_subfolders() {
        let dir = tempfile::tempdir().unwrap();
        for (label, name) in [("dog", "b.png"), ("cat", "a.JPG"), ("dog", "a.png")] {
            std::fs::create_dir_all(dir.path().join(label)).unwrap();
            let img = RgbImage::from_pixel(3, 2, image::Rgb([1, 2, 3]));
            let format = if name.ends_with("png") { image::ImageFormat::Png } else { image::ImageFormat::Jpeg };
            img.save_with_format(dir.path().join(label).join(name), format).unwrap();
        }
        std::fs::write(dir.path().join("dog/notes.txt"), "not an image").unwrap();
        std::fs::write(dir.path().join("stray.png"), "outside any label").unwrap();
        let images = FolderImages::open(dir.path()).unwrap();
        assert_eq!(images.len(), 3);
        let labels: Vec<_> = (0..3).map(|i| images.label(i)).collect();
        assert_eq!(labels, ["cat", "dog", "dog"]);
        assert_eq!(images.image(2).unwrap().dimensions(), (3, 2));
    }

    #[test]
    fn an_empty_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = FolderImages::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("has no LABEL"), "{err}");
        assert!(FolderImages::open(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn an_undecodable_file_is_reported_by_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("cat")).unwrap();
        std::fs::write(dir.path().join("cat/broken.png"), "not a png").unwrap();
        let images = FolderImages::open(dir.path()).unwrap();
        let err = format!("{:#}", images.image(0).unwrap_err());
        assert!(err.contains("broken.png"), "{err}");
    }
}
