//! The `infer-service` program itself: flags and environment, errors, SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use iot_infer_service::api::{encode_base64, HealthResponse, LegacyInferResponse};
use iot_schema::exit;
use serde_json::json;

fn program() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_infer-service"));
    for var in ["IOT_MODEL", "IOT_CLASSES", "IOT_LABEL_MAP", "IOT_LISTEN", "IOT_MODEL_ID", "IOT_MAX_BATCH"] {
        command.env_remove(var);
    }
    command
}

#[test]
fn a_bad_flag_gets_the_usage() {
    let output =
        program().args(["--model", "m.onnx", "--classes", "c.txt", "--max-batch", "0"]).output().expect("runs");
    assert_eq!(output.status.code(), Some(exit::USAGE.into()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid value '0' for '--max-batch"), "{stderr}");

    let output = program().output().expect("runs");
    assert_eq!(output.status.code(), Some(exit::USAGE.into()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--model <MODEL>") && stderr.contains("Usage:"), "{stderr}");
}

#[test]
fn a_missing_model_is_a_clear_error() {
    let output = program()
        .env("IOT_MODEL", "/nonexistent/model.onnx")
        .env("IOT_CLASSES", common::imagenet_classes())
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(exit::FAILED.into()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("infer-service: error: ") && stderr.contains("/nonexistent/model.onnx"), "{stderr}");
}

#[test]
fn a_missing_onnxruntime_is_a_clear_error() {
    let output = program()
        .env("IOT_MODEL", common::int8_model())
        .env("IOT_CLASSES", common::imagenet_classes())
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(exit::FAILED.into()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ONNX Runtime library /nonexistent/libonnxruntime.so does not exist"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_from_the_environment_it_serves_until_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let mut child = program()
        .env("IOT_MODEL", common::int8_model())
        .env("IOT_CLASSES", common::imagenet_classes())
        .env("IOT_LABEL_MAP", common::label_map())
        .env("IOT_LISTEN", format!("127.0.0.1:{port}"))
        .env("IOT_MODEL_ID", "int8-under-test")
        .env("ORT_DYLIB_PATH", common::onnxruntime())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");

    let started = Instant::now();
    let health: HealthResponse = loop {
        if let Ok(response) = client.get(format!("{base}/healthz")).send().await {
            break response.json().await.expect("health JSON");
        }
        if let Some(status) = child.try_wait().expect("child status") {
            panic!("infer-service exited early with {status}");
        }
        assert!(started.elapsed() < Duration::from_secs(60), "infer-service did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health.model_id, "int8-under-test");

    let image = encode_base64(common::png_bytes(&common::cifar_record(4).1));
    let answer: LegacyInferResponse =
        client.post(&base).json(&json!({"image": image})).send().await.expect("POST /").json().await.expect("JSON");
    assert_eq!(answer.inferred, "frog");

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("child status") {
            break status;
        }
        assert!(Instant::now() < deadline, "infer-service still running 20 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut stderr).expect("stderr");
    assert!(status.success(), "exit {status}\n{stderr}");
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
}
