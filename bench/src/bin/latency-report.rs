use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = iot_bench::latency_report::ReportArgs::parse();
    iot_ingest::cli::report_outcome(iot_bench::latency_report::run(&args).map(drop))
}
