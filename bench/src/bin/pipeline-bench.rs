use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = iot_bench::pipeline::BenchArgs::parse();
    iot_ingest::cli::run_service(|shutdown| iot_bench::pipeline::run(args, shutdown))
}
