//! `dataflow count --follow --serve`: the live page in a real headless browser (Debian's chromium
//! driven through its chromedriver), and the API and metrics beside it. A write through the
//! write contract shows on the open page, without a reload, within 2 s, beside the firing alerts; the test saves a
//! screenshot of the page (`target/live-page.png`; with `IOT_UPDATE_SCREENSHOT=1` also the one
//! docs/monitoring.md shows).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder};
use iot_bench::testkit::{free_port, port_open, workspace_root};
use iot_schema::write;

const PRODUCER: &str = "cam \"7\", <north>";

/// chromedriver on a free port, and the port.
fn chromedriver() -> (ChildGuard, u16) {
    let port = free_port();
    let binary = which("chromedriver");
    let driver = ChildGuard::spawn(
        Command::new(binary).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()),
    );
    let started = Instant::now();
    while !port_open(port) {
        assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (driver, port)
}

/// A program the project's setup installs (`scripts/setup apt`), or a failure that says so.
fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(program)).find(|path| path.is_file()))
        .unwrap_or_else(|| {
            panic!("{program} is not installed; run scripts/setup (it installs chromium and its driver)")
        })
}

async fn browser(driver_port: u16) -> Client {
    let mut capabilities = Capabilities::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": which("chromium"),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1440,900"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let url = format!("http://127.0.0.1:{driver_port}");
    ClientBuilder::new(connector).capabilities(capabilities).connect(&url).await.expect("a chromium session")
}

/// What the page's producers table says about `producer`: its error count, or `None` without a row.
async fn errors_on_page(page: &Client, producer: &str) -> Option<u64> {
    let script = "const row = [...document.querySelectorAll('#producers tbody tr')]
                    .find((tr) => tr.dataset.producer === arguments[0]);
                  return row ? row.querySelector('td.errors').textContent : null;";
    let value = page.execute(script, vec![producer.into()]).await.unwrap();
    value.as_str().and_then(|text| text.parse().ok())
}

/// What the producer's alert cell says.
async fn alert_on_page(page: &Client, producer: &str) -> Option<String> {
    let script = "const row = [...document.querySelectorAll('#producers tbody tr')]
                    .find((tr) => tr.dataset.producer === arguments[0]);
                  return row ? row.querySelector('td.alert').textContent : null;";
    let value = page.execute(script, vec![producer.into()]).await.unwrap();
    value.as_str().map(str::to_owned)
}

async fn wait_until(limit: Duration, mut ready: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !ready().await {
        assert!(started.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    started.elapsed()
}

async fn http_get(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

#[test]
fn a_write_shows_on_the_open_page_within_two_seconds() {
    let db = TestDb::new(&mongo_uri(), "live_page");
    let database = db.database();
    // Records of several producers, inferred an hour apart, some of them wrong.
    let now = bson::DateTime::now().timestamp_millis();
    let mut written = 0;
    for (n, producer) in [PRODUCER, "cam-1", "cam-2", "idle"].iter().enumerate() {
        for i in 0..40 {
            let id = format!("{producer}/{i}");
            let truth = ["cat", "dog", "bird"][i % 3];
            let msg = message(&id, producer, truth);
            apply(&database, write::store_metadata(&msg, bson::DateTime::from_millis(now)));
            if *producer != "idle" {
                let label = if i % (n + 2) == 0 { "ship" } else { truth };
                let at = bson::DateTime::from_millis(now - (i as i64 % 4) * 3_600_000);
                apply(&database, write::store_inference(&msg, label, "model-v2", at));
            }
            written += 1;
        }
    }
    assert_eq!(written, 160);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let uri = mongo_uri();
    let log = dir.path().join("follow.log");
    let brokers = kafka_brokers();
    let mut args = vec!["--mongo-uri", &uri, "--db", &db.name, "-w", "2", "--serve", &address];
    // In the latest window all of PRODUCER's and cam-2's records are wrong, 4 of cam-1's 10.
    args.extend([
        "--window",
        "1h",
        "--reference",
        "2h",
        "--alert",
        "error_rate > 0.45 min 10",
        "--alert-brokers",
        &brokers,
    ]);
    let _follower = start_follower_logged(&args, &dir.path().join("follow.csv"), &log);
    wait_for_log(&log, "following changes", Duration::from_secs(60));

    // The driver's calls are async; MongoDB's here are blocking, so they stay outside the runtime.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_driver, driver_port) = chromedriver();
    let expected_before = errors_of_db(&database, PRODUCER);
    let page = runtime.block_on(open_page(driver_port, &address, expected_before));

    // One correct record of the producer gets a wrong label, through the write contract.
    let msg = message(&format!("{PRODUCER}/1"), PRODUCER, "dog");
    apply(&database, write::store_inference(&msg, "ship", "model-v2", bson::DateTime::now()));
    runtime.block_on(see_the_write(page, &address, expected_before + 1));
}

/// Opens the live page and waits until it shows the producer's errors as they are.
async fn open_page(driver_port: u16, address: &str, errors: u64) -> Client {
    let page = browser(driver_port).await;
    page.goto(&format!("http://{address}/")).await.unwrap();
    wait_until(Duration::from_secs(10), async || errors_on_page(&page, PRODUCER).await == Some(errors)).await;
    for (producer, alert) in [(PRODUCER, "firing"), ("cam-2", "firing"), ("cam-1", "–")] {
        assert_eq!(alert_on_page(&page, producer).await.as_deref(), Some(alert), "{producer}");
    }
    let firing = page.execute("return document.getElementById('total-alerts').textContent;", vec![]).await.unwrap();
    assert_eq!(firing, serde_json::Value::String("2".into()));
    // A marker that a reload would lose.
    page.execute("window.notReloaded = true; return true;", vec![]).await.unwrap();
    page
}

/// The page shows the new count within 2 s without a reload; the API and metrics say the same.
async fn see_the_write(page: Client, address: &str, errors: u64) {
    let took = wait_until(Duration::from_secs(2), async || errors_on_page(&page, PRODUCER).await == Some(errors)).await;
    eprintln!("the write showed on the page after {took:?}");
    let kept = page.execute("return window.notReloaded === true;", vec![]).await.unwrap();
    assert_eq!(kept, serde_json::Value::Bool(true), "the page updated in place, without a reload");

    let producers = http_get(&format!("http://{address}/api/producers")).await;
    assert!(producers.contains(&format!("\"errors\":{errors}")), "{producers}");
    let metrics = http_get(&format!("http://{address}/metrics")).await;
    let series = format!("iot_producer_errors{{producer=\"cam \\\"7\\\", <north>\"}} {errors}");
    assert!(metrics.contains(&series), "{series} not in\n{metrics}");

    let screenshot = page.screenshot().await.unwrap();
    std::fs::write(workspace_root().join("target/live-page.png"), &screenshot).unwrap();
    if std::env::var_os("IOT_UPDATE_SCREENSHOT").is_some() {
        std::fs::write(workspace_root().join("docs/img/live-page.png"), &screenshot).unwrap();
    }
    page.close().await.unwrap();
}

/// The producer's errors as a batch count of the database gives them.
fn errors_of_db(database: &mongodb::sync::Database, producer: &str) -> u64 {
    let collection = database.collection::<bson::Document>("inferences");
    collection
        .find(bson::doc! { "ProducerID": producer })
        .run()
        .unwrap()
        .map(|document| document.unwrap())
        .filter(|d| matches!((d.get_str("GroundTruth"), d.get_str("Inferred")), (Ok(t), Ok(i)) if t != i))
        .count() as u64
}
