use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = iot_ingest::consumer::infer::InferConsumerArgs::parse();
    iot_ingest::cli::run_service(|shutdown| {
        iot_ingest::consumer::infer::run(
            args,
            iot_ingest::metrics::ConsumerMetrics::new(iot_ingest::metrics::Role::Infer),
            shutdown,
        )
    })
}
