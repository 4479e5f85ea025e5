use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = iot_ingest::report::ReportArgs::parse();
    iot_ingest::cli::report_outcome(iot_ingest::report::run(&args).map(drop))
}
