//! MongoDB calls bounded in time.
//!
//! A server that is down fails fast (connect and server-selection timeouts), but one that is up
//! and stalled (frozen, overloaded, stuck on a lock) accepts the connection and never answers,
//! and the driver's blocking API would wait forever: it has no socket timeout (the Rust driver
//! does not support `socketTimeoutMS`). So every call here runs on the driver's async API and is
//! dropped once it has waited `limit`; dropping closes its connection, and nothing is left
//! waiting. Queries also carry `maxTimeMS` (see the callers), so the server gives up too.

use std::future::{Future, IntoFuture};
use std::sync::LazyLock;
use std::time::Duration;

use bson::{RawDocument, RawDocumentBuf};
use mongodb::Cursor;

/// One runtime for the whole process: the driver's background tasks (monitors, pools) run on
/// its thread, and every worker thread drives its own calls with `block_on`.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("mongodb-io")
        .enable_all()
        .build()
        .expect("cannot start the MongoDB I/O runtime")
});

/// A call that got no answer within its limit.
#[derive(Debug)]
pub struct Stalled {
    pub waited: Duration,
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no answer within {}s (--mongo-op-timeout): the server accepts connections but is stalled",
            self.waited.as_secs_f64()
        )
    }
}

impl std::error::Error for Stalled {}

/// True when `err`, or an error it wraps, is a [`Stalled`] call.
pub fn is_stall(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<Stalled>())
}

/// Runs code that builds a client (which spawns the driver's background tasks) on the runtime.
pub fn enter<T>(build: impl FnOnce() -> T) -> T {
    let _entered = RUNTIME.enter();
    build()
}

/// One round trip: its answer, its error, or [`Stalled`] after `limit`.
pub fn call<T>(limit: Duration, call: impl IntoFuture<Output = mongodb::error::Result<T>>) -> anyhow::Result<T> {
    RUNTIME.block_on(within(limit, call.into_future()))
}

/// Runs a query and calls `each` for every document it returns; the query and every further
/// batch (`getMore`) must each answer within `limit`.
pub fn for_each(
    limit: Duration,
    query: impl IntoFuture<Output = mongodb::error::Result<Cursor<RawDocumentBuf>>>,
    mut each: impl FnMut(&RawDocument),
) -> anyhow::Result<()> {
    RUNTIME.block_on(async {
        let mut cursor = within(limit, query.into_future()).await?;
        // A buffered document is ready at once, so only a real round trip can time out.
        while within(limit, cursor.advance()).await? {
            each(cursor.current());
        }
        Ok(())
    })
}

async fn within<T>(limit: Duration, call: impl Future<Output = mongodb::error::Result<T>>) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(answer) => Ok(answer?),
        Err(_elapsed) => Err(Stalled { waited: limit }.into()),
    }
}
