use std::process::ExitCode;

use clap::Parser;
use iot_schema::exit;

fn main() -> ExitCode {
    // clap exits with exit::USAGE (2) on bad flags; every flag is validated while parsing.
    let args = iot_infer_service::Args::parse();
    match iot_infer_service::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("infer-service: error: {error:#}");
            ExitCode::from(exit::FAILED)
        }
    }
}
