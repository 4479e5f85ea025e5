//! The MongoDB writer on the real server (`scripts/stack up`): both consumers' upserts of the
//! same records, at the same time, end in one complete document each, and index creation can be
//! repeated. (FerretDB 1.24 as released hangs on concurrent multi-statement updates; this test
//! guards the single-document path that replaced them. `concurrent_updates.rs` tests the server.)

use std::time::Duration;

use bson::doc;
use iot_ingest::args::MongoArgs;
use iot_ingest::store::Store;
use iot_schema::ImageMessage;

async fn store(db: &str) -> Store {
    let uri = std::env::var("IOT_MONGO_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".to_owned());
    let store = Store::open(&MongoArgs {
        mongo_uri: uri.clone(),
        db: db.to_owned(),
        collection: iot_schema::DEFAULT_COLLECTION.to_owned(),
        write_concurrency: 8,
    })
    .await
    .expect("MongoDB client");
    let ping = store.database().run_command(doc! { "ping": 1 }).await;
    assert!(ping.is_ok(), "MongoDB does not answer at {uri} ({:?}): start the stack with scripts/stack up", ping.err());
    store
}

fn message(id: i64) -> ImageMessage {
    ImageMessage {
        id,
        producer_id: format!("cam-{}", id % 3),
        ground_truth: "cat".into(),
        data: String::new(),
        sent_at_ms: Some(1_700_000_000_000 + id),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_consumers_upserting_the_same_records_at_once_end_in_complete_documents() {
    let db = format!("store_test_{}_{}", std::process::id(), iot_ingest::now_ms());
    let (metadata, inference) = (store(&db).await, store(&db).await);
    metadata.ensure_indexes().await.expect("indexes");
    inference.ensure_indexes().await.expect("indexes again (idempotent)");

    let messages: Vec<ImageMessage> = (0..300).map(message).collect();
    let now = bson::DateTime::now();
    let meta_writes: Vec<_> = messages.iter().map(|m| iot_schema::write::store_metadata(m, now)).collect();
    let infer_writes: Vec<_> =
        messages.iter().map(|m| iot_schema::write::store_inference(m, "dog", "model-1", now)).collect();
    // Twice each, overlapping, as redeliveries would.
    let both = async {
        let a = async {
            metadata.upsert_all(&meta_writes).await?;
            metadata.upsert_all(&meta_writes).await
        };
        let b = async {
            inference.upsert_all(&infer_writes).await?;
            inference.upsert_all(&infer_writes).await
        };
        tokio::try_join!(a, b)
    };
    let outcome = tokio::time::timeout(Duration::from_secs(120), both).await;
    let collection = metadata.collection();
    let (total, complete, logged) = match &outcome {
        Ok(Ok(_)) => (
            collection.count_documents(doc! {}).await.expect("count"),
            collection
                .count_documents(
                    doc! { "Inferred": "dog", "StoredAt": { "$exists": true }, "UpdatedAt": { "$exists": true } },
                )
                .await
                .expect("count"),
            // One change-log entry per write; a retried write rewrites its own entry.
            metadata
                .change_log()
                .count_documents(doc! { "Record": { "$exists": true }, "ChangedAt": { "$exists": true } })
                .await
                .expect("count"),
        ),
        _ => (0, 0, 0),
    };
    // Only drop a database the server still answers for.
    if outcome.is_ok() {
        metadata.database().drop().await.expect("drop the test database");
    }
    match outcome {
        Err(_) => {
            panic!("concurrent upserts did not finish within 120 s (a server-side deadlock?)")
        }
        Ok(Err(err)) => panic!("upserts failed: {err:#}"),
        Ok(Ok(_)) => {}
    }
    assert_eq!((total, complete, logged), (300, 300, 600), "documents, complete documents, change-log entries");
}
