//! Load test of the inference service next to a plain Python onnxruntime loop.
//!
//! Sends single-image `POST /v1/infer` requests (PNG-encoded CIFAR-10 test records) over
//! loopback at each concurrency level, then runs bench/reference/python_baseline.py on the
//! same model, images and batch size, and prints images/s, latency percentiles and the ratio.
//!
//! Without `--url` it starts the `infer-service` binary (same model, `--max-batch`). It speaks
//! to the service only through the wire types of `iot_schema::infer`, as any client does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use iot_bench::stats::percentile;
use iot_bench::testkit::{free_port, sample, ChildGuard};
use iot_ingest::images::cifar::CifarBatch;
use iot_ingest::images::encode::{Encoding, Format};
use iot_schema::infer::{encode_base64, HealthResponse, InferRequest, InferResponse};

/// The service's binary, looked for next to this one unless `--service-bin` names it.
const SERVICE_BINARY: &str = "infer-service";

#[derive(Debug, clap::Parser)]
#[command(
    name = "infer-bench",
    about = "Throughput and latency of the inference service against plain Python onnxruntime"
)]
struct Args {
    /// A running service; without it, the `infer-service` binary is started.
    #[arg(long)]
    url: Option<String>,
    /// The service binary to start without `--url` [default: infer-service next to this binary].
    #[arg(long)]
    service_bin: Option<PathBuf>,
    /// Folder with the test assets [default: $IOT_ASSETS_DIR, else ../shared/assets above the repository].
    #[arg(long, env = "IOT_ASSETS_DIR")]
    assets: Option<PathBuf>,
    /// Model (for the started service and the Python baseline) [default: ASSETS/mobilenetv2-12-int8.onnx].
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
    /// Batch size: --max-batch of the started service and the Python baseline's batch.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// --max-wait-ms of the started service.
    #[arg(long, default_value_t = 5)]
    max_wait_ms: u64,
    /// Python with onnxruntime, numpy and pillow [default: .cache/venv/bin/python of the workspace].
    #[arg(long, env = "IOT_PYTHON")]
    python: Option<PathBuf>,
    /// Skip the Python baseline.
    #[arg(long)]
    no_python: bool,
    /// ONNX Runtime intra-op threads of the started service and the Python baseline [default: ONNX Runtime's].
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

fn main() -> std::process::ExitCode {
    let args = iot_ingest::cli::parse_args(Args::check);
    iot_ingest::logging::init();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(args)));
    iot_ingest::cli::report_outcome(outcome)
}

impl Args {
    fn check(&self) -> Result<(), String> {
        if self.images == 0 || self.requests == 0 || self.concurrency.contains(&0) {
            return Err("--images, --requests and every --concurrency level must be positive".to_owned());
        }
        Ok(())
    }
}

const PYTHON_BASELINE: &str = "bench/reference/python_baseline.py";

fn workspace_root() -> PathBuf {
    let compiled = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf);
    std::env::current_dir()
        .ok()
        .and_then(|cwd| cwd.ancestors().find(|dir| dir.join(PYTHON_BASELINE).is_file()).map(Path::to_path_buf))
        .or(compiled)
        .unwrap_or_else(|| PathBuf::from("."))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let root = workspace_root();
    let files = Files::of(&args);
    let bodies = Arc::new(request_bodies(&files.cifar, args.images)?);
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).timeout(Duration::from_secs(120)).build()?;
    let (url, local) = match &args.url {
        Some(url) => (url.trim_end_matches('/').to_owned(), None),
        None => {
            let service = StartedService::start(&args, &files.model, &files.classes)?;
            (service.url.clone(), Some(service))
        }
    };
    let health = wait_for_health(&client, &url, local.is_some()).await?;
    println!(
        "service {url}, model {}, {} distinct images, {} requests per level",
        health.model_id, args.images, args.requests
    );
    // Warm-up: connections, allocator, first ONNX Runtime runs.
    let warmup = args.concurrency.iter().copied().max().unwrap_or(1);
    measure(&client, &url, &bodies, warmup, warmup * 4, None).await?;

    let mut rounds: Vec<Vec<Level>> = Vec::new();
    let mut baselines: Vec<Baseline> = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let mut levels = Vec::new();
        for &concurrency in &args.concurrency {
            levels.push(measure_level(&client, &url, &bodies, concurrency, args.requests, round).await?);
        }
        print_levels(&format!("round {round}"), &levels, args.requests);
        rounds.push(levels);
        if let Some(baseline) = python_round(&args, &root, &files, round)? {
            baselines.push(baseline);
        }
    }
    drop(local);
    report_medians(&args, &rounds, &baselines);
    Ok(())
}

/// The model, class names and images the run uses.
struct Files {
    model: PathBuf,
    classes: PathBuf,
    cifar: PathBuf,
}

impl Files {
    fn of(args: &Args) -> Files {
        let assets = args.assets.clone().unwrap_or_else(iot_ingest::assets::default_dir);
        Files {
            model: args.model.clone().unwrap_or_else(|| assets.join("mobilenetv2-12-int8.onnx")),
            classes: args.classes.clone().unwrap_or_else(|| assets.join("imagenet_classes.txt")),
            cifar: args.cifar.clone().unwrap_or_else(|| assets.join(iot_ingest::assets::CIFAR_BATCH_FILE)),
        }
    }
}

/// The Python baseline of one round, unless `--no-python`. The service is idle meanwhile (its
/// ONNX Runtime threads sleep).
fn python_round(args: &Args, root: &Path, files: &Files, round: usize) -> anyhow::Result<Option<Baseline>> {
    if args.no_python {
        return Ok(None);
    }
    let python = args.python.clone().unwrap_or_else(|| root.join(".cache/venv/bin/python"));
    let baseline = python_baseline(&python, root, &files.model, &files.cifar, args)?;
    println!(
        "round {round}: python onnxruntime {} (batch {}): {:.1} images/s end to end, {:.1} images/s run only",
        baseline.version, args.max_batch, baseline.end_to_end, baseline.run_only
    );
    Ok(Some(baseline))
}

/// The median of every level over the rounds, and the service against the Python baseline.
fn report_medians(args: &Args, rounds: &[Vec<Level>], baselines: &[Baseline]) {
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
    if baselines.is_empty() {
        return;
    }
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
    let Some((index, concurrency)) = args.concurrency.iter().enumerate().max_by_key(|(_, c)| **c).map(|(i, c)| (i, *c))
    else {
        return;
    };
    let ratios = |pick: fn(&Baseline) -> f64| -> Vec<f64> {
        rounds.iter().zip(baselines).map(|(levels, b)| 100.0 * levels[index].images_per_s / pick(b)).collect()
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
        p50: percentile(&latencies, 50.0).unwrap_or_default(),
        p99: percentile(&latencies, 99.0).unwrap_or_default(),
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
    let bytes = std::fs::read(cifar).with_context(|| format!("cannot read {}", cifar.display()))?;
    let batch = CifarBatch::from_bytes(bytes, iot_bench::LABELS.map(str::to_owned).to_vec())
        .with_context(|| format!("{} is not a CIFAR-10 binary batch", cifar.display()))?;
    if batch.len() < count {
        bail!("{} has {} records, fewer than --images {count}", cifar.display(), batch.len());
    }
    let png = Encoding { format: Format::Png, jpeg_quality: 100 };
    (0..count).map(|index| png.encode(&batch.image(index))).collect()
}

/// JSON bodies `{"images": [<one PNG>]}` for the first `count` CIFAR-10 test records.
fn request_bodies(cifar: &Path, count: usize) -> anyhow::Result<Vec<String>> {
    cifar_pngs(cifar, count)?
        .into_iter()
        .map(|png| Ok(serde_json::to_string(&InferRequest { images: vec![encode_base64(png)] })?))
        .collect()
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

/// `(images, batches)` so far, from the service's `infer_batch_size` histogram.
async fn batch_totals(client: &reqwest::Client, url: &str) -> Option<(f64, f64)> {
    let text = client.get(format!("{url}/metrics")).send().await.ok()?.text().await.ok()?;
    Some((sample(&text, "infer_batch_size_sum")?, sample(&text, "infer_batch_size_count")?))
}

struct Baseline {
    version: String,
    end_to_end: f64,
    run_only: f64,
}

fn python_baseline(python: &Path, root: &Path, model: &Path, cifar: &Path, args: &Args) -> anyhow::Result<Baseline> {
    let script = root.join(PYTHON_BASELINE);
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

/// The `infer-service` binary started for the run, on a free loopback port; killed on drop.
struct StartedService {
    _child: ChildGuard,
    url: String,
}

impl StartedService {
    fn start(args: &Args, model: &Path, classes: &Path) -> anyhow::Result<StartedService> {
        let binary = match &args.service_bin {
            Some(binary) => binary.clone(),
            None => std::env::current_exe()?.with_file_name(SERVICE_BINARY),
        };
        // The port is free now; the service binds it a moment later.
        let port = free_port();
        let mut command = Command::new(&binary);
        command
            .arg("--model")
            .arg(model)
            .arg("--classes")
            .arg(classes)
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg(format!("--max-batch={}", args.max_batch))
            .arg(format!("--max-wait-ms={}", args.max_wait_ms))
            .args(args.intra_threads.map(|n| format!("--intra-threads={n}")));
        let child = command.spawn().with_context(|| {
            format!(
                "cannot start {} (build it with `cargo build --release --workspace`, or pass --service-bin or --url)",
                binary.display()
            )
        })?;
        Ok(StartedService { _child: ChildGuard::new(child), url: format!("http://127.0.0.1:{port}") })
    }
}

/// The service's health answer; a service this run started gets a minute to load its model.
async fn wait_for_health(client: &reqwest::Client, url: &str, just_started: bool) -> anyhow::Result<HealthResponse> {
    let deadline = Instant::now() + Duration::from_secs(if just_started { 60 } else { 0 });
    loop {
        let answer = client.get(format!("{url}/healthz")).send().await.and_then(|r| r.error_for_status());
        match answer {
            Ok(response) => return Ok(response.json().await?),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(err) => return Err(err).with_context(|| format!("no service at {url}")),
        }
    }
}
