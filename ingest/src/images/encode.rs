//! Encoding an image for the `Data` field: JPEG (the original pipeline's choice) or PNG, then
//! standard base64.

use std::io::Cursor;

use anyhow::{Context, Result};
use image::codecs::jpeg::JpegEncoder;
use image::RgbImage;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Jpeg,
    /// Lossless: the pixels the service sees are exactly the source's.
    Png,
}

#[derive(Clone, Copy, Debug)]
pub struct Encoding {
    pub format: Format,
    /// 1..=100, JPEG only.
    pub jpeg_quality: u8,
}

impl Encoding {
    pub fn encode(&self, img: &RgbImage) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        match self.format {
            Format::Jpeg => JpegEncoder::new_with_quality(&mut out, self.jpeg_quality.clamp(1, 100))
                .encode_image(img)
                .context("JPEG encoding failed")?,
            Format::Png => {
                img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).context("PNG encoding failed")?
            }
        }
        Ok(out)
    }

    pub fn encode_base64(&self, img: &RgbImage) -> Result<String> {
        Ok(iot_schema::infer::encode_base64(self.encode(img)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient() -> RgbImage {
        RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 128]))
    }

    #[test]
    fn png_round_trips_exactly() {
        let enc = Encoding { format: Format::Png, jpeg_quality: 90 };
        let data = enc.encode_base64(&gradient()).unwrap();
        let bytes = crate::message::decode_base64(&data).unwrap();
        assert_eq!(image::load_from_memory(&bytes).unwrap().to_rgb8(), gradient());
    }

    #[test]
    fn jpeg_is_close_and_decodable_by_the_consumer_checks() {
        let enc = Encoding { format: Format::Jpeg, jpeg_quality: 95 };
        let data = enc.encode_base64(&gradient()).unwrap();
        let limits = crate::message::ImageLimits { max_pixels: crate::message::ImageLimits::DEFAULT_MAX_PIXELS };
        crate::message::check_image(&data, &limits).unwrap();
        let bytes = crate::message::decode_base64(&data).unwrap();
        let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
        let diff: u64 = back.as_raw().iter().zip(gradient().as_raw()).map(|(a, b)| a.abs_diff(*b) as u64).sum();
        assert!(diff / (32 * 32 * 3) < 8, "mean abs error {}", diff / (32 * 32 * 3));
    }
}
