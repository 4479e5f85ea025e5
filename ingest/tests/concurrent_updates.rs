//! Concurrent updates of the same documents on the real server (`scripts/stack up`): none may be
//! lost and none may hang. MongoDB applies each update to its document atomically; FerretDB 1.24
//! (SQLite) as released reads the document and writes it back in two unsynchronised steps, so
//! one writer's `$set` can silently overwrite another's, and it hangs when multi-statement
//! updates in flight hold 100 statements. `scripts/setup` builds FerretDB with a fix
//! (docs/follow.md, "FerretDB"); every test here fails without it.

mod common;

use std::time::Duration;

use bson::{doc, DateTime, Document};
use common::{mongo_uri, shared_store, test_message as message};
use iot_bench::testkit::unique_name;
use iot_schema::write::{store_inference, store_metadata};
use iot_schema::{field, ImageMessage};
use mongodb::{Client, Collection};
use tokio::task::JoinSet;

/// Documents every writer of the first test updates.
const DOCUMENTS: i64 = 500;
/// Writers of the first test, each with its own client (as separate processes would be) and its
/// own field.
const WRITERS: usize = 2;
/// Documents all writers update at the same moment: every document is updated by all writers at
/// once, so their reads and writes overlap.
const ROUND: i64 = 16;
/// Records both consumers write in the second test.
const RECORDS: i64 = 1_000;
/// Statements of each multi-statement `update` command in the third test: more than FerretDB's
/// 100 SQLite connections per database, which an unfixed server holds one per statement.
const STATEMENTS: i64 = 150;
/// A deadlock must fail the test rather than hang it.
const DEADLINE: Duration = Duration::from_secs(120);

async fn client() -> Client {
    let uri = mongo_uri();
    let client = Client::with_uri_str(&uri).await.expect("MongoDB client");
    let ping = client.database("admin").run_command(doc! { "ping": 1 }).await;
    assert!(ping.is_ok(), "MongoDB does not answer at {uri} ({:?}): start the stack with scripts/stack up", ping.err());
    client
}

fn writer_field(writer: usize) -> String {
    format!("writer{writer}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sets_of_different_fields_of_the_same_documents_all_survive() {
    let db = unique_name("concurrent_sets");
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        writers.push(client().await.database(&db).collection::<Document>("docs"));
    }
    let docs = writers[0].clone();
    docs.insert_many((0..DOCUMENTS).map(|id| doc! { "_id": id })).await.expect("insert the documents");

    let outcome = tokio::time::timeout(DEADLINE, set_in_rounds(&writers)).await;
    let Ok(written) = outcome else {
        panic!("concurrent updates did not finish within {DEADLINE:?} (a server-side deadlock?)")
    };
    written.expect("updates");
    let (seen, lost) = lost_sets(&docs).await;
    docs.client().database(&db).drop().await.expect("drop the test database");

    assert_eq!(seen, DOCUMENTS, "documents read back");
    assert_none_lost(&lost, DOCUMENTS * WRITERS as i64);
}

/// Every writer sets its field to the document's `_id` on every document, [`ROUND`] documents
/// at a time, all writers on the same documents at once.
async fn set_in_rounds(writers: &[Collection<Document>]) -> mongodb::error::Result<()> {
    for first in (0..DOCUMENTS).step_by(ROUND as usize) {
        let mut running = JoinSet::new();
        for id in first..(first + ROUND).min(DOCUMENTS) {
            for (writer, docs) in writers.iter().enumerate() {
                let docs = docs.clone();
                running.spawn(async move {
                    docs.update_one(doc! { "_id": id }, doc! { "$set": { writer_field(writer): id } }).await
                });
            }
        }
        while let Some(done) = running.join_next().await {
            let result = done.expect("an update task panicked")?;
            assert_eq!(result.matched_count, 1, "every update targets an existing document");
        }
    }
    Ok(())
}

/// How many documents there are, and `id.field` for every writer's field missing or wrong.
async fn lost_sets(docs: &Collection<Document>) -> (i64, Vec<String>) {
    let (mut seen, mut lost) = (0, Vec::new());
    let mut cursor = docs.find(doc! {}).await.expect("find");
    while cursor.advance().await.expect("read the documents back") {
        let doc = cursor.deserialize_current().expect("a document");
        let id = doc.get_i64("_id").expect("an Int64 _id");
        seen += 1;
        for writer in 0..WRITERS {
            let name = writer_field(writer);
            if doc.get_i64(&name) != Ok(id) {
                lost.push(format!("{id}.{name}"));
            }
        }
    }
    (seen, lost)
}

fn assert_none_lost(lost: &[String], updates: i64) {
    let examples = &lost[..lost.len().min(5)];
    assert!(lost.is_empty(), "{} of {updates} acknowledged updates lost, e.g. {examples:?}", lost.len());
}

/// One delivery of every message to both consumers: what they write, with their own values.
struct Delivery {
    at: DateTime,
    label: &'static str,
    model: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_inference_written_at_once_both_survive_a_redelivery() {
    let db = unique_name("concurrent_contract");
    let (db_consumer, infer_consumer) = (shared_store(&db).await, shared_store(&db).await);
    let messages: Vec<ImageMessage> = (0..RECORDS).map(message).collect();
    // The first delivery creates the records; the redelivery (both consumers restarted, a new
    // model) updates existing ones at the same time, which is where a field can be lost.
    let first = Delivery { at: DateTime::from_millis(1_000), label: "dog", model: "model-1" };
    let redelivery = Delivery { at: DateTime::from_millis(2_000), label: "cat", model: "model-2" };
    for delivery in [&first, &redelivery] {
        let metadata: Vec<_> = messages.iter().map(|m| store_metadata(m, delivery.at)).collect();
        let inference: Vec<_> =
            messages.iter().map(|m| store_inference(m, delivery.label, delivery.model, delivery.at)).collect();
        let both = async { tokio::try_join!(db_consumer.upsert_all(&metadata), infer_consumer.upsert_all(&inference)) };
        let Ok(written) = tokio::time::timeout(DEADLINE, both).await else {
            panic!("concurrent upserts did not finish within {DEADLINE:?} (a server-side deadlock?)")
        };
        written.expect("upserts");
    }

    let records = db_consumer.collection();
    let total = records.count_documents(doc! {}).await.expect("count");
    let complete = doc! {
        field::STORED_AT: redelivery.at,
        field::INFERRED: redelivery.label,
        field::MODEL_ID: redelivery.model,
        field::INFERRED_AT: redelivery.at,
    };
    let complete = records.count_documents(complete).await.expect("count");
    db_consumer.database().drop().await.expect("drop the test database");

    assert_eq!(total, RECORDS as u64, "records");
    assert_eq!(total - complete, 0, "records that lost the metadata or the label of the redelivery");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_multi_statement_updates_of_the_same_documents_finish_and_lose_nothing() {
    let db = unique_name("concurrent_commands");
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        writers.push(client().await.database(&db));
    }
    let docs = writers[0].collection::<Document>("docs");
    docs.insert_many((0..STATEMENTS).map(|id| doc! { "_id": id })).await.expect("insert the documents");

    let mut running = JoinSet::new();
    for (writer, database) in writers.iter().enumerate() {
        let updates: Vec<Document> = (0..STATEMENTS)
            .map(|id| doc! { "q": { "_id": id }, "u": { "$set": { writer_field(writer): id } } })
            .collect();
        let (database, command) = (database.clone(), doc! { "update": "docs", "updates": updates });
        running.spawn(async move { database.run_command(command).await });
    }
    let all = async {
        let mut replies = Vec::new();
        while let Some(done) = running.join_next().await {
            replies.push(done.expect("an update task panicked"));
        }
        replies
    };
    let Ok(replies) = tokio::time::timeout(DEADLINE, all).await else {
        panic!("concurrent multi-statement updates did not finish within {DEADLINE:?} (a server-side deadlock?)")
    };
    for reply in replies {
        let reply = reply.expect("update command");
        assert_eq!(reply.get_i32("n"), Ok(STATEMENTS as i32), "documents matched: {reply}");
        assert!(!reply.contains_key("writeErrors"), "{reply}");
    }
    let (seen, lost) = lost_sets(&docs).await;
    docs.client().database(&db).drop().await.expect("drop the test database");

    assert_eq!(seen, STATEMENTS, "documents read back");
    assert_none_lost(&lost, STATEMENTS * WRITERS as i64);
}

/// The patched server runs a whole `update` command in one SQLite transaction
/// (`update-batch-txn`), so it must hold the collection's lock until the commit: released after
/// each statement, another client's single update reads the old version of a document the
/// command changed and either writes it back over the change or waits for the write lock that
/// the command holds while the command waits for the collection's lock (hung until SQLite's busy
/// timeout, then failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_statement_update_and_single_updates_of_the_same_documents_lose_nothing() {
    let db = unique_name("concurrent_mixed");
    let (bulk, single) = (client().await.database(&db), client().await.database(&db));
    let docs = bulk.collection::<Document>("docs");
    docs.insert_many((0..STATEMENTS).map(|id| doc! { "_id": id })).await.expect("insert the documents");

    let updates: Vec<Document> =
        (0..STATEMENTS).map(|id| doc! { "q": { "_id": id }, "u": { "$set": { writer_field(0): id } } }).collect();
    let command = bulk.run_command(doc! { "update": "docs", "updates": updates });
    let singles = set_one_at_a_time(single.collection::<Document>("docs"), 1);
    let Ok((reply, singles)) = tokio::time::timeout(DEADLINE, async { tokio::join!(command, singles) }).await else {
        panic!("the updates did not finish within {DEADLINE:?} (a server-side deadlock?)")
    };
    let reply = reply.expect("update command");
    singles.expect("single updates");
    let (seen, lost) = lost_sets(&docs).await;
    bulk.drop().await.expect("drop the test database");

    assert_eq!(reply.get_i32("n"), Ok(STATEMENTS as i32), "documents matched: {reply}");
    assert_eq!(seen, STATEMENTS, "documents read back");
    assert_none_lost(&lost, STATEMENTS * WRITERS as i64);
}

/// Sets `writer`'s field on every document, one `update_one` at a time, in the order of `_id`.
async fn set_one_at_a_time(docs: Collection<Document>, writer: usize) -> mongodb::error::Result<()> {
    for id in 0..STATEMENTS {
        let result = docs.update_one(doc! { "_id": id }, doc! { "$set": { writer_field(writer): id } }).await?;
        assert_eq!(result.matched_count, 1, "every update targets an existing document");
    }
    Ok(())
}
