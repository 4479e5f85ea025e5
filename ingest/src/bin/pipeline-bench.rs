use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = iot_ingest::bench::BenchArgs::parse();
    iot_ingest::cli::run_service(|shutdown| iot_ingest::bench::run(args, shutdown))
}
