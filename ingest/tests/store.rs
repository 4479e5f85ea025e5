//! The MongoDB writer on the real server (`scripts/stack up`): both consumers' upserts of the
//! same records, at the same time, end in one complete document each, a collision inside a bulk
//! command loses none of the other writes, and index creation can be repeated. (FerretDB 1.24 as
//! released hangs on concurrent multi-statement updates; `concurrent_updates.rs` tests the
//! server's fix that the bulk commands rely on.)

mod common;

use std::time::Duration;

use bson::doc;
use common::{shared_store, test_message as message, DropDb};
use iot_bench::testkit::unique_name;
use iot_ingest::store::Applied;
use iot_schema::ImageMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_consumers_upserting_the_same_records_at_once_end_in_complete_documents() {
    let db = unique_name("store_test");
    let (metadata, inference) = (shared_store(&db).await, shared_store(&db).await);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_is_stored_again_and_other_content_under_the_same_id_is_a_collision() {
    let db = unique_name("store_collide");
    let store = shared_store(&db).await;
    let _drop = DropDb(store.clone());
    let now = bson::DateTime::now();
    let first = message(7);
    let mut second = message(7);
    second.ground_truth = "ship".into();
    second.sent_at_ms = Some(1_800_000_000_000);
    let meta = |m: &ImageMessage| iot_schema::write::store_metadata(m, now);
    let infer = |m: &ImageMessage| iot_schema::write::store_inference(m, "dog", "model-1", now);

    assert_eq!(store.upsert_all(&[meta(&first)]).await.expect("write"), [Applied::Stored]);
    // A redelivery, by either consumer: the same content, stored again.
    assert_eq!(
        store.upsert_all(&[meta(&first), infer(&first)]).await.expect("write"),
        [Applied::Stored, Applied::Stored]
    );
    // The same _id with other content: a collision for both consumers, and nothing changes.
    let before = store.collection().find_one(doc! { "_id": "cam-1/7" }).await.expect("read").expect("record");
    let digest = iot_schema::write::content_digest(&first);
    let collision = Applied::Collision { stored: digest.clone() };
    let outcome = store.upsert_all(&[meta(&second), infer(&second)]).await.expect("write");
    assert_eq!(outcome, [collision.clone(), collision]);
    let after = store.collection().find_one(doc! { "_id": "cam-1/7" }).await.expect("read").expect("record");
    assert_eq!(after, before, "a collision wrote nothing");
    assert_eq!(after.get_str("Digest"), Ok(digest.as_str()));
    assert_eq!(after.get_str("GroundTruth"), Ok("cat"));
    // Only the stored writes logged a change.
    let logged = store.change_log().count_documents(doc! { "Record": "cam-1/7" }).await.expect("count");
    assert_eq!(logged, 3);
    // A record written before digests is claimed by the first write from a message.
    let old_id = message(8).doc_id();
    store.collection().insert_one(doc! { "_id": &old_id, "ID": 8_i64, "GroundTruth": "cat" }).await.expect("insert");
    assert_eq!(store.upsert_all(&[meta(&message(8))]).await.expect("write"), [Applied::Stored]);
    let claimed = store.collection().find_one(doc! { "_id": &old_id }).await.expect("read").expect("record");
    assert_eq!(claimed.get_str("Digest"), Ok(iot_schema::write::content_digest(&message(8)).as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collision_inside_a_bulk_write_stores_every_other_record_and_logs_only_the_stored() {
    let db = unique_name("store_bulk_collide");
    let store = shared_store(&db).await;
    let _drop = DropDb(store.clone());
    let now = bson::DateTime::now();
    let meta = |m: &ImageMessage| iot_schema::write::store_metadata(m, now);
    let taken = message(50);
    store.upsert_all(&[meta(&taken)]).await.expect("write");
    let mut other = message(50);
    other.ground_truth = "ship".into();
    // More records than one command holds, with the collision in the middle of the first one.
    let count = iot_ingest::store::STATEMENTS_PER_COMMAND as i64 + 20;
    let batch: Vec<ImageMessage> = (0..count).map(|id| if id == 50 { other.clone() } else { message(id) }).collect();
    let writes: Vec<_> = batch.iter().map(meta).collect();

    let outcome = store.upsert_all(&writes).await.expect("write");

    let collision = Applied::Collision { stored: iot_schema::write::content_digest(&taken) };
    for (id, applied) in outcome.iter().enumerate() {
        let expected = if id == 50 { &collision } else { &Applied::Stored };
        assert_eq!(applied, expected, "record {id}");
    }
    let records = store.collection().count_documents(doc! { "Digest": { "$exists": true } }).await.expect("count");
    assert_eq!(records, count as u64, "every record stored once, the collided one holding the first content");
    let kept = store.collection().find_one(doc! { "_id": taken.doc_id() }).await.expect("read").expect("record");
    assert_eq!(kept.get_str("GroundTruth"), Ok("cat"));
    let logged = store.change_log().count_documents(doc! {}).await.expect("count");
    assert_eq!(logged, count as u64, "one entry per stored write: the first write, and all but the collision");
    let collided = store.change_log().count_documents(doc! { "Record": taken.doc_id() }).await.expect("count");
    assert_eq!(collided, 1, "the collision logged no change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_messages_racing_for_one_new_id_end_in_one_message_s_record() {
    let db = unique_name("store_race");
    let (a, b) = (shared_store(&db).await, shared_store(&db).await);
    let _drop = DropDb(a.clone());
    let now = bson::DateTime::now();
    let firsts: Vec<ImageMessage> = (0..40).map(message).collect();
    let seconds: Vec<ImageMessage> = firsts
        .iter()
        .map(|m| ImageMessage { ground_truth: "ship".into(), sent_at_ms: m.sent_at_ms.map(|t| t + 1), ..m.clone() })
        .collect();
    // The db-consumer writes the first messages while the infer-consumer writes the second ones.
    let meta: Vec<_> = firsts.iter().map(|m| iot_schema::write::store_metadata(m, now)).collect();
    let infer: Vec<_> = seconds.iter().map(|m| iot_schema::write::store_inference(m, "dog", "model-1", now)).collect();
    let (left, right) = tokio::try_join!(a.upsert_all(&meta), b.upsert_all(&infer)).expect("writes");
    let mut docs = Vec::new();
    let mut cursor = a.collection().find(doc! {}).await.expect("find");
    while cursor.advance().await.expect("cursor") {
        docs.push(cursor.deserialize_current().expect("document"));
    }
    assert_eq!(docs.len(), 40);
    for doc in &docs {
        let id = doc.get_i64("ID").expect("ID") as usize;
        // Exactly one of the two writes won, and the record holds only the winner's fields.
        match (&left[id], &right[id]) {
            (Applied::Stored, Applied::Collision { .. }) => {
                assert_eq!(doc.get_str("GroundTruth"), Ok("cat"), "{doc}");
                assert!(doc.get_str("Inferred").is_err(), "{doc}");
            }
            (Applied::Collision { .. }, Applied::Stored) => {
                assert_eq!(doc.get_str("GroundTruth"), Ok("ship"), "{doc}");
                assert!(doc.get_datetime("StoredAt").is_err(), "{doc}");
            }
            other => panic!("{other:?} for {doc}"),
        }
    }
}

/// The consumers' writes filter on `_id` and the content digest; the server must answer them
/// from the `_id` index, not by scanning the collection (FerretDB did, until scripts/setup's
/// id-filter-pushdown patch: writes slowed with every record stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_contracts_filter_is_answered_from_the_id_index() {
    let db = unique_name("store_index");
    let store = shared_store(&db).await;
    store.ensure_indexes().await.expect("indexes");
    let writes: Vec<_> =
        (0..50).map(|id| iot_schema::write::store_metadata(&message(id), bson::DateTime::now())).collect();
    store.upsert_all(&writes).await.expect("upserts");

    let filter = writes[7].record.filter.clone();
    assert!(filter.len() > 1, "the filter is more than the _id: {filter}");
    let name = store.collection().name().to_owned();
    let explained = store.database().run_command(doc! { "explain": { "find": name, "filter": filter } }).await;
    let plan = explained.expect("explain").get_document("queryPlanner").expect("queryPlanner").to_string();
    store.database().drop().await.expect("drop the test database");
    // FerretDB shows SQLite's query plan, mongod its winning plan.
    let by_index = ["USING INDEX", "IDHACK", "IXSCAN", "EXPRESS"].iter().any(|s| plan.contains(s));
    assert!(by_index && !plan.contains("COLLSCAN"), "the write filter scans the collection: {plan}");
}
