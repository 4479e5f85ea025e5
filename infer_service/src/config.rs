//! Command line (every flag also an environment variable) and the service configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::Parser;

use crate::preprocess::DEFAULT_RESIZE_RATIO;

/// What a service instance loads and how it batches and limits requests.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub model: PathBuf,
    pub classes: PathBuf,
    pub label_map: Option<PathBuf>,
    /// Reported by `/healthz`, `/v1/infer` and `infer_model_info`; default `<stem>-<sha256[..12]>`.
    pub model_id: Option<String>,
    pub max_batch: usize,
    pub max_wait: Duration,
    pub max_body_bytes: usize,
    pub max_image_pixels: u64,
    pub max_images_per_request: usize,
    /// Most images admitted and not yet started; `None`: [`ServiceConfig::queue_capacity`]'s default.
    pub max_queue: Option<usize>,
    /// How long a request may take, body upload included, before it is answered 504 and its
    /// images are dropped unrun.
    pub request_timeout: Duration,
    pub intra_threads: Option<usize>,
    /// `libonnxruntime.so`; `None` finds the project's `.cache/onnxruntime` installation.
    pub ort_library: Option<PathBuf>,
    pub resize_ratio: f32,
}

pub const DEFAULT_MAX_BATCH: usize = 32;
pub const DEFAULT_MAX_WAIT_MS: u64 = 5;
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 25_000_000;
pub const DEFAULT_MAX_IMAGES_PER_REQUEST: usize = 64;
/// The default queue holds this many full batches.
pub const DEFAULT_QUEUE_BATCHES: usize = 8;
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;

impl ServiceConfig {
    /// Defaults for everything but the model and its classes.
    pub fn new(model: impl Into<PathBuf>, classes: impl Into<PathBuf>) -> ServiceConfig {
        ServiceConfig {
            model: model.into(),
            classes: classes.into(),
            label_map: None,
            model_id: None,
            max_batch: DEFAULT_MAX_BATCH,
            max_wait: Duration::from_millis(DEFAULT_MAX_WAIT_MS),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_image_pixels: DEFAULT_MAX_IMAGE_PIXELS,
            max_images_per_request: DEFAULT_MAX_IMAGES_PER_REQUEST,
            max_queue: None,
            request_timeout: Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS),
            intra_threads: None,
            ort_library: None,
            resize_ratio: DEFAULT_RESIZE_RATIO,
        }
    }

    /// The queue bound: `max_queue`, by default [`DEFAULT_QUEUE_BATCHES`] full batches but never
    /// less than one largest request. A bound below that would refuse such a request forever, so
    /// it is an error.
    pub fn queue_capacity(&self) -> anyhow::Result<usize> {
        match self.max_queue {
            Some(max) if max < self.max_images_per_request => anyhow::bail!(
                "--max-queue {max} is below --max-images-per-request {}: such a request could never be admitted",
                self.max_images_per_request
            ),
            Some(max) => Ok(max),
            None => Ok((DEFAULT_QUEUE_BATCHES * self.max_batch).max(self.max_images_per_request)),
        }
    }
}

/// Image classification over HTTP with any ONNX ImageNet-style classifier.
#[derive(Debug, Clone, Parser)]
#[command(name = "infer-service", version)]
pub struct Args {
    /// ONNX classifier taking float32 NCHW [N,3,H,W] images.
    #[arg(long, env = "IOT_MODEL")]
    pub model: PathBuf,
    /// Class names in model output order, one per line.
    #[arg(long, env = "IOT_CLASSES")]
    pub classes: PathBuf,
    /// CSV `imagenet_index,imagenet_class,label` mapping classes to labels (e.g. CIFAR-10 names).
    #[arg(long, env = "IOT_LABEL_MAP")]
    pub label_map: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "IOT_LISTEN", default_value = "127.0.0.1:5000")]
    pub listen: SocketAddr,
    /// Model identifier reported to clients [default: file stem + short sha256 of the model].
    #[arg(long, env = "IOT_MODEL_ID")]
    pub model_id: Option<String>,
    /// Most images in one ONNX Runtime run.
    #[arg(long, env = "IOT_MAX_BATCH", default_value_t = DEFAULT_MAX_BATCH, value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub max_batch: usize,
    /// Longest time a batch waits for more images, in milliseconds.
    #[arg(long, env = "IOT_MAX_WAIT_MS", default_value_t = DEFAULT_MAX_WAIT_MS)]
    pub max_wait_ms: u64,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "IOT_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Largest accepted image, in pixels (width × height, read from the header before decoding).
    #[arg(long, env = "IOT_MAX_IMAGE_PIXELS", default_value_t = DEFAULT_MAX_IMAGE_PIXELS)]
    pub max_image_pixels: u64,
    /// Most images in one /v1/infer request.
    #[arg(long, env = "IOT_MAX_IMAGES_PER_REQUEST", default_value_t = DEFAULT_MAX_IMAGES_PER_REQUEST,
          value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub max_images_per_request: usize,
    /// Most images admitted and not yet started on the model; a request that does not fit is
    /// refused with 503 and Retry-After [default: 8 × --max-batch, at least --max-images-per-request].
    #[arg(long, env = "IOT_MAX_QUEUE", value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_queue: Option<usize>,
    /// Longest a request may take, body upload included, in milliseconds; then it is answered 504
    /// and its images are dropped unrun.
    #[arg(long, env = "IOT_REQUEST_TIMEOUT_MS", default_value_t = DEFAULT_REQUEST_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,
    /// ONNX Runtime intra-op threads [default: one per physical core].
    #[arg(long, env = "IOT_INTRA_THREADS", value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub intra_threads: Option<usize>,
    /// ONNX Runtime library [default: .cache/onnxruntime/lib/libonnxruntime.so above the executable or the current directory].
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib: Option<PathBuf>,
    /// Resize so the image covers RATIO × the model's input size, then center-crop (1 = resize straight to it).
    #[arg(long, env = "IOT_RESIZE_RATIO", default_value_t = DEFAULT_RESIZE_RATIO, value_parser = parse_ratio)]
    pub resize_ratio: f32,
}

fn parse_ratio(text: &str) -> Result<f32, String> {
    let ratio: f32 = text.parse().map_err(|e| format!("{e}"))?;
    if (1.0..=4.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err("must be between 1 and 4".into())
    }
}

impl Args {
    pub fn service_config(&self) -> ServiceConfig {
        ServiceConfig {
            model: self.model.clone(),
            classes: self.classes.clone(),
            label_map: self.label_map.clone(),
            model_id: self.model_id.clone(),
            max_batch: self.max_batch,
            max_wait: Duration::from_millis(self.max_wait_ms),
            max_body_bytes: self.max_body_bytes,
            max_image_pixels: self.max_image_pixels,
            max_images_per_request: self.max_images_per_request,
            max_queue: self.max_queue,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            intra_threads: self.intra_threads,
            ort_library: self.ort_dylib.clone(),
            resize_ratio: self.resize_ratio,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_defaults() {
        let args =
            Args::try_parse_from(["infer-service", "--model", "m.onnx", "--classes", "c.txt", "--max-batch", "8"])
                .unwrap();
        let config = args.service_config();
        assert_eq!(config.max_batch, 8);
        assert_eq!(config.max_wait, Duration::from_millis(DEFAULT_MAX_WAIT_MS));
        assert_eq!(args.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(config.request_timeout, Duration::from_millis(DEFAULT_REQUEST_TIMEOUT_MS));
        assert_eq!(config.queue_capacity().unwrap(), DEFAULT_MAX_IMAGES_PER_REQUEST.max(8 * 8));
    }

    #[test]
    fn the_queue_bound_holds_at_least_one_largest_request() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["infer-service", "--model", "m.onnx", "--classes", "c.txt"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv).map(|args| args.service_config())
        };
        let config = parse(&["--max-batch", "64"]).unwrap();
        assert_eq!(config.queue_capacity().unwrap(), 512);
        let config = parse(&["--max-batch", "2"]).unwrap();
        assert_eq!(config.queue_capacity().unwrap(), DEFAULT_MAX_IMAGES_PER_REQUEST);
        let config =
            parse(&["--max-queue", "10", "--max-images-per-request", "10", "--request-timeout-ms", "250"]).unwrap();
        assert_eq!(config.queue_capacity().unwrap(), 10);
        assert_eq!(config.request_timeout, Duration::from_millis(250));
        let too_small = parse(&["--max-queue", "10"]).unwrap().queue_capacity().unwrap_err().to_string();
        assert!(too_small.contains("--max-queue 10 is below --max-images-per-request 64"), "{too_small}");
        assert!(parse(&["--max-queue", "0"]).is_err());
        assert!(parse(&["--request-timeout-ms", "0"]).is_err());
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(
            Args::try_parse_from(["infer-service", "--model", "m.onnx", "--classes", "c", "--max-batch", "0"]).is_err()
        );
        assert!(Args::try_parse_from([
            "infer-service",
            "--model",
            "m.onnx",
            "--classes",
            "c",
            "--resize-ratio",
            "0.5"
        ])
        .is_err());
        assert!(Args::try_parse_from(["infer-service", "--model", "m.onnx", "--classes", "c", "--listen", "nowhere"])
            .is_err());
    }
}
