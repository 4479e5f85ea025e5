//! Wire types of the HTTP API. They are defined once, in `iot_schema::infer`, for the service
//! and its clients alike; this module re-exports them under their historical path.

pub use iot_schema::infer::*;
