//! The real service, started in-process on 127.0.0.1:0 with the int8 MobileNetV2, driven over HTTP.

mod common;

use std::sync::Arc;
use std::time::Duration;

use image::{ImageEncoder, RgbImage};
use iot_infer_service::api::{
    encode_base64, ErrorResponse, FailureCode, HealthResponse, InferRequest, InferResponse, LegacyInferRequest,
    LegacyInferResponse,
};
use iot_infer_service::{RunningService, ServiceConfig};
use reqwest::StatusCode;
use serde_json::json;

/// Record 4 of the CIFAR-10 test set (a frog) is classified 32 "tailed frog" (see reference.rs).
const FROG_RECORD: usize = 4;
const TAILED_FROG: usize = 32;
/// First 12 hex digits of the sha256 of mobilenetv2-12-int8.onnx (assets' SOURCES.md).
const INT8_MODEL_SHA_PREFIX: &str = "83530ad811bc";

async fn start(configure: impl FnOnce(&mut ServiceConfig)) -> RunningService {
    let mut config = ServiceConfig::new(common::int8_model(), common::imagenet_classes());
    config.label_map = Some(common::label_map());
    config.ort_library = Some(common::onnxruntime());
    configure(&mut config);
    RunningService::start(config, "127.0.0.1:0".parse().expect("address")).await.expect("service starts")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("HTTP client")
}

fn record_base64(index: usize) -> String {
    encode_base64(common::png_bytes(&common::cifar_record(index).1))
}

fn jpeg_base64(image: &RgbImage) -> String {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(image.as_raw(), image.width(), image.height(), image::ExtendedColorType::Rgb8)
        .expect("JPEG encoding");
    encode_base64(out)
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A well-formed PNG header announcing `width`×`height`, with no real pixel data behind it:
/// only a service that checks the header before decoding refuses it as too large.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend(crc32(&body).to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend(width.to_be_bytes());
    header.extend(height.to_be_bytes());
    header.extend([8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
    chunk(&mut png, b"IHDR", &header);
    chunk(&mut png, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut png, b"IEND", &[]);
    png
}

async fn post_json(client: &reqwest::Client, url: &str, body: &serde_json::Value) -> reqwest::Response {
    client.post(url).json(body).send().await.expect("request sent")
}

async fn metrics_text(client: &reqwest::Client, service: &RunningService) -> String {
    let response = client.get(format!("{}/metrics", service.url())).send().await.expect("metrics");
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.expect("metrics body")
}

/// Value of the sample `name` (exact series text, labels included) in Prometheus text.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_legacy_and_batch_api_answer() {
    let service = start(|_| {}).await;
    let client = client();

    let health: HealthResponse =
        client.get(format!("{}/healthz", service.url())).send().await.expect("healthz").json().await.expect("JSON");
    assert_eq!(health.status, "ok");
    assert_eq!(health.model_id, format!("mobilenetv2-12-int8-{INT8_MODEL_SHA_PREFIX}"));
    assert_eq!(health.model_id, service.model_id());

    // The Flask-compatible route.
    let legacy =
        post_json(&client, &service.url(), &json!(LegacyInferRequest { image: record_base64(FROG_RECORD) })).await;
    assert_eq!(legacy.status(), StatusCode::OK);
    let legacy: LegacyInferResponse = legacy.json().await.expect("JSON");
    assert_eq!(legacy.inferred, "frog");

    // Several images in one request: PNG, JPEG, grey, RGBA, and a photo-sized picture.
    let grey = image::GrayImage::from_fn(48, 40, |x, y| image::Luma([(x * 5 + y) as u8]));
    let mut grey_png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut grey_png)
        .write_image(grey.as_raw(), 48, 40, image::ExtendedColorType::L8)
        .expect("PNG");
    let rgba = image::RgbaImage::from_fn(30, 50, |x, y| image::Rgba([x as u8 * 8, y as u8 * 5, 90, 128]));
    let mut rgba_png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut rgba_png)
        .write_image(rgba.as_raw(), 30, 50, image::ExtendedColorType::Rgba8)
        .expect("PNG");
    let photo =
        RgbImage::from_fn(640, 480, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8]));
    let images = vec![
        record_base64(FROG_RECORD),
        jpeg_base64(&common::cifar_record(2).1),
        encode_base64(grey_png),
        encode_base64(rgba_png),
        jpeg_base64(&photo),
    ];
    let response = post_json(&client, &format!("{}/v1/infer", service.url()), &json!(InferRequest { images })).await;
    assert_eq!(response.status(), StatusCode::OK);
    let response: InferResponse = response.json().await.expect("JSON");
    assert_eq!(response.model_id, service.model_id());
    assert_eq!(response.results.len(), 5);
    let results: Vec<_> =
        response.results.iter().map(|outcome| outcome.classified().expect("every image classified")).collect();
    let frog = results[0];
    assert_eq!(frog.class_index, TAILED_FROG);
    assert!(frog.class_name.starts_with("tailed frog"), "{}", frog.class_name);
    assert_eq!(frog.label, "frog");
    let classes = std::fs::read_to_string(common::imagenet_classes()).expect("classes");
    let classes: Vec<&str> = classes.lines().collect();
    let map = std::fs::read_to_string(common::label_map()).expect("label map");
    for result in results {
        assert!(result.score > 0.0 && result.score <= 1.0, "score {}", result.score);
        assert_eq!(result.class_name, classes[result.class_index]);
        let row = map.lines().nth(result.class_index + 1).expect("map row");
        assert!(
            row.starts_with(&format!("{},", result.class_index)) && row.ends_with(&format!(",{}", result.label)),
            "{row}"
        );
    }

    service.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_bad_images_their_own_error_and_the_service_keeps_serving() {
    let service = start(|config| {
        config.max_image_pixels = 100_000;
        config.max_body_bytes = 1 << 20;
        config.max_images_per_request = 4;
    })
    .await;
    let client = client();
    let root = service.url();
    let infer = format!("{root}/v1/infer");
    let good = record_base64(FROG_RECORD);
    let mut truncated = common::png_bytes(&common::cifar_record(0).1);
    truncated.truncate(truncated.len() / 2);

    // A bad image in /v1/infer fails only itself: 200, its own error entry, the others classified.
    let image_cases: Vec<(&str, String, &str)> = vec![
        ("bad base64", "@@@ not base64 @@@".to_owned(), "base64"),
        ("not an image", encode_base64("hello, world"), "not a JPEG or PNG"),
        ("truncated PNG", encode_base64(&truncated), "cannot decode image"),
        ("too many pixels", jpeg_base64(&RgbImage::new(400, 300)), "120000 pixels"),
    ];
    for (name, bad, reason) in image_cases {
        let response = post_json(&client, &infer, &json!({"images": [good.clone(), bad, good.clone()]})).await;
        assert_eq!(response.status(), StatusCode::OK, "{name}: status");
        let response: InferResponse = response.json().await.expect("JSON");
        assert_eq!(response.results.len(), 3, "{name}");
        let failure = response.results[1].failure().unwrap_or_else(|| panic!("{name}: image 1 classified"));
        assert_eq!(failure.code, FailureCode::BadImage, "{name}");
        assert!(failure.error.contains(reason), "{name}: reason `{}` lacks `{reason}`", failure.error);
        for index in [0, 2] {
            let result = response.results[index].classified().unwrap_or_else(|| panic!("{name}: image {index}"));
            assert_eq!(result.class_index, TAILED_FROG, "{name}: image {index}");
        }
    }
    // Every image bad is still a well-formed request: one outcome each.
    let response = post_json(&client, &infer, &json!({"images": ["%%%", encode_base64("nope")]})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let response: InferResponse = response.json().await.expect("JSON");
    let codes: Vec<_> = response.results.iter().map(|outcome| outcome.failure().map(|f| f.code)).collect();
    assert_eq!(codes, [Some(FailureCode::BadImage); 2]);

    // The legacy route has one image: a bad one is the request's fault, refused with 4xx.
    let json_cases: Vec<(&str, &str, serde_json::Value, StatusCode, &str)> = vec![
        ("bad base64 (legacy)", &root, json!({"image": "%%%"}), StatusCode::BAD_REQUEST, "base64"),
        (
            "not an image (legacy)",
            &root,
            json!({"image": encode_base64(&truncated[..8])}),
            StatusCode::BAD_REQUEST,
            "image",
        ),
        (
            "huge header",
            &root,
            json!({"image": encode_base64(png_claiming(100_000, 100_000))}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "100000x100000",
        ),
        ("empty list", &infer, json!({"images": []}), StatusCode::BAD_REQUEST, "empty"),
        (
            "too many images",
            &infer,
            json!({"images": vec![good.clone(); 5]}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "limit is 4",
        ),
        ("wrong shape", &infer, json!({"imgs": [good.clone()]}), StatusCode::BAD_REQUEST, "images"),
        ("wrong shape (legacy)", &root, json!({"images": [good.clone()]}), StatusCode::BAD_REQUEST, "image"),
        (
            "body too large",
            &infer,
            json!({"images": ["A".repeat(2 << 20)]}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "length limit",
        ),
    ];
    let good_request = json!({"image": good});
    for (name, url, body, status, reason) in json_cases {
        let response = post_json(&client, url, &body).await;
        // Only a body left unread ends the connection, and the client must be told so.
        let closes = response.headers().get("connection").is_some_and(|v| v == "close");
        assert_eq!(closes, name == "body too large", "{name}: Connection: close");
        check_refusal(name, response, status, reason).await;
        let again = post_json(&client, &root, &good_request).await;
        assert_eq!(again.status(), StatusCode::OK, "good request after {name}");
    }

    let raw_cases: Vec<(&str, reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            client.post(&infer).header("content-type", "application/json").body("{\"images\": [\"abc\""),
            StatusCode::BAD_REQUEST,
            "JSON",
        ),
        (
            "wrong content type",
            client.post(&infer).header("content-type", "text/plain").body(good_request.to_string()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
        (
            "no content type",
            client.post(&root).body(good_request.to_string()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
        (
            "unknown route",
            client.post(format!("{root}/v2/nothing")).json(&good_request),
            StatusCode::NOT_FOUND,
            "/v2/nothing",
        ),
        ("wrong method", client.get(&infer), StatusCode::METHOD_NOT_ALLOWED, "GET"),
    ];
    for (name, request, status, reason) in raw_cases {
        let response = request.send().await.expect("request sent");
        check_refusal(name, response, status, reason).await;
        let again = post_json(&client, &root, &good_request).await;
        assert_eq!(again.status(), StatusCode::OK, "good request after {name}");
    }

    let metrics = metrics_text(&client, &service).await;
    for (kind, count) in [
        ("bad_base64", 3.0),
        ("not_an_image", 4.0),
        ("image_too_large", 2.0),
        ("empty_images", 1.0),
        ("too_many_images", 1.0),
        ("malformed_json", 3.0),
        ("body_too_large", 1.0),
        ("unsupported_content_type", 2.0),
        ("not_found", 1.0),
        ("method_not_allowed", 1.0),
    ] {
        assert_eq!(
            sample(&metrics, &format!("infer_errors_total{{kind=\"{kind}\"}}")),
            Some(count),
            "{kind}\n{metrics}"
        );
    }
    assert_eq!(sample(&metrics, "infer_http_requests_total{route=\"/\",status=\"200\"}"), Some(13.0), "{metrics}");
    assert_eq!(
        sample(&metrics, "infer_http_requests_total{route=\"/v1/infer\",status=\"200\"}"),
        Some(5.0),
        "{metrics}"
    );
    service.shutdown().await.expect("clean shutdown");
}

async fn check_refusal(name: &str, response: reqwest::Response, status: StatusCode, reason: &str) {
    assert_eq!(response.status(), status, "{name}: status");
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(content_type.starts_with("application/json"), "{name}: content type {content_type}");
    let body: ErrorResponse = response.json().await.unwrap_or_else(|e| panic!("{name}: error body is not JSON: {e}"));
    assert!(body.error.contains(reason), "{name}: reason `{}` lacks `{reason}`", body.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_metrics_are_exposed() {
    // A generous wait so batches form even on a loaded 2-core machine.
    let service = start(|config| config.max_wait = Duration::from_millis(100)).await;
    let client = client();
    let url = format!("{}/v1/infer", service.url());
    let requests = 16;
    let barrier = Arc::new(tokio::sync::Barrier::new(requests));
    let tasks: Vec<_> = (0..requests)
        .map(|i| {
            let (client, url, barrier) = (client.clone(), url.clone(), Arc::clone(&barrier));
            let body = json!({"images": [record_base64(i)]});
            tokio::spawn(async move {
                barrier.wait().await;
                let response = client.post(&url).json(&body).send().await.expect("request sent");
                assert_eq!(response.status(), StatusCode::OK);
                let response: InferResponse = response.json().await.expect("JSON");
                response.results[0].classified().expect("classified").clone()
            })
        })
        .collect();
    let mut frog = None;
    for (i, task) in tasks.into_iter().enumerate() {
        let result = task.await.expect("request task");
        if i == FROG_RECORD {
            frog = Some(result);
        }
    }
    // Batching must not mix up whose result is whose.
    assert_eq!(frog.expect("record 4").class_index, TAILED_FROG);

    let metrics = metrics_text(&client, &service).await;
    let batches = sample(&metrics, "infer_batch_size_count").expect("batch count");
    let images = sample(&metrics, "infer_batch_size_sum").expect("batch sum");
    let single = sample(&metrics, "infer_batch_size_bucket{le=\"1\"}").expect("bucket 1");
    assert_eq!(images, requests as f64, "{metrics}");
    assert!(single < batches, "no batch held more than one image: {batches} batches, {single} of size 1");
    assert!(batches < requests as f64, "{batches} batches for {requests} images");

    for name in [
        "infer_http_requests_total{route=\"/v1/infer\",status=\"200\"}",
        "infer_http_request_duration_seconds_count{route=\"/v1/infer\"}",
        "infer_batch_duration_seconds_count",
        "infer_queue_wait_seconds_count",
        "infer_images_total",
        &format!("infer_model_info{{model_id=\"{}\"}}", service.model_id()),
    ] {
        assert!(sample(&metrics, name).is_some(), "metrics lack {name}\n{metrics}");
    }
    assert_eq!(sample(&metrics, "infer_images_total"), Some(requests as f64));
    assert_eq!(sample(&metrics, "infer_errors_total{kind=\"bad_base64\"}"), Some(0.0), "{metrics}");
    service.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish_then_closes_the_port() {
    let service = start(|_| {}).await;
    let client = client();
    let url = format!("{}/v1/infer", service.url());
    let addr = service.addr();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            let body = json!({"images": [record_base64(i)]});
            tokio::spawn(async move { client.post(&url).json(&body).send().await.map(|r| r.status()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    service.shutdown().await.expect("clean shutdown");
    for task in tasks {
        assert_eq!(task.await.expect("task").expect("in-flight request answered"), StatusCode::OK);
    }
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "port still open after shutdown");
}
