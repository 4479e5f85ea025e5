//! Load test of the inference service next to a plain Python onnxruntime loop.
//!
//! Sends single-image `POST /v1/infer` requests (PNG-encoded CIFAR-10 test records) over
//! loopback at each concurrency level, then runs infer_service/bench/python_baseline.py on the
//! same model, images and batch size, and prints images/s, latency percentiles and the ratio.
//!
//! Without `--url` it starts the service in this process (same model, `--max-batch`).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use image::{ImageEncoder, RgbImage};
use indicatif::{ProgressBar, ProgressStyle};
use iot_infer_service::api::{encode_base64, HealthResponse, InferRequest, InferResponse};
use iot_infer_service::model::{Classifier, SessionOptions};
use iot_infer_service::preprocess::{Preprocessor, DEFAULT_RESIZE_RATIO};
use iot_infer_service::{RunningService, ServiceConfig};

const CIFAR_RECORD_BYTES: usize = 3073;

#[derive(Debug, Parser)]
#[command(name = "infer-bench", about = "Throughput and latency of infer_service against plain Python onnxruntime")]
struct Args {
    /// A running service; without it, one is started in this process.
    #[arg(long)]
    url: Option<String>,
    /// Folder with the test assets [default: $IOT_ASSETS_DIR, else ../shared/assets above the repository].
    #[arg(long, env = "IOT_ASSETS_DIR")]
    assets: Option<PathBuf>,
    /// Model (for the in-process service and the Python baseline) [default: ASSETS/mobilenetv2-12-int8.onnx].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Class names [default: ASSETS/imagenet_classes.txt].
    #[arg(long)]
    classes: Option<PathBuf>,
    /// CIFAR-10 binary test batch the images come from [default: ASSETS/cifar10_test_batch.bin].
    #[arg(long)]
    cifar: Option<PathBuf>,
    /// Distinct images (the first CIFAR-10 test records), cycled through.
    #[arg(long, default_value_t = 256)]
    images: usize,
    /// Requests (one image each) per concurrency level.
    #[arg(long, default_value_t = 640)]
    requests: usize,
    /// Concurrency levels, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 8, 32])]
    concurrency: Vec<usize>,
    /// Batch size: --max-batch of the in-process service and the Python baseline's batch.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// --max-wait-ms of the in-process service.
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    /// Python with onnxruntime, numpy and pillow [default: .cache/venv/bin/python of the workspace].
    #[arg(long, env = "IOT_PYTHON")]
    python: Option<PathBuf>,
    /// Skip the Python baseline.
    #[arg(long)]
    no_python: bool,
    /// ONNX Runtime intra-op threads of the in-process service and the Python baseline [default: ONNX Runtime's].
    #[arg(long)]
    intra_threads: Option<usize>,
    /// Measurement rounds (each: every concurrency level, then the Python baseline); medians are printed.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

struct Level {
    concurrency: usize,
    images_per_s: f64,
    p50: Duration,
    p99: Duration,
    mean_batch: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    iot_infer_service::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

fn workspace_root() -> PathBuf {
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf);
    std::env::current_dir()
        .ok()
        .and_then(|cwd| {
            cwd.ancestors()
                .find(|dir| dir.join("infer_service/bench/python_baseline.py").is_file())
                .map(Path::to_path_buf)
        })
        .or(compiled)
        .unwrap_or_else(|| PathBuf::from("."))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let root = workspace_root();
    let assets = args.assets.clone().unwrap_or_else(|| root.join("../shared/assets"));
    let model = args.model.clone().unwrap_or_else(|| assets.join("mobilenetv2-12-int8.onnx"));
    let classes = args.classes.clone().unwrap_or_else(|| assets.join("imagenet_classes.txt"));
    let cifar = args.cifar.clone().unwrap_or_else(|| assets.join("cifar10_test_batch.bin"));
    if args.images == 0 || args.requests == 0 || args.concurrency.contains(&0) {
        bail!("--images, --requests and every --concurrency level must be positive");
    }
    let bodies = Arc::new(request_bodies(&cifar, args.images)?);

    let mut local = None;
    let url = match &args.url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let mut config = ServiceConfig::new(&model, &classes);
            config.max_batch = args.max_batch;
            config.max_wait = Duration::from_millis(args.max_wait_ms);
            config.intra_threads = args.intra_threads;
            let service = RunningService::start(config, "127.0.0.1:0".parse()?).await?;
            let url = service.url();
            local = Some(service);
            url
        }
    };
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).timeout(Duration::from_secs(120)).build()?;
    let health: HealthResponse = client
        .get(format!("{url}/healthz"))
        .send()
        .await
        .with_context(|| format!("no service at {url}"))?
        .error_for_status()?
        .json()
        .await?;
    println!(
        "service {url}, model {}, {} distinct images, {} requests per level",
        health.model_id, args.images, args.requests
    );

    // Warm-up: connections, allocator, first ONNX Runtime runs.
    let warmup = args.concurrency.iter().copied().max().unwrap_or(1);
    measure(&client, &url, &bodies, warmup, warmup * 4, None).await?;

    let python = (!args.no_python).then(|| args.python.clone().unwrap_or_else(|| root.join(".cache/venv/bin/python")));
    let mut rounds: Vec<Vec<Level>> = Vec::new();
    let mut baselines: Vec<Baseline> = Vec::new();
    let mut engines: Vec<f64> = Vec::new();
    let bodies_images = cifar_pngs(&cifar, args.images)?;
    for round in 1..=args.rounds.max(1) {
        let mut levels = Vec::new();
        for &concurrency in &args.concurrency {
            levels.push(measure_level(&client, &url, &bodies, concurrency, args.requests, round).await?);
        }
        print_levels(&format!("round {round}"), &levels, args.requests);
        rounds.push(levels);
        let engine = rust_run_only(&model, &bodies_images, &args)?;
        println!(
            "round {round}: the service's engine alone (Rust ort, batch {}): {engine:.1} images/s run only",
            args.max_batch
        );
        engines.push(engine);
        if let Some(python) = &python {
            // The service is idle meanwhile (its ONNX Runtime threads sleep).
            let baseline = python_baseline(python, &root, &model, &cifar, &args)?;
            println!(
                "round {round}: python onnxruntime {} (batch {}): {:.1} images/s end to end, {:.1} images/s run only",
                baseline.version, args.max_batch, baseline.end_to_end, baseline.run_only
            );
            baselines.push(baseline);
        }
    }
    if let Some(service) = local.take() {
        service.shutdown().await?;
    }

    let medians: Vec<Level> = (0..args.concurrency.len())
        .map(|i| Level {
            concurrency: args.concurrency[i],
            images_per_s: median(rounds.iter().map(|r| r[i].images_per_s).collect()),
            p50: Duration::from_secs_f64(median(rounds.iter().map(|r| r[i].p50.as_secs_f64()).collect())),
            p99: Duration::from_secs_f64(median(rounds.iter().map(|r| r[i].p99.as_secs_f64()).collect())),
            mean_batch: rounds.iter().map(|r| r[i].mean_batch).collect::<Option<Vec<f64>>>().map(median),
        })
        .collect();
    println!();
    print_levels(&format!("service, median of {} rounds", rounds.len()), &medians, args.requests);
    println!(
        "the service's engine alone (Rust ort, batch {}), median of {} rounds: {:.1} images/s run only",
        args.max_batch,
        engines.len(),
        median(engines.clone())
    );
    if !baselines.is_empty() {
        let end_to_end = median(baselines.iter().map(|b| b.end_to_end).collect());
        let run_only = median(baselines.iter().map(|b| b.run_only).collect());
        println!(
            "python onnxruntime {} (batch {}), median of {} rounds: {end_to_end:.1} images/s end to end \
             (PNG decode + preprocessing + run), {run_only:.1} images/s run only",
            baselines[0].version,
            args.max_batch,
            baselines.len()
        );
        // Ratios within each round (measured minutes apart at most), then their median: steadier
        // than a ratio of medians on a machine whose load changes.
        let top = args.concurrency.iter().enumerate().max_by_key(|(_, c)| **c).map(|(i, c)| (i, *c));
        if let Some((index, concurrency)) = top {
            let ratios = |pick: fn(&Baseline) -> f64| -> Vec<f64> {
                rounds.iter().zip(&baselines).map(|(levels, b)| 100.0 * levels[index].images_per_s / pick(b)).collect()
            };
            let (vs_end_to_end, vs_run_only) = (ratios(|b| b.end_to_end), ratios(|b| b.run_only));
            let list = |values: &[f64]| values.iter().map(|v| format!("{v:.0}%")).collect::<Vec<_>>().join(", ");
            println!(
                "service at concurrency {concurrency} vs Python, per round: {} of end to end, {} of run only",
                list(&vs_end_to_end),
                list(&vs_run_only)
            );
            println!(
                "service at concurrency {concurrency}, median of the per-round ratios: {:.1}% of Python end to end, \
                 {:.1}% of Python run only (bar: 95%)",
                median(vs_end_to_end),
                median(vs_run_only)
            );
        }
    }
    Ok(())
}

async fn measure_level(
    client: &reqwest::Client,
    url: &str,
    bodies: &Arc<Vec<String>>,
    concurrency: usize,
    requests: usize,
    round: usize,
) -> anyhow::Result<Level> {
    let before = batch_totals(client, url).await;
    let bar = ProgressBar::new(requests as u64).with_style(
        ProgressStyle::with_template("round {prefix} concurrency {msg:>3} [{bar:30}] {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(round.to_string());
    bar.set_message(concurrency.to_string());
    let (elapsed, mut latencies) = measure(client, url, bodies, concurrency, requests, Some(&bar)).await?;
    bar.finish_and_clear();
    let after = batch_totals(client, url).await;
    latencies.sort();
    let mean_batch = match (before, after) {
        (Some((images0, batches0)), Some((images1, batches1))) if batches1 > batches0 => {
            Some((images1 - images0) / (batches1 - batches0))
        }
        _ => None,
    };
    Ok(Level {
        concurrency,
        images_per_s: requests as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        mean_batch,
    })
}

fn print_levels(title: &str, levels: &[Level], requests: usize) {
    println!("{title}");
    println!(
        "{:>11} {:>9} {:>9} {:>8} {:>8} {:>10}",
        "concurrency", "requests", "images/s", "p50 ms", "p99 ms", "mean batch"
    );
    for level in levels {
        println!(
            "{:>11} {:>9} {:>9.1} {:>8.1} {:>8.1} {:>10}",
            level.concurrency,
            requests,
            level.images_per_s,
            level.p50.as_secs_f64() * 1e3,
            level.p99.as_secs_f64() * 1e3,
            level.mean_batch.map_or_else(|| "-".into(), |b| format!("{b:.1}"))
        );
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// PNG encodings of the first `count` CIFAR-10 test records.
fn cifar_pngs(cifar: &Path, count: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut file = std::fs::File::open(cifar).with_context(|| format!("cannot open {}", cifar.display()))?;
    let mut pngs = Vec::with_capacity(count);
    let mut record = vec![0u8; CIFAR_RECORD_BYTES];
    file.seek(SeekFrom::Start(0))?;
    for index in 0..count {
        file.read_exact(&mut record).with_context(|| format!("{} has no record {index}", cifar.display()))?;
        let planes = &record[1..];
        let image = RgbImage::from_fn(32, 32, |x, y| {
            let i = (y * 32 + x) as usize;
            image::Rgb([planes[i], planes[1024 + i], planes[2048 + i]])
        });
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png).write_image(
            image.as_raw(),
            32,
            32,
            image::ExtendedColorType::Rgb8,
        )?;
        pngs.push(png);
    }
    Ok(pngs)
}

/// JSON bodies `{"images": [<one PNG>]}` for the first `count` CIFAR-10 test records.
fn request_bodies(cifar: &Path, count: usize) -> anyhow::Result<Vec<String>> {
    cifar_pngs(cifar, count)?
        .into_iter()
        .map(|png| Ok(serde_json::to_string(&InferRequest { images: vec![encode_base64(png)] })?))
        .collect()
}

/// The service's own engine without HTTP: the same preprocessing done beforehand, then
/// `--requests` images through one ort session in batches of `--max-batch`.
fn rust_run_only(model: &Path, pngs: &[Vec<u8>], args: &Args) -> anyhow::Result<f64> {
    let library = iot_infer_service::runtime::locate_onnxruntime(None)?;
    let env = iot_infer_service::runtime::environment(&library)?;
    let options = SessionOptions { intra_threads: args.intra_threads };
    let mut classifier = Classifier::load(&env, model, &options)?;
    let spec = classifier.spec().clone();
    let preprocessor = Preprocessor::new(spec.height as u32, spec.width as u32, DEFAULT_RESIZE_RATIO, u64::MAX);
    let tensors = pngs.iter().map(|png| preprocessor.prepare(png)).collect::<Result<Vec<_>, _>>()?;
    let batch = classifier.batch_limit(args.max_batch);
    let order: Vec<usize> = (0..args.requests).map(|i| i % tensors.len()).collect();
    let batches: Vec<Vec<f32>> =
        order.chunks(batch).map(|chunk| chunk.iter().flat_map(|&i| tensors[i].iter().copied()).collect()).collect();
    classifier.classify(&batches[0], order.len().min(batch))?; // warm-up
    let started = Instant::now();
    for (chunk, pixels) in order.chunks(batch).zip(&batches) {
        classifier.classify(pixels, chunk.len())?;
    }
    Ok(args.requests as f64 / started.elapsed().as_secs_f64())
}

/// `total` requests from `concurrency` workers; returns the wall time and each request's latency.
async fn measure(
    client: &reqwest::Client,
    url: &str,
    bodies: &Arc<Vec<String>>,
    concurrency: usize,
    total: usize,
    bar: Option<&ProgressBar>,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let endpoint = format!("{url}/v1/infer");
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, endpoint, bodies, next) =
                (client.clone(), endpoint.clone(), Arc::clone(bodies), Arc::clone(&next));
            let bar = bar.cloned();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= total {
                        return Ok::<_, anyhow::Error>(latencies);
                    }
                    let body = bodies[index % bodies.len()].clone();
                    let sent = Instant::now();
                    let response = client
                        .post(&endpoint)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await?
                        .error_for_status()?;
                    let answer: InferResponse = response.json().await?;
                    latencies.push(sent.elapsed());
                    match answer.results.as_slice() {
                        [outcome] => {
                            if let Some(failure) = outcome.failure() {
                                bail!("image not classified ({}): {}", failure.code.as_str(), failure.error);
                            }
                        }
                        results => bail!("expected one result, got {}", results.len()),
                    }
                    if let Some(bar) = &bar {
                        bar.inc(1);
                    }
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(total);
    for worker in workers {
        latencies.extend(worker.await??);
    }
    Ok((started.elapsed(), latencies))
}

fn percentile(sorted: &[Duration], quantile: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * quantile).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `(images, batches)` so far, from the service's `infer_batch_size` histogram.
async fn batch_totals(client: &reqwest::Client, url: &str) -> Option<(f64, f64)> {
    let text = client.get(format!("{url}/metrics")).send().await.ok()?.text().await.ok()?;
    let value = |name: &str| {
        text.lines().find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse::<f64>().ok()))
    };
    Some((value("infer_batch_size_sum ")?, value("infer_batch_size_count ")?))
}

struct Baseline {
    version: String,
    end_to_end: f64,
    run_only: f64,
}

fn python_baseline(python: &Path, root: &Path, model: &Path, cifar: &Path, args: &Args) -> anyhow::Result<Baseline> {
    let script = root.join("infer_service/bench/python_baseline.py");
    eprintln!("running {} ...", script.display());
    let output = Command::new(python)
        .arg(&script)
        .arg("--model")
        .arg(model)
        .arg("--cifar")
        .arg(cifar)
        .arg("--images")
        .arg(args.images.to_string())
        .arg("--total")
        .arg(args.requests.to_string())
        .arg("--batch")
        .arg(args.max_batch.to_string())
        .args(args.intra_threads.map(|n| vec!["--threads".to_string(), n.to_string()]).unwrap_or_default())
        .output()
        .with_context(|| format!("cannot run {} (set --python, or run scripts/setup)", python.display()))?;
    if !output.status.success() {
        bail!("python baseline failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("python baseline printed no JSON")?;
    let number = |key: &str| report[key].as_f64().with_context(|| format!("python baseline lacks {key}"));
    Ok(Baseline {
        version: report["onnxruntime"].as_str().unwrap_or("?").to_owned(),
        end_to_end: number("end_to_end_images_per_s")?,
        run_only: number("run_only_images_per_s")?,
    })
}
