//! The `latency-report` binary: combines latency logs of several runs into one CSV, prints
//! percentiles, and draws one CDF curve per run into a PNG.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use plotters::prelude::*;

use iot_ingest::latency::{self, LatencyRow};

use crate::stats::percentile;

/// Debian's `fonts-dejavu-core` font, used for the plot's text.
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Combines latency logs (from `infer-consumer --latency-log`) into one CSV and a CDF plot.
#[derive(Clone, Debug, Parser)]
#[command(name = "latency-report", version)]
pub struct ReportArgs {
    /// A run: `LABEL=FILE[,FILE...]`, e.g. `--run "1 producer=lat1.csv"` (repeatable;
    /// semicolon-separated in the environment).
    #[arg(long = "run", env = "IOT_LATENCY_RUNS", value_delimiter = ';', required = true, value_parser = parse_run)]
    pub runs: Vec<RunSpec>,
    /// Combined CSV: `run,ProducerID,ID,SentAt,InferredAt,latency_ms`.
    #[arg(long, env = "IOT_LATENCY_CSV", default_value = "latency_combined.csv", value_name = "FILE")]
    pub output_csv: PathBuf,
    /// The CDF plot (PNG).
    #[arg(long, env = "IOT_LATENCY_PLOT", default_value = "latency_cdf.png", value_name = "FILE")]
    pub plot: PathBuf,
    /// TrueType font for the plot's text.
    #[arg(long, env = "IOT_PLOT_FONT", default_value = DEFAULT_FONT, value_name = "FILE")]
    pub font: PathBuf,
    /// Plot title.
    #[arg(long, env = "IOT_PLOT_TITLE", default_value = "End-to-end latency (producer send to inference)")]
    pub title: String,
    /// Plot size in pixels, WIDTHxHEIGHT.
    #[arg(long, env = "IOT_PLOT_SIZE", default_value = "1000x650", value_parser = parse_size)]
    pub size: (u32, u32),
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunSpec {
    pub label: String,
    pub files: Vec<PathBuf>,
}

pub fn parse_run(text: &str) -> Result<RunSpec, String> {
    let (label, files) = text.split_once('=').ok_or_else(|| format!("expected LABEL=FILE[,FILE...], got {text:?}"))?;
    let files: Vec<PathBuf> = files.split(',').map(str::trim).filter(|f| !f.is_empty()).map(PathBuf::from).collect();
    if label.trim().is_empty() || files.is_empty() {
        return Err(format!("expected LABEL=FILE[,FILE...], got {text:?}"));
    }
    Ok(RunSpec { label: label.trim().to_owned(), files })
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let parse = |s: &str| s.trim().parse::<u32>().ok().filter(|n| (200..=8000).contains(n));
    match text.split_once(['x', 'X']).map(|(w, h)| (parse(w), parse(h))) {
        Some((Some(w), Some(h))) => Ok((w, h)),
        _ => Err(format!("expected WIDTHxHEIGHT with sides 200..8000, got {text:?}")),
    }
}

/// One run's latencies, one per record (the first inference when a record was inferred twice).
#[derive(Clone, Debug)]
pub struct RunLatencies {
    pub label: String,
    pub rows: Vec<LatencyRow>,
    /// Rows dropped because the record was already there (a redelivery inferred it again).
    pub duplicates: usize,
}

impl RunLatencies {
    pub fn from_rows(label: &str, rows: Vec<LatencyRow>) -> RunLatencies {
        let mut first: HashMap<(String, i64), LatencyRow> = HashMap::with_capacity(rows.len());
        let total = rows.len();
        for row in rows {
            let key = (row.producer_id.clone(), row.id);
            match first.get(&key) {
                Some(kept) if kept.inferred_at_ms <= row.inferred_at_ms => {}
                _ => {
                    first.insert(key, row);
                }
            }
        }
        let mut rows: Vec<LatencyRow> = first.into_values().collect();
        rows.sort_by(|a, b| (a.latency_ms, &a.producer_id, a.id).cmp(&(b.latency_ms, &b.producer_id, b.id)));
        RunLatencies { label: label.to_owned(), duplicates: total - rows.len(), rows }
    }

    /// Latencies in ascending order.
    pub fn sorted_ms(&self) -> Vec<i64> {
        self.rows.iter().map(|r| r.latency_ms).collect()
    }
}

/// The empirical CDF as plot points: for each value, the share of values <= it.
pub fn cdf_points(sorted: &[i64]) -> Vec<(f64, f64)> {
    let n = sorted.len() as f64;
    let mut points: Vec<(f64, f64)> = Vec::with_capacity(sorted.len());
    for (i, value) in sorted.iter().enumerate() {
        let share = (i + 1) as f64 / n;
        match points.last_mut() {
            Some(last) if last.0 == *value as f64 => last.1 = share,
            _ => points.push((*value as f64, share)),
        }
    }
    points
}

pub fn summary_line(run: &RunLatencies) -> String {
    let sorted = run.sorted_ms();
    let p = |q| percentile(&sorted, q).map_or("-".to_owned(), |v| v.to_string());
    let mean = if sorted.is_empty() { 0.0 } else { sorted.iter().sum::<i64>() as f64 / sorted.len() as f64 };
    format!(
        "{:<16} {:>7} {:>9.1} {:>7} {:>7} {:>7} {:>7}",
        run.label,
        sorted.len(),
        mean,
        p(50.0),
        p(90.0),
        p(99.0),
        p(100.0)
    )
}

pub const SUMMARY_HEADER: &str = "run               records   mean_ms  p50_ms  p90_ms  p99_ms  max_ms";

pub fn run(args: &ReportArgs) -> Result<Vec<RunLatencies>> {
    let mut runs = Vec::new();
    for spec in &args.runs {
        let mut rows = Vec::new();
        for file in &spec.files {
            rows.extend(latency::read(file)?);
        }
        if rows.is_empty() {
            bail!("run {:?} has no latency rows in {:?}", spec.label, spec.files);
        }
        runs.push(RunLatencies::from_rows(&spec.label, rows));
    }
    write_combined(&args.output_csv, &runs)?;
    draw_cdf(&args.plot, &runs, &args.font, &args.title, args.size)?;
    println!("{SUMMARY_HEADER}");
    for run in &runs {
        println!("{}", summary_line(run));
        if run.duplicates > 0 {
            println!("  ({} repeated inference(s) ignored: the first one counts)", run.duplicates);
        }
    }
    println!("wrote {} and {}", args.output_csv.display(), args.plot.display());
    Ok(runs)
}

pub fn write_combined(path: &Path, runs: &[RunLatencies]) -> Result<()> {
    let mut csv = csv::Writer::from_path(path).with_context(|| format!("cannot write {}", path.display()))?;
    csv.write_record(["run", "ProducerID", "ID", "SentAt", "InferredAt", "latency_ms"])?;
    for run in runs {
        for row in &run.rows {
            csv.write_record([
                run.label.as_str(),
                &row.producer_id,
                &row.id.to_string(),
                &row.sent_at_ms.to_string(),
                &row.inferred_at_ms.to_string(),
                &row.latency_ms.to_string(),
            ])?;
        }
    }
    csv.flush()?;
    Ok(())
}

/// Loads the font once per process: plotters keeps fonts for the process's lifetime.
fn register_font(path: &Path) -> Result<()> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("cannot read the font {}: {e} (pass --font FILE)", path.display()))?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{} is not a TrueType font", path.display()))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Renders into an RGB buffer and encodes it with the `image` crate (plotters' own encoder
/// would pull in a second version of `image`).
pub fn draw_cdf(
    path: &Path,
    runs: &[RunLatencies],
    font: &Path,
    title: &str,
    (width, height): (u32, u32),
) -> Result<()> {
    register_font(font)?;
    let mut pixels = vec![255u8; (width * height * 3) as usize];
    let max_ms = runs.iter().filter_map(|r| r.rows.last().map(|row| row.latency_ms)).max().unwrap_or(1).max(1);
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .margin_right(40)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..(max_ms as f64 * 1.02), 0f64..1.0)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("latency (ms)")
            .x_label_formatter(&|ms| format!("{ms:.0}"))
            .y_label_formatter(&|share| format!("{share:.1}"))
            .y_desc("share of records")
            .axis_desc_style(("sans-serif", 18))
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_error)?;
        for (n, run) in runs.iter().enumerate() {
            let colour = CURVE_COLOURS[n % CURVE_COLOURS.len()];
            let mut points = cdf_points(&run.sorted_ms());
            // Start each curve on the x axis at its first value, as a step CDF would.
            if let Some(first) = points.first().copied() {
                points.insert(0, (first.0, 0.0));
            }
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(plot_error)?
                .label(format!("{} (n={})", run.label, run.rows.len()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    let image = image::RgbImage::from_raw(width, height, pixels).context("plot buffer has the wrong size")?;
    image.save_with_format(path, image::ImageFormat::Png).with_context(|| format!("cannot write {}", path.display()))
}

/// Distinct, print-safe curve colours (no yellow on white).
const CURVE_COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

fn plot_error<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow::anyhow!("cannot draw the plot: {err:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_specs() {
        assert_eq!(
            parse_run("1 producer=a.csv, b.csv").unwrap(),
            RunSpec { label: "1 producer".into(), files: vec!["a.csv".into(), "b.csv".into()] }
        );
        assert!(parse_run("nofile").is_err());
        assert!(parse_run("=a.csv").is_err());
        assert!(parse_run("x=").is_err());
        assert_eq!(parse_size("800x600"), Ok((800, 600)));
        assert!(parse_size("10x10").is_err());
    }

    #[test]
    fn cdf_merges_equal_values_and_ends_at_one() {
        assert_eq!(cdf_points(&[1, 1, 2, 4]), [(1.0, 0.5), (2.0, 0.75), (4.0, 1.0)]);
    }

    #[test]
    fn the_first_inference_of_a_record_counts() {
        let rows = vec![
            LatencyRow::new("a", 1, 0, 50),
            LatencyRow::new("a", 1, 0, 20),
            LatencyRow::new("a", 2, 0, 30),
            LatencyRow::new("b", 1, 0, 90),
        ];
        let run = RunLatencies::from_rows("r", rows);
        assert_eq!(run.duplicates, 1);
        assert_eq!(run.sorted_ms(), [20, 30, 90]);
    }

    #[test]
    fn writes_a_csv_and_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("lat.csv");
        let rows: Vec<_> = (0..50).map(|i| LatencyRow::new("p", i, 1000, 1000 + 3 * i + 5)).collect();
        iot_ingest::latency::LatencyLog::open(&log).unwrap().append(&rows).unwrap();
        let args = ReportArgs {
            runs: vec![parse_run(&format!("1 producer={}", log.display())).unwrap()],
            output_csv: dir.path().join("all.csv"),
            plot: dir.path().join("cdf.png"),
            font: PathBuf::from(DEFAULT_FONT),
            title: "t".into(),
            size: (400, 300),
        };
        if !args.font.is_file() {
            // Without the font, the report must say which flag fixes it.
            let err = run(&args).unwrap_err().to_string();
            assert!(err.contains("--font"), "{err}");
            return;
        }
        run(&args).unwrap();
        let csv = std::fs::read_to_string(&args.output_csv).unwrap();
        assert_eq!(csv.lines().count(), 51);
        assert!(csv.starts_with("run,ProducerID,ID,SentAt,InferredAt,latency_ms\n1 producer,p,0,1000,1005,5\n"));
        let png = image::open(&args.plot).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), (400, 300));
        // Something other than the white background was drawn.
        assert!(png.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 1000);
    }
}
