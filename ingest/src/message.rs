//! Turning a Kafka record into an [`ImageMessage`], or into the reason it is malformed.
//!
//! Both consumers apply the same checks, so a record that one of them dead-letters never gets a
//! MongoDB document from the other.

use std::io::Cursor;

use iot_schema::{field, ImageMessage};

use crate::offsets::Position;

/// Why a record cannot be handled. It goes to the dead-letter topic with this reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("the message has no payload")]
    Empty,
    #[error("the payload is not UTF-8 text")]
    NotUtf8,
    #[error("the payload is not JSON: {0}")]
    NotJson(String),
    #[error("the payload is JSON but not an object")]
    NotObject,
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("invalid field: {0}")]
    InvalidField(String),
    #[error("`Data` is not base64: {0}")]
    BadBase64(String),
    #[error("`Data` is not a decodable image: {0}")]
    BadImage(String),
    #[error("the inference service rejected the image: {0}")]
    RejectedByService(String),
    #[error("the inference service failed on this image, and only on it: {0}")]
    InferenceFailed(String),
    #[error("record `{doc_id}` already holds another message's content (digest {stored}, this message {digest})")]
    IdCollision { doc_id: String, digest: String, stored: String },
}

impl Malformed {
    /// A short, stable name for the reason, for metrics and the dead-letter header.
    pub fn code(&self) -> &'static str {
        match self {
            Malformed::Empty => "empty",
            Malformed::NotUtf8 => "not_utf8",
            Malformed::NotJson(_) => "not_json",
            Malformed::NotObject => "not_object",
            Malformed::MissingField(_) => "missing_field",
            Malformed::InvalidField(_) => "invalid_field",
            Malformed::BadBase64(_) => "bad_base64",
            Malformed::BadImage(_) => "bad_image",
            Malformed::RejectedByService(_) => "rejected_by_service",
            Malformed::InferenceFailed(_) => "inference_failed",
            Malformed::IdCollision { .. } => "id_collision",
        }
    }
}

/// A record as read from Kafka, owned so that it can outlive the consumer's buffer.
#[derive(Clone, Debug)]
pub struct Inbound {
    pub pos: Position,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

impl Inbound {
    /// The key for log lines: its text, or a note that there is none.
    pub fn key_text(&self) -> String {
        match &self.key {
            Some(key) => String::from_utf8_lossy(key).into_owned(),
            None => "<no key>".to_owned(),
        }
    }
}

/// A well-formed record: the message and the Kafka record it came in.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub inbound: Inbound,
    pub msg: ImageMessage,
}

/// Fields without which a record cannot be stored (`SentAt` is optional).
const REQUIRED: [&str; 4] = [field::ID, field::PRODUCER_ID, field::GROUND_TRUTH, field::DATA];

/// What decoding `Data` may cost. Both consumers apply the same limits (set by the same flags),
/// so a record that one of them dead-letters never gets a document from the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest width × height accepted, read from the image's header before any pixel is decoded.
    pub max_pixels: u64,
}

/// Bytes one decoded pixel may cost at worst: 8 for the widest pixel format the decoders write
/// (16-bit RGBA), as much again for the decoder's own buffers (a progressive JPEG's
/// coefficients, a PNG's unfiltered rows).
pub const DECODE_BYTES_PER_PIXEL: u64 = 16;

impl ImageLimits {
    /// Default `--max-image-pixels`: 4 Mpx (2048 × 2048), far above the 32×32..224×224 images the
    /// producers send, small enough that a decode costs at most 64 MiB.
    pub const DEFAULT_MAX_PIXELS: u64 = 2048 * 2048;

    /// The most memory one decode may allocate; also its `image::Limits::max_alloc`.
    pub fn bytes_per_decode(&self) -> u64 {
        self.max_pixels.saturating_mul(DECODE_BYTES_PER_PIXEL)
    }
}

/// Parses and checks a payload: JSON with every required field of the right type, a non-empty
/// `ProducerID`, and `Data` that is base64 of an image within `limits` that the `image` crate
/// decodes fully.
pub fn parse(payload: Option<&[u8]>, limits: &ImageLimits) -> Result<ImageMessage, Malformed> {
    let bytes = payload.filter(|p| !p.is_empty()).ok_or(Malformed::Empty)?;
    let text = std::str::from_utf8(bytes).map_err(|_| Malformed::NotUtf8)?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| Malformed::NotJson(e.to_string()))?;
    let object = value.as_object().ok_or(Malformed::NotObject)?;
    for name in REQUIRED {
        if object.get(name).is_none_or(serde_json::Value::is_null) {
            return Err(Malformed::MissingField(name));
        }
    }
    let msg: ImageMessage = serde_json::from_value(value).map_err(|e| Malformed::InvalidField(e.to_string()))?;
    if msg.producer_id.trim().is_empty() {
        return Err(Malformed::InvalidField("`ProducerID` is empty".into()));
    }
    check_image(&msg.data, limits)?;
    Ok(msg)
}

/// Decodes `Data` fully, once: a truncated or corrupt image is caught here, not by the service.
/// The header is read first (once), so an image over the limit costs no pixel memory at all;
/// the pixels are then decoded from the same reader, within `limits.bytes_per_decode()`.
pub fn check_image(data: &str, limits: &ImageLimits) -> Result<(), Malformed> {
    let bytes = decode_base64(data)?;
    if bytes.is_empty() {
        return Err(Malformed::BadImage("no image bytes".into()));
    }
    let bad = |e: image::ImageError| Malformed::BadImage(e.to_string());
    let reader = image::ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| Malformed::BadImage(e.to_string()))?;
    let mut decoder = reader.into_decoder().map_err(bad)?;
    let (width, height) = image::ImageDecoder::dimensions(&decoder);
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(Malformed::BadImage(format!("the image is empty ({width}x{height})")));
    }
    if pixels > limits.max_pixels {
        return Err(Malformed::BadImage(format!(
            "{width}x{height} = {pixels} pixels is over the limit of {} pixels (--max-image-pixels)",
            limits.max_pixels
        )));
    }
    let mut decode_limits = image::Limits::default();
    decode_limits.max_alloc = Some(limits.bytes_per_decode());
    image::ImageDecoder::set_limits(&mut decoder, decode_limits).map_err(bad)?;
    image::DynamicImage::from_decoder(decoder).map_err(bad)?;
    Ok(())
}

/// `Data`'s bytes, read as the inference service reads them (`iot_schema::infer::decode_base64`:
/// padding optional, whitespace ignored), so that both sides agree on what is an image.
pub fn decode_base64(data: &str) -> Result<Vec<u8>, Malformed> {
    iot_schema::infer::decode_base64(data).map_err(|e| Malformed::BadBase64(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iot_schema::infer::encode_base64;

    const LIMITS: ImageLimits = ImageLimits { max_pixels: ImageLimits::DEFAULT_MAX_PIXELS };

    fn parse(payload: Option<&[u8]>) -> Result<ImageMessage, Malformed> {
        super::parse(payload, &LIMITS)
    }

    fn check_image(data: &str) -> Result<(), Malformed> {
        super::check_image(data, &LIMITS)
    }

    fn png_of(width: u32, height: u32) -> String {
        let img = image::RgbImage::from_pixel(width, height, image::Rgb([10, 200, 10]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
        encode_base64(out)
    }

    fn png_base64() -> String {
        let img = image::RgbImage::from_pixel(4, 4, image::Rgb([200, 10, 10]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
        encode_base64(out)
    }

    fn payload(json: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json).unwrap()
    }

    fn good() -> serde_json::Value {
        serde_json::json!({"ID": 4, "ProducerID": "cam-1", "GroundTruth": "cat", "Data": png_base64(), "SentAt": 17})
    }

    #[test]
    fn a_good_message_parses() {
        let msg = parse(Some(&payload(good()))).unwrap();
        assert_eq!((msg.id, msg.producer_id.as_str(), msg.sent_at_ms), (4, "cam-1", Some(17)));
    }

    #[test]
    fn sent_at_is_optional_as_in_the_original_pipeline() {
        let mut json = good();
        json.as_object_mut().unwrap().remove("SentAt");
        assert_eq!(parse(Some(&payload(json))).unwrap().sent_at_ms, None);
    }

    #[test]
    fn no_payload_or_an_empty_one() {
        assert_eq!(parse(None), Err(Malformed::Empty));
        assert_eq!(parse(Some(b"")), Err(Malformed::Empty));
    }

    #[test]
    fn binary_garbage_is_not_utf8() {
        assert_eq!(parse(Some(&[0xff, 0xfe, 0x00])), Err(Malformed::NotUtf8));
    }

    #[test]
    fn text_that_is_not_json() {
        let err = parse(Some(b"hello {")).unwrap_err();
        assert!(matches!(err, Malformed::NotJson(_)), "{err:?}");
        assert_eq!(err.code(), "not_json");
    }

    #[test]
    fn json_that_is_not_an_object() {
        assert_eq!(parse(Some(b"[1,2]")), Err(Malformed::NotObject));
        assert_eq!(parse(Some(b"\"text\"")), Err(Malformed::NotObject));
    }

    #[test]
    fn each_missing_or_null_required_field_is_named() {
        for name in REQUIRED {
            let mut json = good();
            json.as_object_mut().unwrap().remove(name);
            assert_eq!(parse(Some(&payload(json))), Err(Malformed::MissingField(name)));
            let mut json = good();
            json[name] = serde_json::Value::Null;
            assert_eq!(parse(Some(&payload(json))), Err(Malformed::MissingField(name)));
        }
    }

    #[test]
    fn a_field_of_the_wrong_type() {
        let mut json = good();
        json["ID"] = "seven".into();
        let err = parse(Some(&payload(json))).unwrap_err();
        assert!(matches!(&err, Malformed::InvalidField(why) if why.contains("invalid type")), "{err:?}");
        let mut json = good();
        json["SentAt"] = "yesterday".into();
        assert_eq!(parse(Some(&payload(json))).unwrap_err().code(), "invalid_field");
    }

    #[test]
    fn an_empty_producer_id() {
        let mut json = good();
        json["ProducerID"] = " ".into();
        assert_eq!(parse(Some(&payload(json))).unwrap_err().code(), "invalid_field");
    }

    #[test]
    fn data_that_is_not_base64() {
        let mut json = good();
        json["Data"] = "not base64!!".into();
        assert_eq!(parse(Some(&payload(json))).unwrap_err().code(), "bad_base64");
    }

    #[test]
    fn base64_that_is_not_an_image() {
        for data in [encode_base64(b"just some text"), String::new()] {
            let mut json = good();
            json["Data"] = data.into();
            assert_eq!(parse(Some(&payload(json))).unwrap_err().code(), "bad_image");
        }
    }

    #[test]
    fn a_truncated_image_is_caught() {
        let full = decode_base64(&png_base64()).unwrap();
        let mut json = good();
        json["Data"] = encode_base64(&full[..full.len() / 2]).into();
        assert_eq!(parse(Some(&payload(json))).unwrap_err().code(), "bad_image");
    }

    #[test]
    fn base64_without_padding_is_accepted() {
        let data = png_base64();
        let unpadded = data.trim_end_matches('=');
        assert!(check_image(unpadded).is_ok());
    }

    #[test]
    fn an_image_at_the_pixel_limit_passes_and_one_pixel_more_is_refused() {
        let limits = ImageLimits { max_pixels: 60 * 40 };
        assert_eq!(super::check_image(&png_of(60, 40), &limits), Ok(()));
        assert_eq!(super::check_image(&png_of(40, 60), &limits), Ok(()));
        let err = super::check_image(&png_of(2401, 1), &limits).unwrap_err();
        assert_eq!(err.code(), "bad_image");
        assert!(err.to_string().contains("2401x1 = 2401 pixels is over the limit of 2400 pixels"), "{err}");
        let mut json = good();
        json["Data"] = png_of(61, 40).into();
        let err = super::parse(Some(&payload(json)), &limits).unwrap_err();
        assert!(err.to_string().contains("--max-image-pixels"), "{err}");
    }

    #[test]
    fn a_huge_header_is_refused_before_any_pixel_is_decoded() {
        // A valid PNG header that claims 100000 x 100000 pixels, and no pixel data: refused from
        // the header, by the limit (a decode would fail differently, after allocating).
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [(b"IHDR", &ihdr[..]), (b"IDAT", &[][..]), (b"IEND", &[][..])] {
            png.extend_from_slice(&(data.len() as u32).to_be_bytes());
            png.extend_from_slice(kind);
            png.extend_from_slice(data);
            png.extend_from_slice(&crc32(kind, data).to_be_bytes());
        }
        let err = check_image(&encode_base64(&png)).unwrap_err();
        assert!(err.to_string().contains("100000x100000 = 10000000000 pixels is over the limit"), "{err}");
    }

    /// The PNG chunk checksum (CRC-32 over type and data), so the header above is one a decoder
    /// accepts.
    fn crc32(kind: &[u8], data: &[u8]) -> u32 {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(kind);
        hasher.update(data);
        hasher.finalize()
    }

    #[test]
    fn key_text_of_a_keyless_record() {
        let inbound =
            Inbound { pos: Position { topic: "t".into(), partition: 0, offset: 0 }, key: None, payload: None };
        assert_eq!(inbound.key_text(), "<no key>");
    }
}
