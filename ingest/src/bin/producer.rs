use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = iot_ingest::producer::ProducerArgs::parse();
    iot_ingest::cli::run_service(|shutdown| async move { iot_ingest::producer::run(args, shutdown).await.map(drop) })
}
