fn main() -> std::process::ExitCode {
    let args = iot_ingest::cli::parse_args(iot_ingest::producer::ProducerArgs::check);
    iot_ingest::cli::run_service(|shutdown| async move { iot_ingest::producer::run(args, shutdown).await.map(drop) })
}
