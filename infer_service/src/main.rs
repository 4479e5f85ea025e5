use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = infer_service::Args::parse();
    match infer_service::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("infer_service: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
