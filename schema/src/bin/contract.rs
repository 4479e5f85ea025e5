//! Prints the contract constants as one JSON object, for the checks that are not written in Rust
//! (scripts/check_deploy reads it to compare the Kubernetes manifests with the code). Printing
//! them from the constants themselves means a rename or a reformatting cannot go unnoticed, as it
//! could when the checker read the Rust source with regular expressions.

use std::process::ExitCode;

use iot_schema::{exit, infer, monitor, write};
use serde_json::json;

fn contract() -> serde_json::Value {
    let metrics_only = [infer::ROUTE_METRICS];
    json!({
        "TOPIC_IMAGES": iot_schema::TOPIC_IMAGES,
        "TOPIC_DEAD_LETTERS": iot_schema::TOPIC_DEAD_LETTERS,
        "TOPIC_ALERTS": iot_schema::alert::TOPIC_ALERTS,
        "DEFAULT_DB": iot_schema::DEFAULT_DB,
        "DEFAULT_COLLECTION": iot_schema::DEFAULT_COLLECTION,
        "CHANGE_LOG_SUFFIX": write::CHANGE_LOG_SUFFIX,
        "INDEXED_FIELDS": write::INDEXED_FIELDS,
        "CHANGE_LOG_INDEXED_FIELDS": write::CHANGE_LOG_INDEXED_FIELDS,
        // The HTTP paths each binary serves, by binary name.
        "HTTP_ROUTES": {
            "infer-service": [infer::ROUTE_LEGACY, infer::ROUTE_INFER, infer::ROUTE_HEALTH, infer::ROUTE_METRICS],
            "db-consumer": metrics_only,
            "infer-consumer": metrics_only,
            "dataflow": [monitor::ROUTE_PAGE, monitor::ROUTE_EVENTS, monitor::ROUTE_METRICS, monitor::ROUTE_API_BOARD],
        },
        // What `dataflow count --follow --serve` exports; the Grafana dashboard may use only these.
        "DATAFLOW_METRICS": monitor::METRICS,
        "EXIT_CODES": {
            "FAILED": exit::FAILED,
            "USAGE": exit::USAGE,
            "PEER_TIMEOUT": exit::PEER_TIMEOUT,
            "PEER_LOST": exit::PEER_LOST,
        },
    })
}

fn main() -> ExitCode {
    if std::env::args_os().len() > 1 {
        eprintln!("usage: contract (prints the iot-schema contract constants as JSON; takes no arguments)");
        return ExitCode::from(exit::USAGE);
    }
    println!("{:#}", contract());
    ExitCode::SUCCESS
}
