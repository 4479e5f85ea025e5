//! Image bytes → model input: decode, resize, center-crop, normalise (ImageNet recipe).
//!
//! The exact steps are written down in docs/infer_service.md and reproduced in Python by
//! infer_service/tests/reference.py; keep the three in step.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, Limits, RgbImage};

use crate::resample::{self, Window};

/// ImageNet channel means (RGB, on the [0,1] scale).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB, on the [0,1] scale).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Resize-then-crop ratio of the ImageNet evaluation recipe: short side 256 for a 224 crop.
pub const DEFAULT_RESIZE_RATIO: f32 = 256.0 / 224.0;

/// Why an image was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("not a JPEG or PNG image")]
    UnknownFormat,
    #[error("unsupported image format {0}; send JPEG or PNG")]
    UnsupportedFormat(String),
    #[error("image is {width}x{height} = {pixels} pixels, more than the limit of {limit}")]
    TooLarge { width: u32, height: u32, pixels: u64, limit: u64 },
    #[error("image has no pixels ({width}x{height})")]
    Empty { width: u32, height: u32 },
    #[error("cannot decode image: {0}")]
    Corrupt(String),
}

/// Turns encoded images into normalised NCHW tensors for a model taking `height`×`width`.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    height: u32,
    width: u32,
    resize_ratio: f32,
    max_pixels: u64,
    /// Normalised value of each byte value, per channel: `(v / 255 - mean) / std`.
    lut: [[f32; 256]; 3],
}

impl Preprocessor {
    /// `resize_ratio` ≥ 1: the image is first resized to cover `ratio × height` by
    /// `ratio × width`, then center-cropped (1 resizes straight to the model size).
    pub fn new(height: u32, width: u32, resize_ratio: f32, max_pixels: u64) -> Preprocessor {
        let mut lut = [[0.0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, slot) in table.iter_mut().enumerate() {
                *slot = (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            }
        }
        Preprocessor { height, width, resize_ratio: resize_ratio.max(1.0), max_pixels, lut }
    }

    pub fn tensor_len(&self) -> usize {
        3 * self.height as usize * self.width as usize
    }

    /// Decodes, resizes, crops and normalises one encoded image.
    pub fn prepare(&self, encoded: &[u8]) -> Result<Vec<f32>, ImageError> {
        let rgb = self.decode(encoded)?;
        let cropped = self.resize_and_crop(&rgb);
        Ok(self.normalize(&cropped))
    }

    /// Decodes JPEG or PNG into 8-bit RGB (alpha dropped, grey expanded, 16-bit scaled down),
    /// refusing images above the pixel limit from their header, before any pixel is decoded.
    pub fn decode(&self, encoded: &[u8]) -> Result<RgbImage, ImageError> {
        let reader = || ImageReader::new(Cursor::new(encoded)).with_guessed_format();
        let mut probe = reader().map_err(|e| ImageError::Corrupt(e.to_string()))?;
        // Reading the header allocates nothing; our own pixel limit decides below.
        probe.no_limits();
        match probe.format() {
            None => return Err(ImageError::UnknownFormat),
            Some(ImageFormat::Jpeg | ImageFormat::Png) => {}
            Some(other) => return Err(ImageError::UnsupportedFormat(format!("{other:?}"))),
        }
        let (width, height) = probe.into_dimensions().map_err(|e| ImageError::Corrupt(e.to_string()))?;
        let pixels = u64::from(width) * u64::from(height);
        if pixels == 0 {
            return Err(ImageError::Empty { width, height });
        }
        if pixels > self.max_pixels {
            return Err(ImageError::TooLarge { width, height, pixels, limit: self.max_pixels });
        }
        let mut decoder = reader().map_err(|e| ImageError::Corrupt(e.to_string()))?;
        // Room for the largest pixel format (16-bit RGBA) of an image within our limit.
        let mut limits = Limits::default();
        limits.max_alloc = Some(limits.max_alloc.unwrap_or(0).max(pixels.saturating_mul(8)));
        decoder.limits(limits);
        let image = decoder.decode().map_err(|e| ImageError::Corrupt(e.to_string()))?;
        Ok(image.into_rgb8())
    }

    /// Size the image is resized to before the center crop.
    pub fn resized_dimensions(&self, width: u32, height: u32) -> (u32, u32) {
        let cover_w = (f64::from(self.width) * f64::from(self.resize_ratio)).round();
        let cover_h = (f64::from(self.height) * f64::from(self.resize_ratio)).round();
        let scale = f64::max(cover_w / f64::from(width), cover_h / f64::from(height));
        let new_w = (f64::from(width) * scale).round().max(cover_w);
        let new_h = (f64::from(height) * scale).round().max(cover_h);
        (new_w as u32, new_h as u32)
    }

    /// Bilinear resize (Pillow's arithmetic, see [`resample`]) so the image covers
    /// `ratio × model size`, then the central `height × width` window.
    pub fn resize_and_crop(&self, image: &RgbImage) -> RgbImage {
        let (new_w, new_h) = self.resized_dimensions(image.width(), image.height());
        let window = Window {
            left: (new_w - self.width) / 2,
            top: (new_h - self.height) / 2,
            width: self.width,
            height: self.height,
        };
        if (new_w, new_h) == image.dimensions() {
            return image::imageops::crop_imm(image, window.left, window.top, window.width, window.height).to_image();
        }
        resample::resize_window(image, new_w, new_h, window)
    }

    /// `(v / 255 - mean) / std` per channel, laid out channel-major (CHW).
    pub fn normalize(&self, image: &RgbImage) -> Vec<f32> {
        let plane = image.width() as usize * image.height() as usize;
        let mut out = vec![0.0f32; 3 * plane];
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in image.pixels().enumerate() {
            r[i] = self.lut[0][usize::from(px.0[0])];
            g[i] = self.lut[1][usize::from(px.0[1])];
            b[i] = self.lut[2][usize::from(px.0[2])];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Rgb};

    fn png(image: &RgbImage) -> Vec<u8> {
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(image.as_raw(), image.width(), image.height(), image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    fn resized_dimensions_follow_the_short_side() {
        let p = Preprocessor::new(224, 224, DEFAULT_RESIZE_RATIO, u64::MAX);
        assert_eq!(p.resized_dimensions(32, 32), (256, 256));
        assert_eq!(p.resized_dimensions(640, 480), (341, 256));
        assert_eq!(p.resized_dimensions(480, 640), (256, 341));
        assert_eq!(p.resized_dimensions(256, 256), (256, 256));
        let direct = Preprocessor::new(224, 224, 1.0, u64::MAX);
        assert_eq!(direct.resized_dimensions(32, 32), (224, 224));
        let wide_model = Preprocessor::new(224, 320, 1.0, u64::MAX);
        assert_eq!(wide_model.resized_dimensions(100, 100), (320, 320));
    }

    #[test]
    fn normalisation_matches_the_formula_and_is_channel_major() {
        let p = Preprocessor::new(2, 2, 1.0, u64::MAX);
        let image = RgbImage::from_fn(2, 2, |x, y| Rgb([(x * 100) as u8, (y * 200) as u8, 255]));
        let t = p.normalize(&image);
        assert_eq!(t.len(), 12);
        let f = |v: f32, c: usize| (v / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        assert_eq!(t[1], f(100.0, 0)); // R plane, pixel (1,0)
        assert_eq!(t[4 + 2], f(200.0, 1)); // G plane, pixel (0,1)
        assert_eq!(t[8 + 3], f(255.0, 2)); // B plane, pixel (1,1)
    }

    #[test]
    fn crop_of_an_already_sized_image_is_the_center() {
        let p = Preprocessor::new(4, 4, 1.5, u64::MAX);
        let image = RgbImage::from_fn(6, 6, |x, y| Rgb([x as u8, y as u8, 0]));
        let out = p.resize_and_crop(&image);
        assert_eq!(out.dimensions(), (4, 4));
        assert_eq!(out.get_pixel(0, 0).0, [1, 1, 0]);
        assert_eq!(out.get_pixel(3, 3).0, [4, 4, 0]);
    }

    #[test]
    fn a_uniform_image_stays_uniform_after_resizing() {
        let p = Preprocessor::new(224, 224, DEFAULT_RESIZE_RATIO, u64::MAX);
        let image = RgbImage::from_pixel(32, 32, Rgb([10, 120, 250]));
        let t = p.prepare(&png(&image)).unwrap();
        assert_eq!(t.len(), p.tensor_len());
        let plane = 224 * 224;
        assert!(t[..plane].iter().all(|&v| v == p.lut[0][10]));
        assert!(t[plane..2 * plane].iter().all(|&v| v == p.lut[1][120]));
        assert!(t[2 * plane..].iter().all(|&v| v == p.lut[2][250]));
    }

    #[test]
    fn refusals_name_their_reason() {
        let p = Preprocessor::new(224, 224, DEFAULT_RESIZE_RATIO, 1000);
        assert_eq!(p.prepare(b"hello world").unwrap_err(), ImageError::UnknownFormat);
        let big = png(&RgbImage::new(40, 30));
        assert!(matches!(p.prepare(&big).unwrap_err(), ImageError::TooLarge { width: 40, height: 30, .. }));
        let mut truncated = png(&RgbImage::from_pixel(20, 20, Rgb([1, 2, 3])));
        truncated.truncate(truncated.len() / 2);
        assert!(matches!(p.prepare(&truncated).unwrap_err(), ImageError::Corrupt(_)));
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        assert!(matches!(p.prepare(gif).unwrap_err(), ImageError::UnsupportedFormat(_)));
    }
}
