use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = iot_dataflow::cli::Cli::parse();
    match iot_dataflow::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
